// The row kernel of the CPU linear (torch-free; compiled per ISA, cpu/isa.h's table).
#pragma once
#include <cstdint>

#include "cpu/half_bits.h"

namespace fastar::cpu {

struct LinearIsa {
  // y[m, n] = x[m, :] . w[n, :] (+ b[n]) for m < M (1 to 4) and n in [n0, n1): each weight row is read once for the
  // M rows of x; x rows ldx apart, y rows ldy apart, w (N, K) contiguous, b nullable.
  void (*rows)(const float* x, int64_t ldx, int M, const float* w, int64_t K, const float* b, float* y, int64_t ldy,
               int64_t n0, int64_t n1);
  // The same with bfloat16 weights (half the bytes to read), widened to float32 exactly.
  void (*rows_bf16)(const float* x, int64_t ldx, int M, const Bf16* w, int64_t K, const float* b, float* y,
                    int64_t ldy, int64_t n0, int64_t n1);
};

}  // namespace fastar::cpu
