// sample_categorical on the CPU, one row per task: the max and the masses exp((x - max) / T) in one vector pass
// (cpu/sampling_isa.cpp), top-k (std::nth_element on a copy) zeroes the dropped masses, top-p sorts only the tokens
// heavy enough to matter, then the exponential race in one vector pass with min_prob's test (the kept token with the
// largest mass / q, q the row's Exp(1) draws: torch.multinomial's algorithm; made there from the generator's words
// when the race comes as words). Semantics: fastar/reference/sampling.py.
#include "cpu/sampling.h"

#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "cpu/isa.h"

namespace fastar::cpu {
namespace {

struct Filters {
  float inv_t;     // 1 / temperature, clamped to FLT_MAX (temperature -> 0: the argmax)
  int64_t top_k;   // 0 or >= V: off
  double top_p;    // 1: off
  double min_prob; // 0: off
};

struct Scratch {
  std::vector<float> x, e, keys;                 // (V,) the row in fp32, its masses, a copy for nth_element
  std::vector<std::pair<float, float>> heavy;    // (logit, mass) of the top-p candidates
};

// Drops (mass 0) the tokens outside the top-p nucleus of the kept ones: the whole tie groups of logits whose kept
// mass strictly above is < top_p of the kept mass. A token lighter than (1 - top_p) * kept / n_kept has more than
// top_p above it, so only heavier ones are sorted.
void top_p_filter(const float* x, float* e, int64_t V, double top_p, std::vector<std::pair<float, float>>& heavy) {
  double kept = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < V; ++i) kept += e[i], n += e[i] > 0;
  const double P = top_p * kept, light = (1 - top_p) * kept / double(n) * (1 - 1e-6);  // slack for float sums
  heavy.clear();
  for (int64_t i = 0; i < V; ++i)
    if (e[i] > 0 && e[i] >= light) heavy.emplace_back(x[i], e[i]);
  std::sort(heavy.begin(), heavy.end(), std::greater<>());
  double above = 0;
  float cut = heavy.front().first;  // the largest logit always stays
  for (size_t g = 0; g < heavy.size();) {
    if (above >= P) break;
    cut = heavy[g].first;
    for (; g < heavy.size() && heavy[g].first == cut; ++g) above += heavy[g].second;
  }
  for (int64_t i = 0; i < V; ++i)
    if (x[i] < cut) e[i] = 0;
}

// The row in fp32: in place for float32, else converted into buf.
const float* fp32_row(const float* x, int64_t, std::vector<float>&) { return x; }
template <class T>
const float* fp32_row(const T* x, int64_t V, std::vector<float>& buf) {
  buf.assign(x, x + V);
  return buf.data();
}

// A row's draws: float32 Exp(1) (q) or the generator's words (w) the race makes them from.
struct Draws {
  const float* q;
  const int64_t* w;
};

int64_t sample_row(const float* x, int64_t V, Draws d, const Filters& f, Scratch& s) {
  const SamplingIsa& isa = *cpu::isa().sampling;
  const float m = isa.row_max(x, V);
  if (!std::isfinite(m)) return -1;
  float* e = s.e.data();
  const double mass = isa.row_mass(x, e, V, m, f.inv_t);
  const float light = f.min_prob > 0 ? float(f.min_prob * mass) : 0.f;  // min_prob's filter, in the race
  if (f.top_k > 0 && f.top_k < V) {
    s.keys.assign(x, x + V);
    std::nth_element(s.keys.begin(), s.keys.begin() + (f.top_k - 1), s.keys.end(), std::greater<>());
    const float kth = s.keys[f.top_k - 1];
    for (int64_t i = 0; i < V; ++i)
      if (x[i] < kth) e[i] = 0;
  }
  if (f.top_p < 1) {
    if (light > 0)  // top-p renormalises what min_prob kept
      for (int64_t i = 0; i < V; ++i)
        if (e[i] < light && x[i] != m) e[i] = 0;
    top_p_filter(x, e, V, f.top_p, s.heavy);
  }
  // the largest e / q, the first on ties (torch.argmax)
  return d.w ? isa.race_words(x, e, d.w, V, m, light) : isa.race(x, e, d.q, V, m, light);
}

}  // namespace

at::Tensor sample_categorical(const at::Tensor& logits, const at::Tensor& race, double temperature, int64_t top_k,
                              double top_p, double min_prob) {
  const int64_t R = logits.size(0), V = logits.size(1);
  at::Tensor out = at::empty({R}, logits.options().dtype(at::kLong));
  const Filters f{float(std::min(1.0 / temperature, double(FLT_MAX))), top_k, top_p, min_prob};
  const bool words = race.scalar_type() == at::kLong;
  const float* q = words ? nullptr : race.data_ptr<float>();
  const int64_t* w = words ? race.data_ptr<int64_t>() : nullptr;
  int64_t* idx = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "sample_categorical", [&] {
    const scalar_t* x = logits.data_ptr<scalar_t>();
    at::parallel_for(0, R, std::max<int64_t>(1, 16384 / V), [&](int64_t begin, int64_t end) {
      Scratch s;
      s.e.resize(V);
      for (int64_t r = begin; r < end; ++r) {
        idx[r] = sample_row(fp32_row(x + r * V, V, s.x), V, {q ? q + r * V : q, w ? w + r * V : w}, f, s);
      }
    });
  });
  return out;
}

}  // namespace fastar::cpu
