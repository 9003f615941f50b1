// The fused row passes of the CPU diffusion-head loop (see cpu/diffusion_isa.h).
#include "cpu/diffusion_isa.h"
#include "cpu/isa_math.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int W = kLanes<float>;

// SiLU(v) = v / (1 + exp(-v)); exp's argument capped where exp_vec is exact, which leaves the quotient ~ -0 there.
inline vec<float> silu(vec<float> v) {
  const vec<float> e = -v, cap = splat(88.f);
  return v / (1.f + exp_vec(e < cap ? e : cap));
}
inline float silu(float v) { return silu(splat(v))[0]; }

void silu_sum(const float* a, const float* b, float* s, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W) store(s + j, silu(load(a + j) + load(b + j)));
  for (; j < n; ++j) s[j] = silu(a[j] + b[j]);
}

void silu_bias(float* a, const float* bias, int64_t n) { silu_sum(a, bias, a, n); }

void project(const float* x, int64_t c, const float* w, const float* bias_in, float* h, int64_t n) {
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {  // four vectors of the row in registers through the c updates
    vec<float> acc[4];
    for (int u = 0; u < 4; ++u) acc[u] = load(bias_in + j + u * W);
    for (int64_t k = 0; k < c; ++k) {
      const vec<float> xk = splat(x[k]);
      for (int u = 0; u < 4; ++u) acc[u] += xk * load(w + k * n + j + u * W);
    }
    for (int u = 0; u < 4; ++u) store(h + j + u * W, acc[u]);
  }
  for (; j < n; ++j) {
    float acc = bias_in[j];
    for (int64_t k = 0; k < c; ++k) acc += x[k] * w[k * n + j];
    h[j] = acc;
  }
}

void gated_residual(float* x, const float* gate, const float* bgate, const float* y, const float* bias_y, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W)
    store(x + j, load(x + j) + (load(gate + j) + load(bgate + j)) * (load(y + j) + load(bias_y + j)));
  for (; j < n; ++j) x[j] += (gate[j] + bgate[j]) * (y[j] + bias_y[j]);
}

void ln_modulate(const float* x, const float* ln_w, const float* ln_b, const float* mod, const float* bias, float* h,
                 int64_t n, float eps) {
  vec<float> acc = splat(0.f);
  int64_t j = 0;
  for (; j + W <= n; j += W) acc += load(x + j);
  float sum = hsum<float>(acc);
  for (; j < n; ++j) sum += x[j];
  const float mean = sum / float(n);
  acc = splat(0.f);
  for (j = 0; j + W <= n; j += W) {
    const vec<float> d = load(x + j) - mean;
    acc += d * d;
  }
  float sq = hsum<float>(acc);
  for (; j < n; ++j) sq += (x[j] - mean) * (x[j] - mean);
  const float rstd = 1.f / __builtin_sqrtf(sq / float(n) + eps);
  const float *shift = mod, *scale = mod + n, *bshift = bias, *bscale = bias + n;
  for (j = 0; j + W <= n; j += W) {
    vec<float> y = (load(x + j) - mean) * rstd;
    if (ln_w) y = y * load(ln_w + j) + load(ln_b + j);
    store(h + j, y * (1.f + load(scale + j) + load(bscale + j)) + load(shift + j) + load(bshift + j));
  }
  for (; j < n; ++j) {
    float y = (x[j] - mean) * rstd;
    if (ln_w) y = y * ln_w[j] + ln_b[j];
    h[j] = y * (1.f + scale[j] + bscale[j]) + shift[j] + bshift[j];
  }
}

}  // namespace

extern const DiffusionIsa kDiffusion = {silu_sum, silu_bias, project, gated_residual, ln_modulate};

}  // namespace fastar::cpu::FASTAR_ISA
