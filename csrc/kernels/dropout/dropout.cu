// dropout: one thread per Philox counter (four elements), the mask made in registers, never stored; the backward is
// the same kernel on the gradient with the same seed (the op is linear in x).
#include "kernels/common.cuh"
#include "kernels/dropout/dropout.h"
#include "kernels/dropout/philox.h"

namespace fastar::kernels {
namespace {

constexpr int kThreads = 256;

// A dropped element is multiplied by 0, not replaced by it: NaN and inf stay NaN, as torch's x * mask.
template <class T>
__device__ __forceinline__ T kept(T v, bool keep, double scale) {
  return from_float<T>(to_float(v) * (keep ? float(scale) : 0.f));
}
template <>
__device__ __forceinline__ double kept<double>(double v, bool keep, double scale) {
  return v * (keep ? scale : 0.0);
}

template <class T>
__global__ void __launch_bounds__(kThreads) dropout_kernel(const DropoutParams p) {
  const int64_t c = int64_t(blockIdx.x) * kThreads + threadIdx.x, e0 = 4 * c;
  if (e0 >= p.n) return;
  uint32_t w[4];
  philox4x32(uint64_t(c), p.seed, w);
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  for (int j = 0; j < 4 && e0 + j < p.n; ++j) out[e0 + j] = kept(x[e0 + j], (w[j] >> 8) >= p.threshold, p.scale);
}

}  // namespace

cudaError_t dropout_launch(const DropoutParams& p, cudaStream_t stream) {
  if (p.n < 0) return cudaErrorInvalidValue;
  const int64_t blocks = (p.n + 4 * int64_t(kThreads) - 1) / (4 * int64_t(kThreads));
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype<float, __nv_bfloat16, __half, double>(p.dtype, [&](auto elem) {
    if (blocks == 0) return cudaSuccess;
    LAUNCH(dropout_kernel<decltype(elem)>, dim3(unsigned(blocks)), kThreads, 0, stream)(p);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
