// Tensor-core instructions as warp collectives, from the PTX ISA fragment layouts
// (g = lane >> 2, t = lane & 3; element i of a lane's fragment, two 16-bit values per register):
//   mma.m16n8k16 A (row-major 16x16): row g + 8*((i>>1)&1), col 2t + (i&1) + 8*(i>>2), i < 8
//                B (col-major 16x8):  k 2t + (i&1) + 8*(i>>1), n g,                   i < 4
//                C/D (16x8, fp32):    row g + 8*(i>>1), col 2t + (i&1),               i < 4
//   ldmatrix.m8n8.x4: lanes 8j..8j+7 give the row addresses of matrix j; register j of lane l
//                holds row l/4, cols 2(l%4), 2(l%4)+1 of matrix j (.trans: the transpose).
// Products of 16-bit floats are exact in fp32; the sum is taken in double and rounded once, so
// results may differ from the hardware's accumulation order by an ulp or so.
#pragma once
#include "intrinsics.h"
#include "warp.h"

namespace simt::detail {

struct MmaArgs {
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  float d[4];
};

template <class T>
float half_at(uint32_t reg, int i) {  // element i (0 = low half) of a packed pair
  uint16_t raw = uint16_t(reg >> (16 * i));
  T h;
  std::memcpy(static_cast<void*>(&h), &raw, 2);
  return static_cast<float>(h);
}

template <class T>
void mma_fn(Fiber* lanes, unsigned) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const auto* m = static_cast<const MmaArgs*>(lanes[l].warp_data);
    int g = l >> 2, t = l & 3;
    for (int i = 0; i < 8; ++i) A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = half_at<T>(m->a[i / 2], i & 1);
    for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + 8 * (i >> 1)][g] = half_at<T>(m->b[i / 2], i & 1);
    for (int i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = m->c[i];
  }
  for (int l = 0; l < 32; ++l) {
    auto* m = static_cast<MmaArgs*>(lanes[l].warp_data);
    int g = l >> 2, t = l & 3;
    for (int i = 0; i < 4; ++i) {
      int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      double s = C[row][col];
      for (int k = 0; k < 16; ++k) s += double(A[row][k]) * B[k][col];
      m->d[i] = float(s);
    }
  }
}

// The whole warp must take part (mma.sync.aligned): the mask is always full.
template <class T>
void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], Site site) {
  MmaArgs args{a, b, c, {}};
  warp_collective(0xffffffffu, "mma.sync.m16n8k16", site, &args, mma_fn<T>);
  std::memcpy(d, args.d, sizeof args.d);  // after the rendezvous: d may alias c
}

struct LdmatrixArgs {
  const void* row;
  uint32_t r[4];
  bool trans;
};

inline uint16_t ld16(const void* row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(row) + 2 * col, 2);
  return v;
}

inline void ldmatrix_fn(Fiber* lanes, unsigned) {
  auto arg = [&](int l) { return static_cast<LdmatrixArgs*>(lanes[l].warp_data); };
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 4; ++j) {
      int r = l / 4, c = 2 * (l % 4);
      uint16_t lo, hi;
      if (arg(l)->trans)
        lo = ld16(arg(8 * j + c)->row, r), hi = ld16(arg(8 * j + c + 1)->row, r);
      else
        lo = ld16(arg(8 * j + r)->row, c), hi = ld16(arg(8 * j + r)->row, c + 1);
      arg(l)->r[j] = uint32_t(lo) | uint32_t(hi) << 16;
    }
}

inline void ldmatrix_x4(uint32_t r[4], const void* row, bool trans, Site site) {
#ifdef SIMT_TSAN
  // The last lane reads every row (in an ignore region): TSan sees each lane read its own 16 bytes here.
  (void)static_cast<const volatile uint64_t*>(row)[0], (void)static_cast<const volatile uint64_t*>(row)[1];
#endif
  LdmatrixArgs args{row, {}, trans};
  warp_collective(0xffffffffu, trans ? "ldmatrix.x4.trans" : "ldmatrix.x4", site, &args, ldmatrix_fn);
  std::memcpy(r, args.r, sizeof args.r);
}

}  // namespace simt::detail
