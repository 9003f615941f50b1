// Element-wise micro-kernels of the CPU sampling (torch-free; compiled per ISA, cpu/isa.h's table).
#pragma once
#include <cstdint>

namespace fastar::cpu {

struct SamplingIsa {
  // The largest of x (n,), n >= 1 (NaN ignored, -inf when every value is).
  float (*row_max)(const float* x, int64_t n);
  // e (n,) = exp((x - m) * inv_t); returns sum(e), accumulated in double.
  double (*row_mass)(const float* x, float* e, int64_t n, float m, float inv_t);
};

}  // namespace fastar::cpu
