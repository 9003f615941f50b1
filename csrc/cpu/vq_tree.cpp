#include "cpu/vq_tree.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/vq_nearest_isa.h"

namespace fastar::cpu {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Codes of the `leaves` leaves made from n codes: the first half of the leaves gets n * half / leaves of them.
int64_t left_count(int64_t n, int64_t leaves) { return n * (leaves / 2) / leaves; }

int64_t largest_leaf(int64_t n, int64_t leaves) {
  if (leaves == 1) return n;
  const int64_t l = left_count(n, leaves);
  return std::max(largest_leaf(l, leaves / 2), largest_leaf(n - l, leaves - leaves / 2));
}

// A float's order as an unsigned integer (negative floats flipped), above a code index: one integer compare per
// step of the median selection.
uint64_t sort_key(float v, int32_t k) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u = (u >> 31) ? ~u : u | 0x80000000u;
  return uint64_t(u) << 32 | uint32_t(k);
}

struct Builder {
  const float* codes;
  int64_t D, cap, stride;
  int32_t* order;
  float *lo, *hi;
  std::vector<uint64_t> keys;

  // Splits codes first[0, n) into `leaves` leaves from leaf0 on. cell_lo / cell_hi: the node's cell (the splits
  // above it), whose widest side is cut next at the median code.
  void split(int32_t* first, int64_t n, int64_t leaves, int64_t leaf0, float* cell_lo, float* cell_hi) {
    if (leaves == 1) {
      for (int64_t i = 0; i < cap; ++i) order[leaf0 * cap + i] = i < n ? first[i] : -1;
      for (int64_t d = 0; d < D; ++d) {
        float a = kInf, b = -kInf;
        for (int64_t i = 0; i < n; ++i) {
          const float v = codes[first[i] * D + d];
          a = std::min(a, v), b = std::max(b, v);
        }
        lo[d * stride + leaf0] = a, hi[d * stride + leaf0] = b;
      }
      return;
    }
    int64_t w = 0;
    for (int64_t d = 1; d < D; ++d) w = cell_hi[d] - cell_lo[d] > cell_hi[w] - cell_lo[w] ? d : w;
    keys.resize(n);
    for (int64_t i = 0; i < n; ++i) keys[i] = sort_key(codes[first[i] * D + w], first[i]);
    const int64_t l = left_count(n, leaves);
    std::nth_element(keys.begin(), keys.begin() + l, keys.end());
    for (int64_t i = 0; i < n; ++i) first[i] = int32_t(uint32_t(keys[i]));
    const float cut = codes[first[l] * D + w], saved_lo = cell_lo[w], saved_hi = cell_hi[w];
    cell_hi[w] = cut;
    split(first, l, leaves / 2, leaf0, cell_lo, cell_hi);
    cell_hi[w] = saved_hi, cell_lo[w] = cut;
    split(first + l, n - l, leaves - leaves / 2, leaf0 + leaves / 2, cell_lo, cell_hi);
    cell_lo[w] = saved_lo;
  }
};

}  // namespace

VqTreeShape vq_tree_shape(int64_t K, int lanes, int64_t target_codes) {
  const int64_t leaves = std::clamp<int64_t>((K + target_codes - 1) / target_codes, 1, kVqTreeMaxLeaves);
  const int64_t biggest = largest_leaf(K, leaves);
  return {leaves, (biggest + lanes - 1) / lanes, (leaves + lanes - 1) / lanes * lanes};
}

float vq_tree_build(const float* codes, int64_t K, int64_t D, const VqTreeShape& shape, int lanes, int32_t* order,
                    float* lo, float* hi) {
  // The radius, and the codebook's box as the root's cell.
  std::vector<float> cell_lo(D, kInf), cell_hi(D, -kInf);
  float radius2 = 0.f;
  for (int64_t k = 0; k < K; ++k) {
    float n = 0.f;
    for (int64_t d = 0; d < D; ++d) {
      const float v = codes[k * D + d];
      n += v * v;
      cell_lo[d] = std::min(cell_lo[d], v), cell_hi[d] = std::max(cell_hi[d], v);
    }
    radius2 = std::max(radius2, n);
    if (!std::isfinite(n)) radius2 = kInf;  // also NaN: the search then visits every leaf
  }
  std::vector<int32_t> index(K);
  for (int64_t k = 0; k < K; ++k) index[k] = int32_t(k);
  Builder b{codes, D, shape.leaf_blocks * lanes, shape.box_stride, order, lo, hi, {}};
  b.split(index.data(), K, shape.leaves, 0, cell_lo.data(), cell_hi.data());
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = d * shape.box_stride + shape.leaves; j < (d + 1) * shape.box_stride; ++j) lo[j] = kInf, hi[j] = -kInf;
  // ||e||^2 in float errs by at most (D + 1) 2^-24 of itself; rounded up by 16x that.
  return radius2 < kInf ? std::sqrt(radius2 * (1.f + float(D + 2) / (1 << 20))) : kInf;
}

}  // namespace fastar::cpu
