// Element-wise micro-kernels of the CPU sampling (torch-free; compiled per ISA, cpu/isa.h's table).
#pragma once
#include <cstdint>

namespace fastar::cpu {

struct SamplingIsa {
  // The largest of x (n,), n >= 1 (NaN ignored, -inf when every value is).
  float (*row_max)(const float* x, int64_t n);
  // e (n,) = exp((x - m) * inv_t); returns sum(e), accumulated in double.
  double (*row_mass)(const float* x, float* e, int64_t n, float m, float inv_t);
  // The exponential race: the index of the largest e[i] / q[i] over the kept tokens, the first on ties; -1 when
  // none is kept. Kept: e[i] > 0 and, for min_prob's filter, e[i] >= light or x[i] == m (the largest logit stays).
  int64_t (*race)(const float* x, const float* e, const float* q, int64_t n, float m, float light);
  // The same race against q = -log1p(-u), u = (words[i] mod 2^53) / 2^53 (torch's CPU exponential_ of the same
  // generator words), made in float32 within a few ulp of torch's float32 q.
  int64_t (*race_words)(const float* x, const float* e, const int64_t* words, int64_t n, float m, float light);
};

}  // namespace fastar::cpu
