// Element-wise micro-kernels of the CPU attention (torch-free; compiled per ISA, cpu/isa.h's table).
// The tile matrix products run through the BLAS libtorch exports (cpu/blas.h); these do what lies between
// them, where a scalar exp would cost as much as the products themselves.
#pragma once
#include <cstdint>

namespace fastar::cpu {

// A block of scores: rows x ld values, row stride ld, ld a multiple of 16 so every row is whole
// vectors; columns past the tile's keys and masked keys hold -inf.
template <class T>
struct AttentionKernels {
  // FlashAttention-2 online softmax step. S (rows, ld) scaled scores -> P = exp(S - m_new);
  // m (rows,) running max, l (rows,) running sum of exp, o (rows, d) accumulator rescaled by
  // exp(m_old - m_new). A row that has seen only -inf keeps m = -inf, l = 0 and P = 0.
  void (*online_softmax)(T* S, int rows, int ld, T* m, T* l, T* o, int d);
  // Backward, FlashAttention-2: S (rows, ld) scaled scores -> P = exp(S - lse) (0 where lse = -inf).
  void (*probs)(T* S, int rows, int ld, const T* lse);
  // dP (rows, ld) -> dS = P * (dP - delta), delta (rows,) = rowsum(dout * out).
  void (*dscores)(const T* P, T* dP, int rows, int ld, const T* delta);
};

struct AttentionIsa {
  AttentionKernels<float> f32;
  AttentionKernels<double> f64;  // float64 inputs (gradcheck); exact exp, not the fast polynomial
};

}  // namespace fastar::cpu
