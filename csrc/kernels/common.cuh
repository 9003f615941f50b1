// The portable layer every kernel includes: one source serves nvcc (GPU code) and g++ under the
// SIMT emulator (csrc/simt/, injected by the test build, which defines SIMT_CPU).
//   LAUNCH(kernel, grid, block[, smem[, stream]])(args...)   instead of kernel<<<...>>>(args...);
//                         a templated kernel is parenthesised: LAUNCH((k<T, 256>), grid, block)(...)
//   DYNAMIC_SHARED(T, name)  declares `T* name` pointing at the block's dynamic shared memory
//   STATIC_SHARED(T, name)   declares the block's static shared `T name` (T may be an array type: float[64]);
//                            the emulator gives it a per-block area with guards (plain __shared__ has none)
//   load_vector<V>(p) / store_vector(p, v)  16-byte (or 8-byte) accesses, which must be aligned to their size
//   cp_async_16(smem, gmem[, src_valid]) / cp_async_commit() / cp_async_wait<N>()  asynchronous copies (sm_80)
//   mma_m16n8k16_bf16 / _f16  D = A*B + C, A 16x16 row-major, B 16x8 col-major, fp32 accumulate
//   ldmatrix_x4 / ldmatrix_x4_trans  four 8x8 b16 matrices from shared memory
// Fragment layouts are those of the PTX ISA (summarised in csrc/simt/mma.h).
// Then what every family's launcher shares: the Dtype switch, fp32 conversions, sizes, a launch with a
// large dynamic shared memory. Warp-level tiles (mma GEMM, fragment loads, tile copies) are in kernels/tile.cuh.
// The emulator is reached only through its public SIMT_* macros (csrc/simt/simt.h).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace fastar::kernels {
template <class T>
using Id = T;  // lets STATIC_SHARED declare arrays: Id<float[64]> s;
}  // namespace fastar::kernels

#ifdef SIMT_CPU

#define LAUNCH(kernel, ...) SIMT_LAUNCH(kernel, __VA_ARGS__)
#define DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(SIMT_DYNAMIC_SMEM())
#define STATIC_SHARED(T, name) auto& name = SIMT_STATIC_SMEM(::fastar::kernels::Id<T>, name)
#define FASTAR_SITE_PARAMS , SIMT_SITE_PARAMS

#else

#include <cuda_runtime.h>
#define LAUNCH(kernel, ...) kernel<<<__VA_ARGS__>>>
// A byte array, so templated kernels with different T do not redeclare it incompatibly.
#define DYNAMIC_SHARED(T, name)                                         \
  extern __shared__ __align__(16) unsigned char fastar_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(fastar_dynamic_smem_)
#define STATIC_SHARED(T, name) __shared__ ::fastar::kernels::Id<T> name
#define FASTAR_SITE_PARAMS

#endif

// The emulator needs every lane's operands (a warp collective); under nvcc these are single
// instructions, present from sm_80 on.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FASTAR_MMA_PTX(type)                                                                              \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." type "." type ".f32 "                            \
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};"                                \
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                           \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), \
                 "f"(c[2]), "f"(c[3]))
#define FASTAR_LDMATRIX_PTX(suffix, trans)                                             \
  asm volatile("ldmatrix.sync.aligned.m8n8.x4" suffix ".shared.b16 {%0,%1,%2,%3}, [%4];" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                      \
               : "r"(static_cast<unsigned>(__cvta_generic_to_shared(row))))
#elif defined(SIMT_CPU)
#define FASTAR_MMA_PTX(type) SIMT_MMA_M16N8K16(type, d, a, b, c)
#define FASTAR_LDMATRIX_PTX(suffix, trans) SIMT_LDMATRIX_X4(r, row, trans)
#elif defined(__CUDA_ARCH__)
#define FASTAR_MMA_PTX(type) __trap()
#define FASTAR_LDMATRIX_PTX(suffix, trans) __trap()
#else  // nvcc's host pass never runs device code
#define FASTAR_MMA_PTX(type)
#define FASTAR_LDMATRIX_PTX(suffix, trans)
#endif

#ifdef SIMT_CPU
#define FASTAR_BF16 __nv_bfloat16
#define FASTAR_F16 __half
#else
#define FASTAR_BF16 "bf16"
#define FASTAR_F16 "f16"
#endif

// a: 4 registers of packed A pairs, b: 2 of B, c/d: 4 fp32 accumulators (d may alias c).
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4] FASTAR_SITE_PARAMS) {
  FASTAR_MMA_PTX(FASTAR_BF16);
}
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4] FASTAR_SITE_PARAMS) {
  FASTAR_MMA_PTX(FASTAR_F16);
}
// row: this lane's row address (lanes 8j..8j+7 address the 8 rows of matrix j), 16-byte aligned.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row FASTAR_SITE_PARAMS) {
  FASTAR_LDMATRIX_PTX("", false);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row FASTAR_SITE_PARAMS) {
  FASTAR_LDMATRIX_PTX(".trans", true);
}

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fastar::kernels {

// A vector access (uint4: 16 bytes) at p, which must be aligned to the vector's size: a GPU faults otherwise, the
// emulator reports the call site.
template <class V>
__device__ __forceinline__ V load_vector(const void* p FASTAR_SITE_PARAMS) {
#ifdef SIMT_CPU
  SIMT_CHECK_ALIGNED(p, sizeof(V));
#endif
  return *static_cast<const V*>(p);
}
template <class V>
__device__ __forceinline__ void store_vector(void* p, const V& v FASTAR_SITE_PARAMS) {
#ifdef SIMT_CPU
  SIMT_CHECK_ALIGNED(p, sizeof(V));
#endif
  *static_cast<V*>(p) = v;
}

// cp.async (sm_80 on): 16 bytes from global gmem to shared smem, both 16-byte aligned, or 16 zeros when !src_valid
// (gmem, still a valid address, is not read). The copy lands when this thread's cp_async_wait<N> lets its commit
// group complete, and other threads may read it only after a __syncthreads that follows that wait; the source
// must not change before. The emulator fills the destination with the schedule's byte at issue (ASan: poisons
// it), so a read too early shows up.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool src_valid = true FASTAR_SITE_PARAMS) {
#ifdef SIMT_CPU
  SIMT_CP_ASYNC(smem, gmem, 16, src_valid ? 16 : 0);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(smem))),
               "l"(gmem), "r"(src_valid ? 16 : 0)
               : "memory");
#elif defined(__CUDA_ARCH__)
  *static_cast<uint4*>(smem) = src_valid ? *static_cast<const uint4*>(gmem) : make_uint4(0, 0, 0, 0);
#endif
}
// Closes this thread's group of the cp.async issued since its previous commit (possibly none).
__device__ __forceinline__ void cp_async_commit() {
#ifdef SIMT_CPU
  SIMT_CP_ASYNC_COMMIT();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most the newest N of this thread's committed groups are in flight: the older ones have landed.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef SIMT_CPU
  SIMT_CP_ASYNC_WAIT(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

template <class T>
struct DtypeOf;
template <>
struct DtypeOf<float> { static constexpr Dtype value = Dtype::f32; };
template <>
struct DtypeOf<__nv_bfloat16> { static constexpr Dtype value = Dtype::bf16; };
template <>
struct DtypeOf<__half> { static constexpr Dtype value = Dtype::f16; };
template <>
struct DtypeOf<double> { static constexpr Dtype value = Dtype::f64; };

// f(T{}) for the C++ type T among Types that `dtype` names, returning f's error: the one dtype switch of every
// launcher. A dtype outside Types is cudaErrorInvalidValue.
template <class... Types, class F>
cudaError_t dispatch_dtype(Dtype dtype, F&& f) {
  cudaError_t e = cudaErrorInvalidValue;
  (void)((dtype == DtypeOf<Types>::value ? (e = f(Types{}), true) : false) || ...);
  return e;
}

// Element values in fp32, the math type of every kernel, and back.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

// cudaDevAttrMaxSharedMemoryPerBlockOptin of sm_86 / sm_89 / sm_120, the smallest of the GPUs fastar supports (and
// the emulator's default): dynamic shared memory within it fits every one.
constexpr size_t kSmallestOptinSmem = 101376;

inline size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }
__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }

// Launches `kernel` with `smem` bytes of dynamic shared memory, raising the 48 KB default limit when needed.
template <class Kernel, class... Args>
cudaError_t launch_with_smem(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                             const Args&... args) {
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  LAUNCH(kernel, grid, block, smem, stream)(args...);
  return cudaGetLastError();
}

}  // namespace fastar::kernels
