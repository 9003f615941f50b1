// Multi-axis blocked attention micro-kernels of the CPU (HiT; cpu/multi_axis.cpp drives them): torch-free, compiled
// per ISA (cpu/isa.h's table). One work item is one group of one axis (a block, or one offset of every block) and one
// key head, with the query rows of every head that shares the key head stacked; each product is a register-blocked
// routine over rows reached by pointers into the image layout or a few KB of scratch (K, V transposed; rows read more
// than once copied), with the next item's rows prefetched: no BLAS call and no allocation per item.
#pragma once
#include <cstdint>

namespace fastar::cpu {

// A (B, H, W, heads, D) operand with unit-stride rows: element (b, y, x, h, d) at b sb + y sy + x sx + h sh + d.
// lse uses it too, as (B, H, W, heads) with the d index absent.
template <class T>
struct MultiAxisImage {
  T* data;
  int64_t sb, sy, sx, sh;
  T* at(int64_t b, int64_t y, int64_t x, int64_t h) const { return data + b * sb + y * sy + x * sx + h * sh; }
};

// The work items of one axis: item i is batch row i / (groups kv_heads), group i / kv_heads % groups and key head
// kv0 + i % kv_heads, whose query heads are q0 + (i % kv_heads) q_per_kv + [0, q_per_kv). Token t of group g sits at
// pixel (group_y[g] + token_y[t], group_x[g] + token_x[t]) (cpu/multi_axis.cpp fills the tables from
// kernels/multi_axis/geometry.h: a pixel is its group's origin plus its token's offset on either axis).
struct MultiAxisItems {
  int64_t B;
  int groups, n, D;               // groups per image, tokens per group, head dim
  int kv_heads, kv0, q_per_kv, q0;
  const int *group_y, *group_x;   // (groups,)
  const int *token_y, *token_x;   // (n,)
  int token_rows, token_cols, token_step;  // the same tokens as a grid (geometry.h's token_grid)
  bool prefetch;                            // the next item's rows, while an item computes (operands past the caches)
  int64_t items() const { return B * groups * kv_heads; }
};

template <class T>
struct MultiAxisKernels {
  // Bytes of scratch one thread needs for items (64-byte aligned by the caller).
  int64_t (*scratch_bytes)(const MultiAxisItems& it);
  // Items [i0, i1): out = softmax(scale q k^T) v per item in q's layout, lse = the row's logsumexp.
  void (*forward)(const MultiAxisItems& it, MultiAxisImage<const T> q, MultiAxisImage<const T> k,
                  MultiAxisImage<const T> v, T scale, int64_t i0, int64_t i1, MultiAxisImage<T> out,
                  MultiAxisImage<T> lse, void* scratch);
  // FlashAttention-2's backward of items [i0, i1), P made again as the forward makes it (not from lse): dq written;
  // dk, dv written, or added to when accumulate_kv (the second axis of a multi-query K/V, whose key head the first
  // axis wrote).
  void (*backward)(const MultiAxisItems& it, MultiAxisImage<const T> q, MultiAxisImage<const T> k,
                   MultiAxisImage<const T> v, MultiAxisImage<const T> dout, T scale, int64_t i0, int64_t i1,
                   MultiAxisImage<T> dq, MultiAxisImage<T> dk, MultiAxisImage<T> dv, bool accumulate_kv,
                   void* scratch);
};

struct MultiAxisIsa {
  MultiAxisKernels<float> f32;
  MultiAxisKernels<double> f64;  // float64 inputs (gradcheck)
};

}  // namespace fastar::cpu
