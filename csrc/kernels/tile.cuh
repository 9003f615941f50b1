// Warp-level tiles for any kernel family: the warp GEMM whose accumulator is always the m16n8 C fragment of
// mma.sync (lane l holds rows l/4 and l/4 + 8, columns 2(l%4) and 2(l%4)+1 of every 8-column block): tensor
// cores compute it for 16-bit types, FMAs from shared memory for float32, so a kernel writes one epilogue for
// all dtypes; fragment loads (ldmatrix), C-to-A fragment reuse, quad reductions, and block-wide tile copies into
// shared memory with the block size a template parameter.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/common.cuh"

namespace fastar::kernels::tile {

template <class T>
constexpr bool kF32 = std::is_same<T, float>::value;  // the FMA path: no A operand in registers

// Row stride of a shared tile with C columns: 16 bytes of padding put the 8 rows an ldmatrix reads (and the 8
// rows a float32 quad reads) in distinct banks.
template <class T, int C>
constexpr int kStride = C + 16 / int(sizeof(T));

// tile[r][:] = row(r0 + r)[0, D) for r < R, zeros past row `rows` (R x D elements, row stride kStride<T, D>): row(i)
// is the address of source row i, 16-byte aligned, so rows may be gathered from anywhere (HiT's blocks of an
// image). kBlock threads (tid < kBlock) share the copy; each thread moves 16 bytes at a time.
// `cols` (a multiple of 16 bytes, <= D): columns past it are zeros too.
// kAsync: by cp.async, zeros included; the caller commits the group, and the tile may be read after its
// cp_async_wait and a __syncthreads.
template <class T, int R, int D, int kBlock, bool kAsync = false, class Row>
__device__ __forceinline__ void load_rows(T* tile, Row row, int r0, int rows, int tid, int cols = D) {
  constexpr int kVec = 16 / sizeof(T), kPerRow = D / kVec;
  for (int e = tid; e < R * kPerRow; e += kBlock) {
    const int r = e / kPerRow, c = e % kPerRow * kVec;
    const bool in = r0 + r < rows && c < cols;
    if constexpr (kAsync) {
      cp_async_16(tile + r * kStride<T, D> + c, in ? row(r0 + r) + c : row(r0), in);  // row r0 exists: not read
    } else {
      uint4 v = make_uint4(0, 0, 0, 0);
      if (in) v = load_vector<uint4>(row(r0 + r) + c);
      store_vector(tile + r * kStride<T, D> + c, v);
    }
  }
}

// load_rows of rows `ld` elements apart from src.
template <class T, int R, int D, int kBlock, bool kAsync = false>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t ld, int r0, int rows, int tid) {
  load_rows<T, R, D, kBlock, kAsync>(tile, [&](int i) { return src + i * ld; }, r0, rows, tid);
}

// Whether rows `ld` elements apart from src, `cols` elements each, are 16-byte vectors: src aligned and both
// counts multiples of 16 bytes (a KV cache of head dim 40, 72, 80 or 96 at an aligned offset is).
template <class T>
__device__ __forceinline__ bool vector_rows(const T* src, int64_t ld, int cols) {
  constexpr int kVec = 16 / sizeof(T);
  return reinterpret_cast<uintptr_t>(src) % 16 == 0 && ld % kVec == 0 && cols % kVec == 0;
}

// load_tile of the first `cols` <= D columns of rows of any alignment, zeros past them: 16-byte loads where
// vector_rows, else one element at a time (a KV cache read in place whatever its head dim and storage offset).
// kAsync: the 16-byte loads by cp.async (as load_rows); element loads store at once.
template <class T, int R, int D, int kBlock, bool kAsync = false>
__device__ __forceinline__ void load_tile_cols(T* tile, const T* src, int64_t ld, int r0, int rows, int cols,
                                               int tid) {
  if (vector_rows(src, ld, cols)) {  // uniform over the block
    load_rows<T, R, D, kBlock, kAsync>(tile, [&](int i) { return src + i * ld; }, r0, rows, tid, cols);
    return;
  }
  for (int e = tid; e < R * D; e += kBlock) {
    const int r = e / D, c = e % D;
    tile[r * kStride<T, D> + c] = r0 + r < rows && c < cols ? src[(r0 + r) * ld + c] : from_float<T>(0.f);
  }
}

template <class T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t* b) {
  if constexpr (std::is_same<T, __half>::value) mma_m16n8k16_f16(d, a, b, d);
  else mma_m16n8k16_bf16(d, a, b, d);
}

// 16-bit operands through ldmatrix (transposed where the operand's contiguous dim is not k): lanes 8j..8j+7
// address the rows of 8x8 matrix j, at offsets (lo, hi) along the operand's (stored rows, stored columns) that
// make the registers come out in mma fragment order.
struct LdsmLane {
  int r, lo, hi;
  __device__ __forceinline__ explicit LdsmLane(int lane) : r(lane % 8), lo(8 * (lane / 8 & 1)), hi(8 * (lane / 16)) {}
};

// af <- the A fragment of columns [k0, k0 + 16) of A (16 x K): A(m, k) = a[m * lda + k], or a[k * lda + m] when
// kATrans.
template <bool kATrans, class T>
__device__ __forceinline__ void load_a_frag(uint32_t (&af)[4], const T* a, int lda, int k0, LdsmLane l) {
  if constexpr (kATrans) ldmatrix_x4_trans(af, a + (k0 + l.hi + l.r) * lda + l.lo);
  else ldmatrix_x4(af, a + (l.lo + l.r) * lda + k0 + l.hi);
}

// af[m] <- the A fragments of rows [16m, 16m + 16) of A (16 MT x 16 KC), A(m, k) = a[m * lda + k]: the operand of
// warp_gemm_a_frags.
template <int MT, int KC, class T>
__device__ __forceinline__ void load_a_frags(uint32_t (&af)[MT][KC][4], const T* a, int lda, int lane) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) load_a_frag<false>(af[m][kc], a + 16 * m * lda, lda, 16 * kc, LdsmLane(lane));
}

// bf <- the B fragments of column blocks nt and nt + 1 (bf, bf + 2) for rows [k0, k0 + 16) of B: B(k, n) =
// b[n * ldb + k], or b[k * ldb + n] when kBTrans.
template <bool kBTrans, class T>
__device__ __forceinline__ void load_b_frags(uint32_t (&bf)[4], const T* b, int ldb, int k0, int nt, LdsmLane l) {
  if constexpr (kBTrans) ldmatrix_x4_trans(bf, b + (k0 + l.lo + l.r) * ldb + 8 * nt + l.hi);
  else ldmatrix_x4(bf, b + (8 * nt + l.hi + l.r) * ldb + k0 + l.lo);
}

// acc (16 x 8*NT) += A[:, k0:k0+16] (fragment af) B[k0:k0+16, :] (B as in load_b_frags).
template <class T, int NT, bool kBTrans>
__device__ __forceinline__ void mma_k16(float (&acc)[NT][4], const uint32_t (&af)[4], const T* b, int ldb, int k0,
                                        LdsmLane l) {
  static_assert(NT % 2 == 0, "ldmatrix.x4 loads two 8-column blocks of B");
#pragma unroll
  for (int nt = 0; nt < NT; nt += 2) {
    uint32_t bf[4];
    load_b_frags<kBTrans>(bf, b, ldb, k0, nt, l);
    mma<T>(acc[nt], af, bf);
    mma<T>(acc[nt + 1], af, bf + 2);
  }
}

// acc[m] (16 x 8*NT) += A_m (16 x K) B (K x 8*NT) for MT row tiles A_m of 16-bit types, each already in registers
// as K/16 fragments: each B fragment loaded by ldmatrix feeds the mma of all MT tiles (FlashAttention-2's 32 or
// more rows per warp: MT times fewer shared-memory reads of B per product).
template <class T, int MT, int NT, int K, bool kBTrans>
__device__ __forceinline__ void warp_gemm_a_frags(float (&acc)[MT][NT][4], const uint32_t (&af)[MT][K / 16][4],
                                                  const T* b, int ldb, int lane) {
  static_assert(NT % 2 == 0, "ldmatrix.x4 loads two 8-column blocks of B");
  const LdsmLane l(lane);
#pragma unroll
  for (int kc = 0; kc < K / 16; ++kc)
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t bf[4];
      load_b_frags<kBTrans>(bf, b, ldb, 16 * kc, nt, l);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma<T>(acc[m][nt], af[m][kc], bf);
        mma<T>(acc[m][nt + 1], af[m][kc], bf + 2);
      }
    }
}

// The same for one row tile: acc (16 x 8*NT) += A (16 x K) B (K x 8*NT).
template <class T, int NT, int K, bool kBTrans>
__device__ __forceinline__ void warp_gemm_a_frags(float (&acc)[NT][4], const uint32_t (&af)[K / 16][4], const T* b,
                                                  int ldb, int lane) {
  warp_gemm_a_frags<T, 1, NT, K, kBTrans>(reinterpret_cast<float(&)[1][NT][4]>(acc),
                                          reinterpret_cast<const uint32_t(&)[1][K / 16][4]>(af), b, ldb, lane);
}

// acc (16 x 8*NT) += A (16 x K) B (K x 8*NT), both operands in shared memory, one warp:
//   A(m, k) = a[m * lda + k], or a[k * lda + m] when kATrans;
//   B(k, n) = b[n * ldb + k], or b[k * ldb + n] when kBTrans.
// 16-bit types: ldmatrix feeding mma.m16n8k16. float32: each lane sums its own fragment elements with FMAs, into
// a fresh partial per call that is then added to acc (two-level summation: dK and dV gather thousands of terms at
// L = 2240, the error of one running sum grows with their number); 4 column blocks at a time, so the partial
// costs 16 registers.
template <class T, int NT, int K, bool kATrans, bool kBTrans>
__device__ __forceinline__ void warp_gemm(float (&acc)[NT][4], const T* a, int lda, const T* b, int ldb, int lane) {
  if constexpr (std::is_same<T, float>::value) {
    constexpr int kGroup = NT < 4 ? NT : 4;
    static_assert(NT % kGroup == 0, "column blocks come in groups of 4");
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int n0 = 0; n0 < NT; n0 += kGroup) {
      float part[kGroup][4] = {};
#pragma unroll 4
      for (int k = 0; k < K; ++k) {
        const float a0 = kATrans ? a[k * lda + g] : a[g * lda + k];
        const float a1 = kATrans ? a[k * lda + g + 8] : a[(g + 8) * lda + k];
#pragma unroll
        for (int nt = 0; nt < kGroup; ++nt) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int n = 8 * (n0 + nt) + 2 * t + c;
            const float bv = kBTrans ? b[k * ldb + n] : b[n * ldb + k];
            part[nt][c] += a0 * bv;
            part[nt][2 + c] += a1 * bv;
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < kGroup; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[n0 + nt][i] += part[nt][i];
    }
  } else {
    static_assert(K % 16 == 0, "mma.m16n8k16 steps 16 along k");
    const LdsmLane l(lane);
#pragma unroll
    for (int k0 = 0; k0 < K; k0 += 16) {
      uint32_t af[4];
      load_a_frag<kATrans>(af, a, lda, k0, l);
      mma_k16<T, NT, kBTrans>(acc, af, b, ldb, k0, l);
    }
  }
}

// Two floats as one packed register of 16-bit T, lo in the low half (the mma fragment order).
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T pair[2] = {from_float<T>(lo), from_float<T>(hi)};
  uint32_t r;
  memcpy(&r, pair, sizeof r);
  return r;
}

// Element i (0: the low half) of a pack2 register, as a float.
template <class T>
__device__ __forceinline__ float unpack(uint32_t r, int i) {
  T pair[2];
  memcpy(static_cast<void*>(pair), &r, sizeof r);
  return to_float(pair[i]);
}

// Hides how the registers of af were computed from the optimizer, so that it keeps them for a later unpack rather
// than the twice as many floats they were packed from (ptxas otherwise rounds those again, and spills).
template <int N>
__device__ __forceinline__ void keep_packed(uint32_t (&af)[N][4]) {
#ifdef __CUDA_ARCH__
#pragma unroll
  for (int k = 0; k < N; ++k)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(af[k][i]));
#else
  (void)af;  // the emulator has no register allocation to steer
#endif
}

// The C fragments of a 16 x 8*NT result, rounded to T, as the A fragments of the same 16 x 8*NT matrix:
// columns 16c..16c+15 are column blocks 2c and 2c+1 (FlashAttention-2's register reuse of P).
template <class T, int NT>
__device__ __forceinline__ void c_to_a_frags(uint32_t (&af)[NT / 2][4], const float (&c)[NT][4]) {
#pragma unroll
  for (int k = 0; k < NT / 2; ++k)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float* pair = &c[2 * k + i / 2][2 * (i % 2)];  // rows g (i even) or g + 8, columns 2t, 2t + 1
      af[k][i] = pack2<T>(pair[0], pair[1]);
    }
}

// Max and sum over the 4 lanes of a quad (the lanes holding one fragment row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace fastar::kernels::tile
