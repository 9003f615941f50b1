// The max and exp-sum passes of the CPU sampling over whole vectors (see cpu/sampling_isa.h).
#include "cpu/isa_math.h"
#include "cpu/sampling_isa.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int W = kLanes<float>;

float row_max(const float* x, int64_t n) {
  vec<float> mx = splat(-__builtin_inff());
  int64_t i = 0;
  for (; i + W <= n; i += W) mx = vmax<float>(mx, load(x + i));
  float m = hmax<float>(mx);
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
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

}  // namespace

extern const SamplingIsa kSampling = {row_max, row_mass};

}  // namespace fastar::cpu::FASTAR_ISA
