// The fused row passes of the CPU diffusion-head loop (cpu/diffusion.cpp) over one row of the head's width: torch-free,
// compiled per ISA (cpu/isa.h's table), so the passes between the GEMMs run at the vector width of the CPU.
#pragma once
#include <cstdint>

namespace fastar::cpu {

struct DiffusionIsa {
  // s (n,) = SiLU(a + b).
  void (*silu_sum)(const float* a, const float* b, float* s, int64_t n);
  // a (n,) = SiLU(a + bias), in place.
  void (*silu_bias)(float* a, const float* bias, int64_t n);
  // h (n,) = bias_in + sum_k x[k] w[k] (the input projection of one row: c rank-1 updates, w (c, n) row-major).
  void (*project)(const float* x, int64_t c, const float* w, const float* bias_in, float* h, int64_t n);
  // x (n,) += (gate + bgate) * (y + bias_y), the gated residual.
  void (*gated_residual)(float* x, const float* gate, const float* bgate, const float* y, const float* bias_y,
                         int64_t n);
  // h (n,) = LN(x) (* ln_w + ln_b unless null) * (1 + scale + bscale) + shift + bshift, where mod = [shift, scale]
  // and bias = [bshift, bscale] hold 2n values each (adaLN's modulation and its bias); LN's variance two-pass.
  void (*ln_modulate)(const float* x, const float* ln_w, const float* ln_b, const float* mod, const float* bias,
                      float* h, int64_t n, float eps);
};

}  // namespace fastar::cpu
