// Vector math shared by the per-ISA sources (*_isa.cpp): loads, reductions and exp on the registers of
// cpu/isa_vec.h. float uses a Cephes-style polynomial exp (relative error ~2 ulp) on whole vectors; double, used
// only for float64 inputs, calls the exact libm exp lane by lane.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/half_bits.h"
#include "cpu/isa_vec.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace fastar::cpu::FASTAR_ISA {

template <class T>
inline vec<T> load(const T* p) { return *reinterpret_cast<const vec<T>*>(p); }
template <class T>
inline void store(T* p, vec<T> v) { *reinterpret_cast<vec<T>*>(p) = v; }

// *p = v past the caches (a streaming store; p kVectorBytes-aligned), where x86 has them: no read of the destination
// line first, as a plain store to a line not in cache makes.
template <class T>
inline void stream(T* p, vec<T> v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) _mm512_stream_ps(p, (__m512)v);
  else _mm512_stream_pd(p, (__m512d)v);
#elif defined(__AVX__)
  if constexpr (sizeof(T) == 4) _mm256_stream_ps(p, (__m256)v);
  else _mm256_stream_pd(p, (__m256d)v);
#elif defined(__SSE2__)
  if constexpr (sizeof(T) == 4) _mm_stream_ps(p, (__m128)v);
  else _mm_stream_pd(p, (__m128d)v);
#else
  store(p, v);
#endif
}

// Orders the streaming stores before whatever the thread does next (the join that publishes the output).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// kLanes<float> values of float32 storage, or of bfloat16 / float16 (cpu/half_bits.h), widened to float32 exactly;
// float64 as it is. load_widened and widened name one read of every storage a kernel templated on it takes.
inline vec<float> load_widened(const float* p) { return load(p); }
inline vec<double> load_widened(const double* p) { return load(p); }
inline float widened(float v) { return v; }
inline double widened(double v) { return v; }

typedef uint16_t half_lanes __attribute__((vector_size(kVectorBytes / 2), aligned(2)));
typedef uint32_t word_lanes __attribute__((vector_size(kVectorBytes)));

// bfloat16: the bits shifted into the high half. (GCC builds the generic widening of 16 lanes from two 8-lane
// halves, which made the span decode's loads twice the cost of float32's: the intrinsics take one instruction.)
inline vec<float> load_widened(const Bf16* p) {
#if defined(__AVX512F__)
  return (vec<float>)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
#elif defined(__AVX2__)
  return (vec<float>)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
#else
  const word_lanes w = __builtin_convertvector(*reinterpret_cast<const half_lanes*>(p), word_lanes) << 16;
  return reinterpret_cast<const vec<float>&>(w);
#endif
}
inline float widened(Bf16 v) {
  const uint32_t w = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

// float16: the conversion instruction (AVX-512F; F16C, which the avx2 build requires); SSE2 by integer operations:
// exponent and mantissa moved into float32's places and rebiased (+112 exponents; infinity and NaN +112 more, the
// payload kept); a subnormal (exponent 0) as 2^-14 (1 + m / 1024) - 2^-14 = m 2^-24, which a flush-to-zero mode
// leaves exact (no subnormal operand).
inline word_lanes f16_to_f32_bits(word_lanes h) {
  const word_lanes sign = (h & 0x8000u) << 16, magnitude = (h & 0x7fffu) << 13, exponent = magnitude & 0x0f800000u;
  word_lanes w = magnitude + 0x38000000u;  // (127 - 15) << 23
  w = exponent == 0x0f800000u ? w + 0x38000000u : w;
  const word_lanes up = w + 0x00800000u;  // a subnormal's mantissa under exponent -14, then 2^-14 taken off
  const vec<float> normalized = reinterpret_cast<const vec<float>&>(up) - 0x1p-14f;
  w = exponent == 0u ? reinterpret_cast<const word_lanes&>(normalized) : w;
  return w | sign;
}
inline vec<float> load_widened(const F16* p) {
#if defined(__AVX512F__)
  return (vec<float>)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
#elif defined(__F16C__)
  return (vec<float>)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#else
  const word_lanes w = f16_to_f32_bits(__builtin_convertvector(*reinterpret_cast<const half_lanes*>(p), word_lanes));
  return reinterpret_cast<const vec<float>&>(w);
#endif
}
inline float widened(F16 v) {
  word_lanes h{};
  h[0] = v.bits;
  const word_lanes w = f16_to_f32_bits(h);
  return reinterpret_cast<const vec<float>&>(w)[0];
}

// v - 0, not v + 0: the subtraction is exact for every v (-0 included), so it folds away and leaves one broadcast
// (from memory when v comes from memory); v + 0 turns -0 into +0 and stays a scalar add before the broadcast.
template <class T>
inline vec<T> splat(T v) { return v - vec<T>{}; }
template <class T>
inline vec<T> vmax(vec<T> a, vec<T> b) { return a > b ? a : b; }

// Whether any lane of a comparison's result (all ones or zero per lane) is set: one movemask on SSE and AVX
// (a set lane of any width sets the sign of its 32-bit words), else lane by lane.
template <class M>
inline bool any(M mask) {
#if defined(__AVX__)
  if constexpr (sizeof(M) == 32) {
    typedef float v8sf __attribute__((vector_size(32)));
    return __builtin_ia32_movmskps256(reinterpret_cast<v8sf&>(mask)) != 0;
  }
#endif
#if defined(__SSE__)
  if constexpr (sizeof(M) == 16) {
    typedef float v4sf __attribute__((vector_size(16)));
    return __builtin_ia32_movmskps(reinterpret_cast<v4sf&>(mask)) != 0;
  }
#endif
  for (int i = 0; i < int(sizeof(M) / sizeof(mask[0])); ++i)
    if (mask[i]) return true;
  return false;
}
template <class T>
inline T hmax(vec<T> v) {
  T r = v[0];
  for (int i = 1; i < kLanes<T>; ++i) r = v[i] > r ? v[i] : r;
  return r;
}
template <class T>
inline T hsum(vec<T> v) {
  T r = 0;
  for (int i = 0; i < kLanes<T>; ++i) r += v[i];
  return r;
}

// exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln 2 / 2, exp(r) by a degree-6 polynomial (Cephes expf;
// relative error ~1.5 ulp); x below -87.3 (and -inf) gives 0, as the masked scores must. n comes from adding
// 1.5 2^23, whose sum keeps n in its low mantissa bits: 2^n is that sum's bits shifted, with no conversions.
inline vec<float> exp_vec(vec<float> x) {
  typedef int32_t vi __attribute__((vector_size(kVectorBytes)));
  const vec<float> t = x * 1.44269504f + 12582912.f;  // 12582912 = 1.5 2^23
  const vec<float> n = t - 12582912.f;
  const vec<float> r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vec<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  vi bits;
  std::memcpy(&bits, &t, sizeof(t));
  bits = (bits - (0x4B400000 - 127)) << 23;  // 0x4B400000: the bits of 1.5 2^23; 127: the exponent bias
  vec<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const vec<float> e = p * scale;
  std::memcpy(&bits, &e, sizeof(e));
  bits &= ~(x < -87.3f);  // 0 below (and at -inf, where n and r are not finite); NaN stays NaN
  vec<float> out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
// 2^y for y <= 0 (softmax in base 2: the scores pre-multiplied by log2 e), cheaper than exp_vec by the range
// reduction: n = round(y) by the same 1.5 2^23 sum, f = y - n in [-1/2, 1/2] exactly, 2^f by a degree-6 polynomial
// (a near-minimax fit, relative error ~1.3 ulp), 2^n added to its exponent bits; y below -126 (and -inf) gives 0,
// NaN gives NaN (a NaN score must reach the output, never read as a masked one).
inline vec<float> exp2_vec(vec<float> y) {
  typedef int32_t vi __attribute__((vector_size(kVectorBytes)));
  const vec<float> t = y + 12582912.f;  // 12582912 = 1.5 2^23
  const vec<float> f = y - (t - 12582912.f);
  vec<float> p = splat(1.5345810971e-04f);
  p = p * f + 1.3399930904e-03f;
  p = p * f + 9.6184890717e-03f;
  p = p * f + 5.5503286421e-02f;
  p = p * f + 2.4022646248e-01f;
  p = p * f + 6.9314718246e-01f;
  p = p * f + 1.f;
  vi n, bits;
  std::memcpy(&n, &t, sizeof(t));
  std::memcpy(&bits, &p, sizeof(p));
  bits += (n - 0x4B400000) << 23;  // 0x4B400000: the bits of 1.5 2^23
  bits &= ~(y < -126.f);  // NaN stays NaN
  vec<float> out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline vec<double> exp2_vec(vec<double> y) {
  for (int i = 0; i < kLanes<double>; ++i) y[i] = __builtin_exp2(y[i]);
  return y;
}
inline vec<double> exp_vec(vec<double> x) {
  for (int i = 0; i < kLanes<double>; ++i) x[i] = __builtin_exp(x[i]);
  return x;
}
inline float exp_scalar(float x) { return exp_vec(splat(x))[0]; }
inline double exp_scalar(double x) { return __builtin_exp(x); }

// ln x for x > 0 normal (Cephes logf: x = 2^e f, f in [sqrt(1/2), sqrt(2)), ln f by a degree-9 polynomial in f - 1;
// relative error ~1 ulp), whole vectors, for the logsumexps of the attention micro-kernels; double: libm lane by lane.
inline vec<float> log_vec(vec<float> x) {
  typedef int32_t vi __attribute__((vector_size(kVectorBytes)));
  vi bits;
  std::memcpy(&bits, &x, sizeof(x));
  vec<float> e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, vec<float>);
  bits = (bits & 0x807fffff) | 0x3f000000;  // f in [1/2, 1)
  vec<float> f;
  std::memcpy(&f, &bits, sizeof(f));
  const auto small = f < 0.707106781186547524f;  // f in [1/2, sqrt(1/2)): use 2f, e - 1
  e -= small ? splat(1.f) : splat(0.f);
  f = (small ? f + f : f) - 1.f;
  const vec<float> z = f * f;
  vec<float> y = splat(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z - 2.12194440e-4f * e - 0.5f * z;
  return f + y + 0.693359375f * e;
}
inline vec<double> log_vec(vec<double> x) {
  for (int i = 0; i < kLanes<double>; ++i) x[i] = __builtin_log(x[i]);
  return x;
}

// Lane shuffles with compile-time patterns, and the transposing sum of W accumulators into one vector.
template <class T>
struct LaneIndexOf;
template <>
struct LaneIndexOf<float> { typedef int32_t type __attribute__((vector_size(kVectorBytes))); };
template <>
struct LaneIndexOf<double> { typedef int64_t type __attribute__((vector_size(kVectorBytes))); };
template <class T>
using lane_index = typename LaneIndexOf<T>::type;

// The shuffle pattern whose lane p is f(p) (constant-folded once inlined).
template <class T, class F>
inline lane_index<T> pattern(F f) {
  lane_index<T> m;
  for (int p = 0; p < kLanes<T>; ++p) m[p] = f(p);
  return m;
}

// One level of the transposing sum: u and v hold partial sums of two sets of accumulators, each in the lanes of
// alternate S-wide runs; the result holds both sets' partial sums in half as many terms, in alternate 2S-wide runs.
// Level 1 interleaves within 16-byte lanes (unpacklo / unpackhi: one instruction each).
template <class T, int S>
inline vec<T> pair_sum(vec<T> u, vec<T> v) {
  constexpr int W = kLanes<T>, Q = 16 / int(sizeof(T));
  if constexpr (S == 1) {
    const auto lo = pattern<T>([](int p) { return (p % 2 ? W : 0) + p / Q * Q + p % Q / 2; });
    const auto hi = pattern<T>([](int p) { return (p % 2 ? W : 0) + p / Q * Q + Q / 2 + p % Q / 2; });
    return __builtin_shuffle(u, v, lo) + __builtin_shuffle(u, v, hi);
  }
  const auto lo = pattern<T>([](int p) { return (p / S) % 2 == 0 ? p : W + p - S; });
  const auto hi = pattern<T>([](int p) { return (p / S) % 2 == 0 ? p + S : W + p; });
  return __builtin_shuffle(u, v, lo) + __builtin_shuffle(u, v, hi);
}

// a[0] <- the vector whose lane p is the sum of a[p]'s lanes (a: W vectors, overwritten).
template <class T, int S = 1>
inline void transposing_sum(vec<T>* a, int n = kLanes<T>) {
  for (int i = 0; i < n / 2; ++i) a[i] = pair_sum<T, S>(a[2 * i], a[2 * i + 1]);
  if constexpr (2 * S < kLanes<T>) transposing_sum<T, 2 * S>(a, n / 2);
}

}  // namespace fastar::cpu::FASTAR_ISA
