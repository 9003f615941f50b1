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

struct VqNearestIsa {
  int lanes;  // codes per packed block: the floats of one vector register
  // codes: (K, D) row-major; out_codes / out_norms sized as VqPacked describes, 64-byte aligned.
  void (*pack)(const float* codes, int64_t K, int64_t D, float* out_codes, float* out_norms);
  // Rows [begin, end) of x, sweeping the codebook in cache slices of about slice_codes codes (whole argmin
  // chunks; 0: sized for L2). The slicing never changes a result.
  void (*search)(const VqPacked& codebook, const VqRows& rows, int64_t begin, int64_t end, int64_t slice_codes);
};

}  // namespace fastar::cpu
