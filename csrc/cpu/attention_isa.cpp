// Online softmax and softmax-gradient micro-kernels of the CPU attention (torch-free; compiled per ISA,
// see cpu/attention_isa.h), on the vector math of cpu/isa_math.h.
#include <cstdint>

#include "cpu/attention_isa.h"
#include "cpu/isa_math.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

template <class T>
void online_softmax(T* S, int rows, int ld, T* m, T* l, T* o, int d) {
  constexpr int W = kLanes<T>;
  const T neg_inf = -__builtin_inf();
  for (int r = 0; r < rows; ++r) {
    T* s = S + int64_t(r) * ld;
    vec<T> mx = splat(neg_inf);
    auto seen = mx != mx;  // lanes with a score other than -inf (a NaN too: it must reach the output)
    for (int j = 0; j < ld; j += W) {
      const vec<T> x = load(s + j);
      mx = vmax<T>(mx, x), seen |= x != neg_inf;
    }
    const T tile_max = hmax<T>(mx), m_new = tile_max > m[r] ? tile_max : m[r];
    if (m_new == neg_inf && !any(seen)) {  // nothing visible yet: P = 0, state unchanged
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
