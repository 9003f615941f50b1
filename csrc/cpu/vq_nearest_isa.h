// The nearest-code search kernels of each instruction set (torch-free; compiled per ISA, cpu/isa.h's table).
#pragma once
#include <cstdint>

namespace fastar::cpu {

// Nearest-code search over pre-packed codes; packing puts the codebook in the layout the micro-kernel
// streams: blocks of `lanes` codes, each stored as (D, lanes) so one vector load holds one coordinate
// of `lanes` codes.
struct VqPacked {
  const float* codes;  // (ceil(K / lanes), D, lanes): -2 * e, zero on padding codes
  const float* norms;  // (ceil(K / lanes) * lanes,): ||e||^2, +inf on padding codes so they never win
  int64_t K, D;
};

struct VqRows {
  const float* x;  // (N, D) row-major
  int64_t* idx;    // (N,) nearest code, lowest index on ties
  float* dist;     // (N,) ||x - e_idx||^2 as ||x||^2 + ||e||^2 - 2 x.e, float32
};

// A small-D codebook cut into the leaves of a k-d tree (cpu/vq_tree.h builds it): packed leaf by leaf, each leaf
// `leaf_blocks` whole blocks (padding codes fill its end), with each leaf's bounding box. A row sweeps the leaf
// nearest to it, then only the leaves whose box could hold a code as near as its best so far: the bound is
// widened by far more than float rounding can move a score, so every skipped code scores strictly worse, and the
// answer is bit for bit the full sweep's (the same score operations per code; lowest index on ties).
struct VqTree {
  const int32_t* order;  // (leaves * leaf_blocks * lanes,) the code at each packed position; -1 on padding
  const float* lo;       // (D, box_stride): each leaf's lowest coordinate d (+inf past the last leaf)
  const float* hi;       // (D, box_stride): its highest (-inf past the last leaf)
  int64_t leaves, leaf_blocks, box_stride;  // box_stride: leaves rounded up to whole vectors
  float radius;          // max ||e|| over the codes, rounded up
};
constexpr int64_t kVqTreeMaxLeaves = 4096;  // the search keeps one bound per leaf on the stack

struct VqNearestIsa {
  int lanes;  // codes per packed block: the floats of one vector register
  // codes: (K, D) row-major; packs `positions` codes (order[p]: the code at position p, -1 for a padding code;
  // order null: position p holds code p, padding past K); out_codes / out_norms sized as VqPacked describes for
  // `positions` codes, 64-byte aligned.
  void (*pack)(const float* codes, int64_t K, int64_t D, const int32_t* order, int64_t positions, float* out_codes,
               float* out_norms);
  // Rows [begin, end) of x, sweeping the codebook in cache slices of about slice_codes codes (whole argmin
  // chunks; 0: sized for L2). The slicing never changes a result.
  void (*search)(const VqPacked& codebook, const VqRows& rows, int64_t begin, int64_t end, int64_t slice_codes);
  // The same answers through the tree (codebook packed in the tree's order).
  void (*search_tree)(const VqPacked& codebook, const VqTree& tree, const VqRows& rows, int64_t begin, int64_t end);
};

}  // namespace fastar::cpu
