// The 3x3 convolution's Winograd tiles (torch-free; compiled per ISA, cpu/isa.h's table).
#pragma once
#include <cstdint>

namespace fastar::cpu {

// A stride-1, padding-1 3x3 convolution of x (B, Ci, H, W) NCHW float32 into y (B, Co, H, W), by Winograd
// F(2x2, 3x3) (Lavin and Gray 2016): each 2x2 output tile is A^T [sum_ci (G g G^T) . (B^T d B)] A over the 4x4 input
// patch d, so the 9 Ci multiply-adds of a direct conv's output become 16 Ci / 4 = 4 Ci per output. u holds the 16
// transformed weights G g G^T as 16 matrices, Co padded to co_pad (a multiple of kConvPack, zero rows past Co) and
// packed in blocks of kConvPack output channels: u (16, co_pad / kConvPack, Ci, kConvPack), element
// [xi][cob][ci][r] = (G g G^T)[xi] of output channel cob kConvPack + r and input channel ci (cpu/conv.cpp).
constexpr int kConvPack = 12;  // every ISA's register block of output channels divides it
struct Conv3x3 {
  const float* x;
  const float* u;
  const float* bias;  // (Co,) or nullptr
  float* y;
  int64_t B, Ci, Co, H, W, co_pad;
};

// How ConvIsa::winograd numbers its work items of `tiles` tiles: whether they run across tile rows (rows shorter
// than `tiles`), and how many there are.
inline bool conv_tiles_across_rows(int64_t W, int tiles) { return (W + 1) / 2 < tiles; }
inline int64_t conv_work_items(int64_t B, int64_t H, int64_t W, int tiles) {
  const int64_t th = (H + 1) / 2, tw = (W + 1) / 2;
  return conv_tiles_across_rows(W, tiles) ? (B * th * tw + tiles - 1) / tiles : B * th * ((tw + tiles - 1) / tiles);
}

struct ConvIsa {
  int tiles;  // output tiles a work item takes: two vector registers of them
  // Work items [begin, end), 2x2 output tiles ceil(H/2) x ceil(W/2) per image: when a tile row has at least `tiles`
  // tiles, item (b, tile row, block of `tiles` along it) in that order (B ceil(H/2) ceil(ceil(W/2) / tiles) items);
  // else `tiles` consecutive tiles of the batch in (b, row, column) order (ceil(B ceil(H/2) ceil(W/2) / tiles)).
  // scratch: 16 (Ci + co_pad) tiles floats, 64-byte aligned.
  void (*winograd)(const Conv3x3& c, int64_t begin, int64_t end, float* scratch);
};

}  // namespace fastar::cpu
