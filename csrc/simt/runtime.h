// The CUDA runtime API on host memory. The real cuda_runtime_api.h declares these functions
// (vector_functions.h pulls it in anyway, so own enums would collide); we only give them inline
// bodies with identical signatures. "Device" pointers are host pointers; launches are
// synchronous, so streams and synchronisation are no-ops.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>

#include "launch.h"

extern "C" {

inline cudaError_t cudaGetLastError(void) { return cudaError_t(simt::detail::last_error().exchange(cudaSuccess)); }
inline cudaError_t cudaPeekAtLastError(void) { return cudaError_t(simt::detail::last_error().load()); }

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
  }
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (see simt::last_error_message())";
    default: return "unknown error";
  }
}

inline cudaError_t cudaMalloc(void** p, size_t n) {
  // 256-byte alignment like cudaMalloc, so vectorised-access alignment checks behave the same; exactly n bytes,
  // not cudaMalloc's multiple of 256, so ASan reports a write past the end that the rounding would absorb.
  if (posix_memalign(p, 256, n ? n : 1)) *p = nullptr;
  return *p ? cudaSuccess : simt::detail::report(cudaErrorMemoryAllocation, "cudaMalloc: out of memory");
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, enum cudaMemcpyKind) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, enum cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, n, kind);
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }
inline cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// The dynamic shared memory limit is enforced as on a device whose opt-in maximum is Config::max_dynamic_smem.
inline cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  const int limit = simt::config().max_dynamic_smem;
  if (value < 0 || value > limit)
    return simt::detail::report(cudaErrorInvalidValue, "cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize, " +
                                                           std::to_string(value) + "): above the device's opt-in limit of " +
                                                           std::to_string(limit) + " (SIMT_MAX_SMEM)");
  std::lock_guard<std::mutex> lock(simt::detail::state_mutex());
  simt::detail::smem_attributes()[func] = value;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
// An H100's multiprocessors (so kernels take a real GPU's plans) and the configured shared memory limits.
inline cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 132; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = simt::config().max_dynamic_smem; return cudaSuccess;
    case cudaDevAttrMaxGridDimY: *value = 65535; return cudaSuccess;
    default: return simt::detail::report(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute not emulated");
  }
}

}  // extern "C"

// The typed overloads cuda_runtime.h adds for C++ callers.
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* func, enum cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(func), attr, value);
}
