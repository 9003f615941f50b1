// Vector math shared by the per-ISA sources (*_isa.cpp): loads, reductions and exp on the registers of
// cpu/isa_vec.h. float uses a Cephes-style polynomial exp (relative error ~2 ulp) on whole vectors; double, used
// only for float64 inputs, calls the exact libm exp lane by lane.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/isa_vec.h"

namespace fastar::cpu::FASTAR_ISA {

template <class T>
inline vec<T> load(const T* p) { return *reinterpret_cast<const vec<T>*>(p); }
template <class T>
inline void store(T* p, vec<T> v) { *reinterpret_cast<vec<T>*>(p) = v; }
template <class T>
inline vec<T> splat(T v) { return vec<T>{} + v; }
template <class T>
inline vec<T> vmax(vec<T> a, vec<T> b) { return a > b ? a : b; }

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

// exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln 2 / 2, exp(r) by a degree-6 polynomial;
// (Cephes expf); x below -87.3 (and -inf) gives 0, as the masked scores must.
inline vec<float> exp_vec(vec<float> x) {
  typedef int32_t vi __attribute__((vector_size(kVectorBytes)));
  const vec<float> xc = vmax<float>(x, splat(-87.3f));
  const vec<float> t = xc * 1.44269504f;  // rounded half away from zero by the truncating conversion
  const vec<float> n = __builtin_convertvector(__builtin_convertvector(t + (t < 0 ? splat(-0.5f) : splat(0.5f)), vi), vec<float>);
  const vec<float> r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  vec<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vec<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? splat(0.f) : p * scale;
}
inline vec<double> exp_vec(vec<double> x) {
  for (int i = 0; i < kLanes<double>; ++i) x[i] = __builtin_exp(x[i]);
  return x;
}
inline float exp_scalar(float x) { return exp_vec(splat(x))[0]; }
inline double exp_scalar(double x) { return __builtin_exp(x); }

}  // namespace fastar::cpu::FASTAR_ISA
