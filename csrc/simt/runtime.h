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
  // 256-byte alignment like cudaMalloc, so vectorised-access alignment checks behave the same
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
  return *p || !n ? cudaSuccess : simt::detail::report(cudaErrorMemoryAllocation, "cudaMalloc: out of memory");
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
inline cudaError_t cudaFuncSetAttribute(const void*, enum cudaFuncAttribute, int) { return cudaSuccess; }

}  // extern "C"

// The typed overloads cuda_runtime.h adds for C++ callers.
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
template <class T>
inline cudaError_t cudaFuncSetAttribute(T*, enum cudaFuncAttribute, int) { return cudaSuccess; }
