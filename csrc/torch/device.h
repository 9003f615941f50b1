// What the *_device.cpp glue needs to serve two builds from one source:
//   CUDA (fastar._C, FASTAR_WITH_CUDA): TORCH_LIBRARY_IMPL(fastar, CUDA), launches on torch's current stream;
//   simt (fastar._simt, FASTAR_SIMT_BUILD): TORCH_LIBRARY_IMPL(fastar_simt, CPU), the same kernels on CPU tensors
//   under the emulator, whose launch errors carry its report (barrier divergence, deadlock, file:line).
#pragma once
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include "kernels/dtype.h"

#ifdef FASTAR_SIMT_BUILD
#include "simt/config.h"
#define FASTAR_DEVICE_LIBRARY fastar_simt
#define FASTAR_DEVICE_KEY CPU
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define FASTAR_DEVICE_LIBRARY fastar
#define FASTAR_DEVICE_KEY CUDA
#endif

namespace fastar {

// The device tensors of this build live on; check functions compare against it.
constexpr c10::DeviceType kDeviceType = c10::DeviceType::FASTAR_DEVICE_KEY;

// Makes `t`'s device current for the scope and gives the stream to launch on.
class DeviceScope {
 public:
#ifdef FASTAR_SIMT_BUILD
  explicit DeviceScope(const at::Tensor&) {}
  cudaStream_t stream() const { return nullptr; }  // emulated launches are synchronous
#else
  explicit DeviceScope(const at::Tensor& t) : guard_(t.device()) {}
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream(); }

 private:
  c10::cuda::CUDAGuard guard_;
#endif
};

#ifndef FASTAR_SIMT_BUILD
// cudaDeviceGetAttribute for t's device; `name` serves the error message.
inline int device_attribute(const at::Tensor& t, cudaDeviceAttr attr, const char* name) {
  int n = 0;
  const cudaError_t e = cudaDeviceGetAttribute(&n, attr, t.get_device());
  TORCH_CHECK(e == cudaSuccess, "cudaDeviceGetAttribute(", name, ") failed: ", cudaGetErrorString(e));
  return n;
}
#endif

// Multiprocessors of t's device; under simt an H100's 132, so the emulated kernels take a real GPU's plans.
inline int sm_count([[maybe_unused]] const at::Tensor& t) {
#ifdef FASTAR_SIMT_BUILD
  return 132;
#else
  return device_attribute(t, cudaDevAttrMultiProcessorCount, "cudaDevAttrMultiProcessorCount");
#endif
}

// Dynamic shared memory a block may opt in to on t's device; under simt the emulator's limit (SIMT_MAX_SMEM,
// by default that of sm_86 / sm_89 / sm_120, the smallest fastar supports).
inline int max_smem_per_block([[maybe_unused]] const at::Tensor& t) {
#ifdef FASTAR_SIMT_BUILD
  return simt::config().max_dynamic_smem;
#else
  return device_attribute(t, cudaDevAttrMaxSharedMemoryPerBlockOptin, "cudaDevAttrMaxSharedMemoryPerBlockOptin");
#endif
}

// The kernels' name of a tensor dtype (each op's checks have already narrowed it to those its kernels take).
inline kernels::Dtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return kernels::Dtype::bf16;
    case at::kHalf: return kernels::Dtype::f16;
    case at::kDouble: return kernels::Dtype::f64;
    default: return kernels::Dtype::f32;
  }
}

// For kernels whose result depends on the order blocks run in (fp32 atomics added across blocks): on the CUDA build,
// an error (or with warn_only a warning) under torch.use_deterministic_algorithms(True), naming `what`; the simt
// build runs blocks in one order per schedule, reproducibly.
inline void alert_not_deterministic([[maybe_unused]] const char* what) {
#ifndef FASTAR_SIMT_BUILD
  at::globalContext().alertNotDeterministic(what);
#endif
}

// Raises (RuntimeError in Python) when a kernel launch failed, with the emulator's report under simt.
inline void check_launch(cudaError_t e, const char* op) {
#ifdef FASTAR_SIMT_BUILD
  TORCH_CHECK(e == cudaSuccess, op, ": kernel launch failed under the SIMT emulator: ", simt::last_error_message());
#else
  TORCH_CHECK(e == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(e));
#endif
}

}  // namespace fastar
