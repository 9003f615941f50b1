// The k-d tree of vq_nearest's CPU search over small-D codebooks (torch-free; the search is per ISA in
// vq_nearest_isa.cpp, VqTree in vq_nearest_isa.h).
#pragma once
#include <cstdint>

namespace fastar::cpu {

// How a codebook of K codes splits: `leaves` leaves (at most kVqTreeMaxLeaves, about target_codes codes each) of
// leaf_blocks blocks of `lanes` codes.
struct VqTreeShape {
  int64_t leaves, leaf_blocks, box_stride;
  int64_t positions(int lanes) const { return leaves * leaf_blocks * lanes; }
};
VqTreeShape vq_tree_shape(int64_t K, int lanes, int64_t target_codes);

// Balanced median splits on the coordinate of widest spread, down to the shape's leaves. Fills order
// (positions: the code at each packed position, leaf by leaf, -1 on padding) and lo / hi ((D, box_stride): each
// leaf's bounding box); returns max ||e|| rounded up, +inf when a code is not finite.
float vq_tree_build(const float* codes, int64_t K, int64_t D, const VqTreeShape& shape, int lanes, int32_t* order,
                    float* lo, float* hi);

}  // namespace fastar::cpu
