// The MLP kernel (torch-free; compiled per ISA, cpu/isa.h's table).
#pragma once
#include <cstdint>

namespace fastar::cpu {

// y = [residual +] act(x w1^T + b1) w2^T + b2 for rows of x (N, C), w1 (Hd, C), w2 (Co, Hd), act the exact (erf)
// GELU, or with softmax_group g > 0 a softmax over each g consecutive hidden units (g divides Hd);
// the weights packed by cpu/mlp.cpp in panels of MlpIsa::cols columns: w1p (hd_pad / cols, C, cols) = w1^T by
// column panels, zero past Hd; w2p (co_pad / cols, hd_pad, cols) = w2^T, zero past Co and Hd; b1p (hd_pad,) and
// b2p (co_pad,) zero-padded.
struct Mlp {
  const float* x;
  int64_t ldx;
  const float* w1p;
  const float* b1p;
  const float* w2p;
  const float* b2p;
  const float* residual;  // nullable
  int64_t ldr;
  float* y;
  int64_t ldy;
  int64_t N, C, Hd, Co, hd_pad, co_pad;
  int64_t softmax_group;  // 0: GELU
};

struct MlpIsa {
  int rows;  // rows of a register block
  int cols;  // columns of a register block and of the packed panels: two vectors
  // Rows [begin, end) of y. scratch: rows (hd_pad + C + 2 co_pad) floats, 64-byte aligned (the block's hidden
  // activations; the last rows' zero-padded copies of x, y and the residual).
  void (*forward)(const Mlp& m, int64_t begin, int64_t end, float* scratch);
  // y = gelu(x) and d = gelu'(x) for n floats (any n; x, y, d unaligned): the exact (erf) GELU, or its tanh
  // approximation with tanh.
  void (*gelu_with_derivative)(const float* x, float* y, float* d, int64_t n, bool tanh);
};

}  // namespace fastar::cpu
