// The nearest-code search of one block of 64 query rows, shared by vq_nearest (rows read from x) and
// msq_down_search (rows area-downsampled into shared memory first): a blocked rows . codebook^T product whose
// epilogue keeps, per row, the running (distance, index) minimum in registers, so the N x K distances never reach
// memory. Codes in tiles of 64; 16 x 16 threads, each owning 4 rows x 4 codes of every tile; D is staged through
// shared memory 8 elements at a time. Where the rows come from is a policy (GlobalRows, SharedRows).
#pragma once
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/quantize/vq_nearest.h"

namespace fastar::kernels::vq_tile {

constexpr int kThreads = 256;
constexpr int kSide = 16;           // threads per row group and per code group
constexpr int kRows = 64;           // query rows per block (4 per thread)
constexpr int kCodes = 64;          // codes per tile (4 per thread)
constexpr int kDepth = 8;           // elements of D per staging step
constexpr int kStride = kRows + 4;  // staged row length: conflict-free transposed stores, float4-aligned loads
static_assert(kRows == kCodes && kRows == 4 * kSide && kSide * kSide == kThreads, "one staging shape for both");

using Tile = float (*)[kStride];  // (kDepth, kStride): kDepth elements of D of 64 rows or codes, transposed

struct Smem {
  __align__(16) float xs[kDepth][kStride];  // rows, transposed (GlobalRows stages here)
  __align__(16) float es[kDepth][kStride];  // codes of the tile, transposed
  float norm_s[kCodes + kRows];             // cosine: max(||v||, 1e-12) of the codes, then rows
  float sq_s[kCodes + kRows];               // ||v||^2 as compared (after normalization)
};

// (a, ka) ranks before (b, kb): smaller distance, a NaN distance counting as +inf, then lower index.
__device__ __forceinline__ bool better(float a, int ka, float b, int kb) {
  a = a != a ? INFINITY : a;
  b = b != b ? INFINITY : b;
  return a < b || (a == b && ka < kb);
}

// tile[j][r] = src[first + r][d0 + j] / divisor[r] as fp32 (no division when divisor is null), 0 outside
// the (count, D) matrix.
template <class T>
__device__ __forceinline__ void stage(Tile tile, const T* src, int64_t first, int64_t count, int D, int d0,
                                      const float* divisor) {
#pragma unroll
  for (int i = 0; i < kRows * kDepth / kThreads; ++i) {
    const int e = threadIdx.x + i * kThreads, r = e / kDepth, j = e % kDepth;
    const int64_t row = first + r;
    float v = row < count && d0 + j < D ? to_float(src[row * D + d0 + j]) : 0.f;
    if (divisor) v /= divisor[r];  // a division as F.normalize, so cosine matches the reference closely
    tile[j][r] = v;
  }
}

// Rows of p.x (n, d), staged through smem.xs kDepth columns at a time, divided by the row norms for cosine.
template <class T>
struct GlobalRows {
  const T* x;
  __device__ __forceinline__ Tile tile(const VqNearestParams& p, int64_t row0, int d0, const float* divisor,
                                       Tile xs) const {
    stage(xs, x, row0, p.n, p.d, d0, divisor);
    return xs;
  }
};

// Rows already in shared memory as (ceil(d / kDepth) kDepth, kStride), transposed and zero past the rows and d
// (plain L2 only: no divisor).
struct SharedRows {
  Tile rows;
  __device__ __forceinline__ Tile tile(const VqNearestParams&, int64_t, int d0, const float*, Tile) const {
    return rows + d0;
  }
};

// One sweep over D for the block's rows and the tile's codes (divided by norm_s when not null): adds
// x . e^T to acc when kProduct, and returns the sum of squares of the staged values of one code
// (threads 0..63) or one row (threads 64..127).
template <bool kProduct, class T, class Rows>
__device__ __forceinline__ float sweep(const VqNearestParams& p, const Rows& rows, int64_t row0, int64_t k0,
                                       const float* norm_s, Smem& s, float (&acc)[4][4]) {
  const int tid = threadIdx.x, ty = tid / kSide, tx = tid % kSide;
  const bool sums = tid < kCodes + kRows;
  const int sum_col = tid % kRows;
  float sq = 0.f;
  for (int d0 = 0; d0 < p.d; d0 += kDepth) {
    __syncthreads();  // the previous step's reads are done
    const Tile xs = rows.tile(p, row0, d0, norm_s ? norm_s + kCodes : nullptr, s.xs);
    stage(s.es, static_cast<const T*>(p.codebook), k0, p.k, p.d, d0, norm_s);
    __syncthreads();
    const Tile sum_src = tid < kCodes ? s.es : xs;
#pragma unroll
    for (int j = 0; j < kDepth; ++j) {
      if (kProduct) {
        const float4 a = *reinterpret_cast<const float4*>(&xs[j][4 * ty]);
        const float4 b = *reinterpret_cast<const float4*>(&s.es[j][4 * tx]);
        const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] += av[r] * bv[c];
      }
      if (sums) sq += sum_src[j][sum_col] * sum_src[j][sum_col];
    }
  }
  return sq;
}

// Rows row0 .. row0 + 63 of p against the whole codebook: p.indices (and p.distances when not null) of each.
template <class T, class Rows>
__device__ __forceinline__ void search(const VqNearestParams& p, const Rows& rows, int64_t row0, Smem& s) {
  const int tid = threadIdx.x, ty = tid / kSide, tx = tid % kSide;
  const bool sums = tid < kCodes + kRows;

  float best_d[4];
  int best_k[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) best_d[i] = INFINITY, best_k[i] = INT32_MAX;

  for (int64_t k0 = 0; k0 < p.k; k0 += kCodes) {
    float acc[4][4] = {};
    if (p.cosine) {
      const float sq = sweep<false, T>(p, rows, row0, k0, nullptr, s, acc);
      if (sums) s.norm_s[tid] = fmaxf(sqrtf(sq), 1e-12f);
      __syncthreads();
    }
    const float sq = sweep<true, T>(p, rows, row0, k0, p.cosine ? s.norm_s : nullptr, s, acc);
    if (sums) s.sq_s[tid] = sq;
    __syncthreads();
    // Codes in ascending order per thread, so the strict order keeps the lowest index on ties.
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float xn = s.sq_s[kCodes + 4 * ty + r];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int code = 4 * tx + c;
        const float dist = (xn + s.sq_s[code]) - 2.f * acc[r][c];
        if (k0 + code < p.k && better(dist, int(k0) + code, best_d[r], best_k[r]))
          best_d[r] = dist, best_k[r] = int(k0) + code;
      }
    }
    __syncthreads();  // sq_s and norm_s are rewritten by the next tile
  }

  // The 16 threads of a row group are 16 lanes of one warp: butterfly to the row's winner.
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int off = kSide / 2; off > 0; off /= 2) {
      const float od = __shfl_xor_sync(0xffffffffu, best_d[r], off);
      const int ok = __shfl_xor_sync(0xffffffffu, best_k[r], off);
      if (better(od, ok, best_d[r], best_k[r])) best_d[r] = od, best_k[r] = ok;
    }
    const int64_t row = row0 + 4 * ty + r;
    if (tx == 0 && row < p.n) {
      p.indices[row] = best_k[r];
      if (p.distances) p.distances[row] = best_d[r];
    }
  }
}

}  // namespace fastar::kernels::vq_tile
