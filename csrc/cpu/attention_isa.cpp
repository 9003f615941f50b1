// Online softmax and softmax-gradient micro-kernels of the CPU attention (torch-free; compiled per ISA,
// see cpu/attention_isa.h). float uses a Cephes-style polynomial exp (relative error ~2 ulp) on whole
// vectors; double, used only for float64 inputs, calls the exact libm exp lane by lane.
#include <cstdint>
#include <cstring>

#include "cpu/attention_isa.h"
#include "cpu/isa_vec.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

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

template <class T>
void online_softmax(T* S, int rows, int ld, T* m, T* l, T* o, int d) {
  constexpr int W = kLanes<T>;
  const T neg_inf = -__builtin_inf();
  for (int r = 0; r < rows; ++r) {
    T* s = S + int64_t(r) * ld;
    vec<T> mx = splat(neg_inf);
    for (int j = 0; j < ld; j += W) mx = vmax<T>(mx, load(s + j));
    const T tile_max = hmax<T>(mx), m_new = tile_max > m[r] ? tile_max : m[r];
    if (m_new == neg_inf) {  // nothing visible yet: P = 0, state unchanged
      for (int j = 0; j < ld; j += W) store(s + j, splat(T(0)));
      continue;
    }
    vec<T> sum = splat(T(0));
    for (int j = 0; j < ld; j += W) {
      const vec<T> p = exp_vec(load(s + j) - m_new);
      store(s + j, p);
      sum += p;
    }
    const T alpha = exp_scalar(m[r] - m_new);  // 0 on the first visible tile (m = -inf)
    l[r] = l[r] * alpha + hsum<T>(sum);
    m[r] = m_new;
    if (alpha != T(1))
      for (int c = 0; c < d; ++c) o[int64_t(r) * d + c] *= alpha;
  }
}

template <class T>
void probs(T* S, int rows, int ld, const T* lse) {
  constexpr int W = kLanes<T>;
  for (int r = 0; r < rows; ++r) {
    T* s = S + int64_t(r) * ld;
    if (lse[r] == -__builtin_inf()) {  // a row that sees no key has P = 0 (and out = 0)
      for (int j = 0; j < ld; j += W) store(s + j, splat(T(0)));
      continue;
    }
    for (int j = 0; j < ld; j += W) store(s + j, exp_vec(load(s + j) - lse[r]));
  }
}

template <class T>
void dscores(const T* P, T* dP, int rows, int ld, const T* delta) {
  constexpr int W = kLanes<T>;
  for (int r = 0; r < rows; ++r) {
    const int64_t row = int64_t(r) * ld;
    for (int j = 0; j < ld; j += W) store(dP + row + j, load(P + row + j) * (load(dP + row + j) - delta[r]));
  }
}

template <class T>
constexpr AttentionKernels<T> kernels() { return {online_softmax<T>, probs<T>, dscores<T>}; }

}  // namespace

extern const AttentionIsa kAttention = {kernels<float>(), kernels<double>()};

}  // namespace fastar::cpu::FASTAR_ISA
