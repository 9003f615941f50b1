// The max and exp-sum passes of the CPU sampling over whole vectors (see cpu/sampling_isa.h).
#include "cpu/isa_math.h"
#include "cpu/sampling_isa.h"

#include <cmath>
#include <cstring>

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int W = kLanes<float>;

// The largest logit, or NaN where the row has one (vmax alone would drop it): the row then draws -1.
float row_max(const float* x, int64_t n) {
  vec<float> mx = splat(-__builtin_inff());
  auto nan = mx != mx;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vec<float> v = load(x + i);
    mx = vmax<float>(mx, v), nan |= v != v;
  }
  float m = hmax<float>(mx);
  bool any_nan = any(nan);
  for (; i < n; ++i) m = x[i] > m ? x[i] : m, any_nan |= x[i] != x[i];
  return any_nan ? __builtin_nanf("") : m;
}

double row_mass(const float* x, float* e, int64_t n, float m, float inv_t) {
  vec<float> acc = splat(0.f);  // at most V / W terms of <= 1 per lane before the double sum
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const vec<float> v = exp_vec((load(x + i) - m) * inv_t);
    store(e + i, v);
    acc += v;
  }
  double sum = hsum<float>(acc);
  for (; i < n; ++i) sum += e[i] = exp_scalar((x[i] - m) * inv_t);
  return sum;
}

// Exp(1) draws from the generator's words: u = (w mod 2^53) 2^-53 and y = 1 - u, each converted to float32 once
// (exactly scaled), then -log1p(-u) = -ln(y) u / (1 - y) (1 - y exact; u where y rounds to 1).
constexpr int64_t kLow53 = (int64_t(1) << 53) - 1;
constexpr float k2m53 = 1.1102230246251565e-16f;  // 2^-53
typedef int64_t Words __attribute__((vector_size(W * 8)));

vec<float> exponentials(Words w) {
  w &= kLow53;
  const vec<float> u = __builtin_convertvector(w, vec<float>) * k2m53;
  const vec<float> y = __builtin_convertvector((kLow53 + 1) - w, vec<float>) * k2m53;
  const vec<float> d = 1.f - y;
  return d > 0 ? -log_vec(y) * (u / (d > 0 ? d : splat(1.f))) : u;
}
float exponential(int64_t w) {
  w &= kLow53;
  const float u = float(w) * k2m53, y = float((kLow53 + 1) - w) * k2m53;
  return y < 1 ? -std::log(y) * (u / (1.f - y)) : u;
}

struct Races {  // float32 draws
  const float* q;
  vec<float> at(int64_t i) const { return load(q + i); }
  float one(int64_t i) const { return q[i]; }
};
struct WordRaces {  // the generator's words
  const int64_t* w;
  vec<float> at(int64_t i) const {
    Words v;
    std::memcpy(&v, w + i, sizeof(v));
    return exponentials(v);
  }
  float one(int64_t i) const { return exponential(w[i]); }
};

// The kept token with the largest e / q (ratios of kept tokens are > 0), the first on ties; q made only for vectors
// that keep a token.
template <class Q>
int64_t race_over(const float* x, const float* e, Q q, int64_t n, float m, float light) {
  using Index = lane_index<float>;
  const Index step = pattern<float>([](int) { return W; });
  Index at = pattern<float>([](int p) { return p; }), arg = at;
  vec<float> best = splat(-1.f);  // per lane
  int64_t i = 0;
  for (; i + W <= n; i += W, at += step) {
    const vec<float> ev = load(e + i);
    const auto kept = ev > 0 && (ev >= light || load(x + i) == m);
    if (!any(kept)) continue;
    const vec<float> ratio = kept ? ev / q.at(i) : splat(-1.f);
    const auto wins = ratio > best;  // strict: a lane keeps its first index on ties
    best = wins ? ratio : best;
    arg = wins ? at : arg;
  }
  float top = -1;
  int64_t pick = -1;
  for (int p = 0; p < W; ++p)  // the largest, the smallest index on ties (lane p holds indices = p mod W)
    if (best[p] > top || (best[p] == top && best[p] > 0 && arg[p] < pick)) top = best[p], pick = arg[p];
  for (; i < n; ++i) {
    if (!(e[i] > 0 && (e[i] >= light || x[i] == m))) continue;
    const float ratio = e[i] / q.one(i);
    if (ratio > top) top = ratio, pick = i;
  }
  return top > 0 ? pick : -1;
}

int64_t race(const float* x, const float* e, const float* q, int64_t n, float m, float light) {
  return race_over(x, e, Races{q}, n, m, light);
}
int64_t race_words(const float* x, const float* e, const int64_t* w, int64_t n, float m, float light) {
  return race_over(x, e, WordRaces{w}, n, m, light);
}

}  // namespace

extern const SamplingIsa kSampling = {row_max, row_mass, race, race_words};

}  // namespace fastar::cpu::FASTAR_ISA
