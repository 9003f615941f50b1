// SIMT emulator: runs CUDA kernels on the CPU for tests (see README.md beside this file).
// Injected by the test build, never included by a kernel:
//   g++ -std=c++17 -O2 -I/usr/local/cuda/include -I<repo>/csrc -include <repo>/csrc/simt/simt.h
//       -x c++ kernel.cu -x none -pthread
// Kernels include kernels/common.cuh for LAUNCH, DYNAMIC_SHARED and the tensor-core wrappers.
#pragma once
#define SIMT_CPU 1

// The real CUDA headers give the host types (dim3, float4, __half, __nv_bfloat16, cudaError_t);
// for a non-nvcc compiler they define __global__, __device__, __host__, __shared__ as nothing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <driver_types.h>
#include <vector_functions.h>
#include <vector_types.h>

#include "simt/async_copy.h"
#include "simt/intrinsics.h"
#include "simt/launch.h"
#include "simt/mma.h"
#include "simt/runtime.h"
#include "simt/warp.h"

// Plain `__shared__`: one array per OS thread = per running block (fibers of a block share the OS thread), kept
// across blocks, unguarded. Kernels declare static shared memory with STATIC_SHARED (kernels/common.cuh): a
// per-block area, refilled and guarded like the dynamic one.
#undef __shared__
#define __shared__ static thread_local
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

namespace simt::detail {
inline const uint3& thread_idx() { return tl_worker->current->tid; }
inline const uint3& block_idx() { return tl_worker->block_idx; }
inline const dim3& block_dim() { return tl_worker->launch->block; }
inline const dim3& grid_dim() { return tl_worker->launch->grid; }
// 128-byte aligned, refilled for every block with a byte that depends on the schedule (reads before writes show up
// as a difference between schedules), followed by a guard.
inline void* dynamic_smem() { return tl_worker->smem; }
inline void* static_smem(size_t bytes, size_t align, const char* name, Site site) {
  return tl_worker->static_shared(bytes, align, name, site);
}
}  // namespace simt::detail

// The public interface kernels/common.cuh builds its portable macros on (no kernel names ::simt:: itself):
// a launch, the block's dynamic shared memory, cp.async, and the tensor-core instructions as warp collectives that
// report the caller's file:line (a function declared with SIMT_SITE_PARAMS passes its own on).
#define SIMT_LAUNCH(kernel, ...) ::simt::launcher(kernel, #kernel, __FILE__, __LINE__, __VA_ARGS__)
#define SIMT_DYNAMIC_SMEM() (::simt::detail::dynamic_smem())
#define SIMT_STATIC_SMEM(T, name) \
  (*static_cast<T*>(::simt::detail::static_smem(sizeof(T), alignof(T), #name, {__FILE__, __LINE__})))
#define SIMT_CHECK_ALIGNED(p, bytes) ::simt::detail::check_aligned(p, bytes, SIMT_SITE)
#define SIMT_MMA_M16N8K16(T, d, a, b, c) ::simt::detail::mma_m16n8k16<T>(d, a, b, c, SIMT_SITE)
#define SIMT_LDMATRIX_X4(r, row, trans) ::simt::detail::ldmatrix_x4(r, row, trans, SIMT_SITE)
#define SIMT_CP_ASYNC(dst, src, bytes, src_bytes) ::simt::detail::cp_async(dst, src, bytes, src_bytes, SIMT_SITE)
#define SIMT_CP_ASYNC_COMMIT() ::simt::detail::cp_async_commit()
#define SIMT_CP_ASYNC_WAIT(n) ::simt::detail::cp_async_wait(n)

#define threadIdx (::simt::detail::thread_idx())
#define blockIdx (::simt::detail::block_idx())
#define blockDim (::simt::detail::block_dim())
#define gridDim (::simt::detail::grid_dim())
constexpr int warpSize = 32;  // not a macro, so `prop.warpSize` still compiles
