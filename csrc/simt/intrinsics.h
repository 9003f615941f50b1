// Device built-ins that have no CUDA host version: atomics, fast-math and bit intrinsics,
// generic min/max, and float-based fallbacks for fp16/bf16 math CUDA declares device-only.
// Fast-math intrinsics are exact libm calls here, approximations on the GPU: compare with a
// tolerance.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace simt::detail {

template <class To, class From>
inline To bits(From f) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between different sizes");
  To t;
  std::memcpy(&t, &f, sizeof t);
  return t;
}

// Read-modify-write by CAS on the bit pattern, for the operations GCC has no builtin for.
template <class T, class F>
inline T atomic_update(T* p, F f) {
  T old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(p, &old, f(old), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

template <class T>
using if_atomic_int = std::enable_if_t<std::is_same<T, int>::value || std::is_same<T, unsigned>::value ||
                                           std::is_same<T, unsigned long long>::value ||
                                           std::is_same<T, long long>::value,
                                       T>;

}  // namespace simt::detail

// Relaxed, like CUDA atomics; correct when blocks run on several OS threads.
template <class T>
inline simt::detail::if_atomic_int<T> atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
template <class T>
inline simt::detail::if_atomic_int<T> atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <class T>
inline simt::detail::if_atomic_int<T> atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <class T>
inline simt::detail::if_atomic_int<T> atomicMin(T* p, T v) {
  return simt::detail::atomic_update(p, [v](T o) { return v < o ? v : o; });
}
template <class T>
inline simt::detail::if_atomic_int<T> atomicMax(T* p, T v) {
  return simt::detail::atomic_update(p, [v](T o) { return v > o ? v : o; });
}
template <class T>
inline simt::detail::if_atomic_int<T> atomicCAS(T* p, T expected, T desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}
inline float atomicAdd(float* p, float v) {
  using simt::detail::bits;
  auto* u = reinterpret_cast<unsigned*>(p);
  return bits<float>(simt::detail::atomic_update(u, [v](unsigned o) { return bits<unsigned>(bits<float>(o) + v); }));
}
inline double atomicAdd(double* p, double v) {
  using simt::detail::bits;
  auto* u = reinterpret_cast<unsigned long long*>(p);
  return bits<double>(simt::detail::atomic_update(
      u, [v](unsigned long long o) { return bits<unsigned long long>(bits<double>(o) + v); }));
}
inline float atomicExch(float* p, float v) {
  using simt::detail::bits;
  return bits<float>(__atomic_exchange_n(reinterpret_cast<unsigned*>(p), bits<unsigned>(v), __ATOMIC_RELAXED));
}

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T>
inline T __ldg(const T* p) { return *p; }

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float_as_int(float x) { return simt::detail::bits<int>(x); }
inline unsigned __float_as_uint(float x) { return simt::detail::bits<unsigned>(x); }
inline float __int_as_float(int x) { return simt::detail::bits<float>(x); }
inline float __uint_as_float(unsigned x) { return simt::detail::bits<float>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}

// Device code calls global min/max. Non-template overloads win over std::min under
// `using namespace std`; the template covers mixed argument types like CUDA's overloads.
#define SIMT_MINMAX(T)                               \
  inline T min(T a, T b) { return b < a ? b : a; }   \
  inline T max(T a, T b) { return a < b ? b : a; }
SIMT_MINMAX(int)
SIMT_MINMAX(unsigned)
SIMT_MINMAX(long long)
SIMT_MINMAX(unsigned long long)
SIMT_MINMAX(float)
SIMT_MINMAX(double)
#undef SIMT_MINMAX
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// fp16 / bf16 math that cuda_fp16.h / cuda_bf16.h declare device-only: computed in float,
// rounded once (the GPU may differ by an ulp).
#define SIMT_HALF_UNARY(name, expr)                                              \
  template <class H, class = std::enable_if_t<std::is_same<H, __half>::value ||  \
                                              std::is_same<H, __nv_bfloat16>::value>> \
  inline H name(H h) {                                                           \
    float x = static_cast<float>(h);                                             \
    return H(expr);                                                              \
  }
SIMT_HALF_UNARY(hexp, std::exp(x))
SIMT_HALF_UNARY(hlog, std::log(x))
SIMT_HALF_UNARY(hsqrt, std::sqrt(x))
SIMT_HALF_UNARY(hrsqrt, 1.0f / std::sqrt(x))
SIMT_HALF_UNARY(hrcp, 1.0f / x)
#undef SIMT_HALF_UNARY
template <class H, class = std::enable_if_t<std::is_same<H, __half>::value || std::is_same<H, __nv_bfloat16>::value>>
inline H __hfma(H a, H b, H c) {
  return H(std::fma(static_cast<float>(a), static_cast<float>(b), static_cast<float>(c)));
}
