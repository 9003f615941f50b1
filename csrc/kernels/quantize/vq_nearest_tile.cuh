// The nearest-code search of one block of 64 query rows against a run of whole code tiles (the codebook or one
// slice of it), shared by vq_nearest (rows read from x) and msq_down_search (rows area-downsampled into shared
// memory first): a blocked rows . codebook^T product whose epilogue keeps, per row, the running (distance, index)
// minimum in registers, so the N x K distances never reach memory. Codes in tiles of 64; 16 x 16 threads, each
// owning 4 rows x 4 codes of every tile; codes are staged through shared memory 8 elements of D at a time. Where
// the rows come from is a policy: SharedRows (staged once per block with their norms, D <= kMaxSharedD) or
// GlobalRows (longer rows, re-staged with the codes and their norms recomputed per tile).
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
constexpr int kMaxSharedD = 160;    // longest rows staged whole: 43,520 B of dynamic shared memory, under 48 KB
static_assert(kRows == kCodes && kRows == 4 * kSide && kSide * kSide == kThreads, "one staging shape for both");

using Tile = float (*)[kStride];  // (kDepth, kStride): kDepth elements of D of 64 rows or codes, transposed

struct Smem {
  __align__(16) float xs[kDepth][kStride];  // rows, transposed (GlobalRows stages here)
  __align__(16) float es[kDepth][kStride];  // codes of the tile, transposed
  float norm_s[kCodes + kRows];             // cosine: max(||v||, 1e-12) of the codes, then rows
  float sq_s[kCodes + kRows];               // ||v||^2 as compared (after normalization)
};

// Bytes of dynamic shared memory that SharedRows of length d take.
inline size_t shared_rows_bytes(int d) { return size_t((d + kDepth - 1) / kDepth * kDepth) * kStride * sizeof(float); }

// Where a block's per-row winners go: the final (index, distance) or a slice's candidate (code, distance).
struct Winners {
  int64_t* indices;  // (n,) the final index, or null
  int* codes;        // (n,) a slice's candidate, or null
  float* distances;  // (n,) or null
  __device__ __forceinline__ void put(int64_t row, float d, int k) const {
    if (indices) indices[row] = k;
    if (codes) codes[row] = k;
    if (distances) distances[row] = d;
  }
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
  static constexpr bool kShared = false;
  const T* x;
  __device__ __forceinline__ Tile tile(const VqNearestParams& p, int64_t row0, int d0, const float* divisor,
                                       Tile xs) const {
    stage(xs, x, row0, p.n, p.d, d0, divisor);
    return xs;
  }
};

// Rows already in shared memory as (ceil(d / kDepth) kDepth, kStride), transposed and zero past the rows and d;
// search() takes their norms once (and divides them in place for cosine).
struct SharedRows {
  static constexpr bool kShared = true;
  Tile rows;
  __device__ __forceinline__ Tile tile(const VqNearestParams&, int64_t, int d0, const float*, Tile) const {
    return rows + d0;
  }
};

// Threads that sum squares in a sweep: one per code (0..63), then, for rows re-staged per tile, one per row.
template <class Rows>
constexpr int kSummed = Rows::kShared ? kCodes : kCodes + kRows;

// One sweep over D for the block's rows and the tile's codes (divided by norm_s when not null): adds
// x . e^T to acc when kProduct, and returns the sum of squares of the staged values of one code
// (threads 0..63) or, for GlobalRows, one row (threads 64..127).
template <bool kProduct, class T, class Rows>
__device__ __forceinline__ float sweep(const VqNearestParams& p, const Rows& rows, int64_t row0, int64_t k0,
                                       const float* norm_s, Smem& s, float (&acc)[4][4]) {
  const int tid = threadIdx.x, ty = tid / kSide, tx = tid % kSide;
  const bool sums = tid < kSummed<Rows>;
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

// Thread tid < 64 sums the squares of shared row tid over D, in the order sweep() would.
__device__ __forceinline__ float row_sq(const SharedRows& rows, int depth) {
  float sq = 0.f;
  for (int j = 0; j < depth; ++j) sq += rows.rows[j][threadIdx.x] * rows.rows[j][threadIdx.x];
  return sq;
}

// SharedRows, once per block: sq_s[kCodes + r] = ||row r||^2 as compared, after dividing the rows in place by
// norm_s[kCodes + r] = max(||row r||, 1e-12) for cosine (the arithmetic GlobalRows repeats per tile).
__device__ __forceinline__ void shared_row_norms(const VqNearestParams& p, const SharedRows& rows, Smem& s) {
  const int tid = threadIdx.x, depth = (p.d + kDepth - 1) / kDepth * kDepth;
  if (p.cosine) {
    if (tid < kRows) s.norm_s[kCodes + tid] = fmaxf(sqrtf(row_sq(rows, depth)), 1e-12f);
    __syncthreads();
    for (int e = tid; e < depth * kRows; e += kThreads) rows.rows[e / kRows][e % kRows] /= s.norm_s[kCodes + e % kRows];
    __syncthreads();
  }
  if (tid < kRows) s.sq_s[kCodes + tid] = row_sq(rows, depth);
}

// Rows row0 .. row0 + 63 of p against codes [k_begin, k_end) (whole 64-code tiles but the codebook's last):
// the (distance, index) winner of each row, lowest index on ties, to `out`.
template <class T, class Rows>
__device__ __forceinline__ void search(const VqNearestParams& p, const Rows& rows, int64_t row0, int64_t k_begin,
                                       int64_t k_end, const Winners& out, Smem& s) {
  const int tid = threadIdx.x, ty = tid / kSide, tx = tid % kSide;
  const bool sums = tid < kSummed<Rows>;
  if constexpr (Rows::kShared) shared_row_norms(p, rows, s);  // the first tile's barrier orders it before use

  float best_d[4];
  int best_k[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) best_d[i] = INFINITY, best_k[i] = INT32_MAX;

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kCodes) {
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
        if (k0 + code < k_end && better(dist, int(k0) + code, best_d[r], best_k[r]))
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
    if (tx == 0 && row < p.n) out.put(row, best_d[r], best_k[r]);
  }
}

}  // namespace fastar::kernels::vq_tile
