// The tiny-sequence attention of the CPU (Lq, Lk <= 32: FractalGen's levels, PixelLoss): a whole sequence is one
// block held in registers and a few KB of scratch (queries in lanes, or rows of keys for Lq <= half a vector), many
// sequences per task, no tiles and no BLAS call per sequence.
// Torch-free; compiled per ISA (cpu/isa.h's table).
#pragma once
#include <cstdint>

#include "kernels/attention/mask.h"

namespace fastar::cpu {

constexpr int kTinyMaxLen = 32;   // Lq and Lk: one key-visibility bitmask word per query
constexpr int kTinyMaxDim = 256;  // head dim (the kernels hold no D-sized scratch; wider heads take the tile path)

// One (B, H, L, D) operand with unit-stride rows: element (b, h, l, d) at b * sb + h * sh + l * sl + d.
template <class T>
struct TinyHeads {
  const T* data;
  int64_t sb, sh, sl;
  const T* at(int64_t b, int64_t h) const { return data + b * sb + h * sh; }
};

struct TinyDims {
  int64_t B, H, Hk;  // batch, query heads, key heads (H % Hk == 0)
  int Lq, Lk, D;     // 1 <= Lq, Lk <= kTinyMaxLen, D <= kTinyMaxDim
};

template <class T>
struct AttentionTinyKernels {
  // Sequences bh in [bh0, bh1) of B * H: out (B, H, Lq, D) and lse (B, H, Lq) contiguous (-inf, out 0 where a query
  // sees no key).
  void (*forward)(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d,
                  const kernels::MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* out, T* lse);
  // FlashAttention-2's backward per sequence, its P made again by the forward's softmax rather than from lse (exact
  // where a row's P is); dout, dq (B, H, Lq, D) and dk, dv (B, H, Lk, D) per query head, contiguous.
  void (*backward)(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const TinyDims& d,
                   const kernels::MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv);
};

struct AttentionTinyIsa {
  AttentionTinyKernels<float> f32;
  AttentionTinyKernels<double> f64;  // float64 inputs (gradcheck)
};

}  // namespace fastar::cpu
