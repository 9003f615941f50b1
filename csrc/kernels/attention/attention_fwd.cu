// Attention forward (FlashAttention-2): a block owns kTileQ queries of one head (128 for 16-bit types up to D 64,
// else 64), each of its 4 warps a quarter of them, and walks the key tiles the mask shows, never holding more
// than one tile of scores:
//   S = Q K_j^T,  m' = max(m, rowmax S),  P = exp(scale (S - m')),  l' = l e^{scale (m - m')} + rowsum P,
//   O' = O e^{scale (m - m')} + P V_j;   at the end out = O / l, lse = scale m + log l.
// Skipped tiles (all hidden) read no k/v; full tiles skip the per-element mask. Operands whose rows are not all
// 16-byte vectors of D elements (a KV cache of head dim 40 or at an odd offset, read in place by decode) take the
// kAnyRows variant: D_in <= D columns, zeros past them (no dot product changes, output columns past D_in are zero),
// 16-byte loads where a head's rows allow them, else element loads; the vector variant keeps its registers.
// K and V tiles come by cp.async into a second buffer while the current tile is computed (kStages). When (batch x heads x query
// tiles) cannot fill the GPU (decode, small batches) the key tiles are split over gridDim.z and a second
// kernel merges the partial (out, lse) pairs: out = sum_s e^{lse_s - lse} out_s, lse = log sum_s e^{lse_s}.
#include "kernels/attention/flash_tile.cuh"

namespace fastar::kernels {
namespace {

using namespace attn;

constexpr int kMaxSplits = 16;

template <int D>
constexpr int kTileK = D == 128 ? 32 : 64;  // keys per tile: bounds the score fragments beside a 128-wide O

// 16-row tiles of queries per warp: two for 16-bit types up to D 64 on 16-byte vector rows (FlashAttention-2's
// 128-query blocks: each K and V fragment that ldmatrix reads from shared memory feeds the mma of both tiles, so a
// block reads half the shared memory per product, and loads each K/V tile for twice the queries; 253 registers on
// sm_90, no spill); else one: float32 (its FMA path reads both operands from shared memory), D 128 (O, Q and the
// scores of two tiles would pass the 255 registers) and the kAnyRows variant (it spilled on sm_80).
template <class T, int D, bool kAnyRows>
constexpr int kRowTiles = !kF32<T> && D <= 64 && !kAnyRows ? 2 : 1;
template <class T, int D, bool kAnyRows>
constexpr int kTileQ = 16 * kWarps * kRowTiles<T, D, kAnyRows>;  // queries per block

// Every row of q, k, v a 16-byte vector of D elements (base and strides aligned, D_in == D): the kernel's
// plain variant; else kAnyRows.
bool vector_operands(const AttentionParams& p) {
  const int64_t bytes = p.dtype == Dtype::f32 ? 4 : 2;
  const auto aligned = [&](const void* base, const int64_t(&strides)[3]) {
    return reinterpret_cast<uintptr_t>(base) % 16 == 0 && strides[0] * bytes % 16 == 0 &&
           strides[1] * bytes % 16 == 0 && strides[2] * bytes % 16 == 0;
  };
  return p.D_in == p.D && aligned(p.q, p.q_strides) && aligned(p.k, p.k_strides) && aligned(p.v, p.v_strides);
}

struct Plan {
  bool vector;  // vector_operands: the kernel's plain variant, else kAnyRows
  int tile_q, n_qt, n_kt, splits, kt_per_split;
  size_t accum_offset, lse_offset, bytes;  // workspace: tile flags, then split partials (splits > 1)
};

Plan plan(const AttentionParams& p) {
  Plan s{};
  int tile_k = 64;  // an unsupported (dtype, D) is refused by the launcher
  s.vector = vector_operands(p), s.tile_q = 64;
  dispatch(p.dtype, p.D, [&](auto spec) {
    using T = typename decltype(spec)::Elem;
    constexpr int D = decltype(spec)::kDim;
    s.tile_q = s.vector ? kTileQ<T, D, false> : kTileQ<T, D, true>, tile_k = kTileK<D>;
    return cudaSuccess;
  });
  s.n_qt = cdiv(p.Lq, s.tile_q), s.n_kt = cdiv(p.Lk, tile_k);
  const int64_t blocks = int64_t(p.B) * p.H * s.n_qt;
  const int fill_blocks = 2 * p.sm_count;  // two waves: below this, split the keys
  s.splits = 1;
  if (blocks > 0 && blocks < fill_blocks)
    s.splits = int(std::min<int64_t>({kMaxSplits, s.n_kt, cdiv(fill_blocks, int(blocks))}));
  s.kt_per_split = std::max(1, cdiv(s.n_kt, std::max(s.splits, 1)));
  s.splits = std::max(1, cdiv(s.n_kt, s.kt_per_split));  // no empty split
  const size_t rows = size_t(p.B) * p.H * p.Lq;
  s.accum_offset = align256(size_t(s.n_qt) * s.n_kt);
  s.lse_offset = s.accum_offset + (s.splits > 1 ? align256(s.splits * rows * p.D * sizeof(float)) : 0);
  s.bytes = s.lse_offset + (s.splits > 1 ? align256(s.splits * rows * sizeof(float)) : 0);
  return s;
}

// R rows of an operand into shared memory: any rows (load_tile_cols) or 16-byte vector rows of D (load_tile);
// kAsync: by cp.async where rows are vectors (see tile.cuh).
template <class T, int R, int D, bool kAnyRows, bool kAsync = false>
__device__ __forceinline__ void load_operand(T* tile, const T* src, int64_t ld, int r0, int rows, int cols, int tid) {
  if constexpr (kAnyRows) load_tile_cols<T, R, D, kThreads, kAsync>(tile, src, ld, r0, rows, cols, tid);
  else load_tile<T, R, D, kThreads, kAsync>(tile, src, ld, r0, rows, tid);
}

// q (kTileQ x D), `stages` x k and v (kTileK x D), p (kTileQ x kTileK) for float32.
template <class T, int D, bool kAnyRows>
constexpr size_t fwd_smem(int stages) {
  constexpr int kQ = kTileQ<T, D, kAnyRows>;
  return sizeof(T) * ((kQ + 2 * stages * kTileK<D>) * kStride<T, D> + (kF32<T> ? kQ * kStride<T, kTileK<D>> : 0));
}

// K/V buffers: two (the next tile loads while this one is computed) where they fit every supported GPU; float32
// at D = 64 (104,448 B) and D = 128 (110,592 B) does not, and keeps one (69,632 B and 76,800 B), loaded after
// the tile's compute. (The vector variant's query tile is the larger: where it fits, kAnyRows' does.)
template <class T, int D>
constexpr int kStages = fwd_smem<T, D, false>(2) <= kSmallestOptinSmem ? 2 : 1;

// Grid (B * H, query tiles, splits). flags: (n_qt, n_kt) tile kinds, or nullptr for the full mask. With one split it writes out (of T) and lse;
// with several, out_accum (splits, B*H*Lq, D) normalized partial outputs and lse_accum (splits, B*H*Lq).
// 16-bit types keep Q and P in registers as mma A fragments (P's C fragment of S is its A fragment for P V);
// float32 reads both from shared memory.
template <class T, int D, bool kAnyRows>
__global__ void __launch_bounds__(kThreads, 1) attention_fwd_kernel(const AttentionParams p, const uint8_t* flags,
                                                                    int kt_per_split, float* out_accum,
                                                                    float* lse_accum) {
  constexpr int kN = kTileK<D>, S = kStride<T, D>, SP = kStride<T, kN>;
  constexpr int MT = kRowTiles<T, D, kAnyRows>, kQ = kTileQ<T, D, kAnyRows>;
  DYNAMIC_SHARED(T, q_s);    // (kQ, S)
  T* kv_s = q_s + kQ * S;    // kStages x (k (kN, S), v (kN, S))
  T* p_s = kv_s + kStages<T, D> * 2 * kN * S;  // (kQ, SP), float32 only: probabilities, the A operand of P V
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int bh = blockIdx.x, qt = blockIdx.y, split = blockIdx.z;
  const int b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const int q0 = qt * kQ, n_kt = cdiv(p.Lk, kN);
  const int64_t rows = int64_t(p.B) * p.H * p.Lq;  // of out_accum and lse_accum
  const float scale_log2 = p.scale * kLog2e;
  const int w0 = warp * 16 * MT;       // this warp's first query row: it owns 16 MT of them
  const T* q_w = q_s + w0 * S;
  T* p_w = p_s + w0 * SP;              // and of P (float32)

  const T* k = head_base<T>(p.k, p.k_strides, b, hk);
  const T* v = head_base<T>(p.v, p.v_strides, b, hk);
  const int kt_end = min(n_kt, (split + 1) * kt_per_split);
  const auto kind_of = [&](int kt) {  // uniform over the block
    const uint8_t flag = flags ? flags[qt * n_kt + kt] : full_mask_tile(kt * kN, kN, p.Lk);
    return tile_with_key_len(flag, p.mask, b, kt * kN, kt * kN + kN);
  };
  const auto next_shown = [&](int kt) {  // skipped tiles (all hidden) are never loaded
    while (kt < kt_end && kind_of(kt) == kTileSkip) ++kt;
    return kt;
  };
  const auto load_kv = [&](int kt, int stage) {  // one cp.async group
    T* k_dst = kv_s + stage * 2 * kN * S;
    load_operand<T, kN, D, kAnyRows, true>(k_dst, k, p.k_strides[2], kt * kN, p.Lk, p.D_in, tid);
    load_operand<T, kN, D, kAnyRows, true>(k_dst + kN * S, v, p.v_strides[2], kt * kN, p.Lk, p.D_in, tid);
    cp_async_commit();
  };

  load_operand<T, kQ, D, kAnyRows, true>(q_s, head_base<T>(p.q, p.q_strides, b, h), p.q_strides[2], q0, p.Lq,
                                             p.D_in, tid);
  cp_async_commit();
  int kt = next_shown(split * kt_per_split);
  if (kt < kt_end) load_kv(kt, 0);
  else cp_async_commit();  // an empty group: the wait below counts on one after Q's
  uint32_t qf[MT][kF32<T> ? 1 : D / 16][4];  // 16-bit: the warp's Q rows as A fragments, per row tile
  if constexpr (!kF32<T>) {
    cp_async_wait<1>();  // Q landed, the first K/V tile may be in flight
    __syncthreads();
    load_a_frags(qf, q_w, S, lane);
  }

  float o[MT][D / 8][4] = {};
  float m[MT][2], l[MT][2] = {};  // rows g and g + 8 of each row tile: raw-score max, sum
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY;
  for (int stage = 0; kt < kt_end; stage ^= kStages<T, D> - 1) {
    cp_async_wait<0>();
    __syncthreads();  // tile kt is in `stage` for every thread (and q_s too); the reads of the other stage are done
    const int k0 = kt * kN, next = next_shown(kt + 1);
    const uint8_t kind = kind_of(kt);
    if (kStages<T, D> == 2 && next < kt_end) load_kv(next, stage ^ 1);  // lands while tile kt is computed
    const T* k_s = kv_s + stage * 2 * kN * S;
    const T* v_s = k_s + kN * S;

    float s[MT][kN / 8][4] = {};  // scores, then probabilities
    if constexpr (kF32<T>) warp_gemm<T, kN / 8, D, false, false>(s[0], q_w, S, k_s, S, lane);
    else warp_gemm_a_frags<T, MT, kN / 8, D, false>(s, qf, k_s, S, lane);
    if (kind == kTilePartial) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int q = q0 + w0 + 16 * mt + g + 8 * (i >> 1), key = k0 + 8 * nt + 2 * t + (i & 1);
            if (q >= p.Lq || key >= p.Lk || !visible(p.mask, b, q, key, p.Lq, p.Lk)) s[mt][nt][i] = -INFINITY;
          }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = m[mt][r];
#pragma unroll
        for (int nt = 0; nt < kN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
        mx = quad_max(mx);
        const float base = mx == -INFINITY ? 0.f : mx * scale_log2;  // a row with nothing visible yet stays 0
        const float alpha = exp2f(m[mt][r] * scale_log2 - base);
        m[mt][r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            float& pr = s[mt][nt][2 * r + c];
            pr = exp2f(pr * scale_log2 - base);
            sum += pr;
          }
        l[mt][r] = l[mt][r] * alpha + sum;  // per-lane partial sums; the quad is summed once at the end
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) o[mt][dt][2 * r] *= alpha, o[mt][dt][2 * r + 1] *= alpha;
      }
    if constexpr (kF32<T>) {
#pragma unroll
      for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) p_w[(g + 8 * (i >> 1)) * SP + 8 * nt + 2 * t + (i & 1)] = s[0][nt][i];
      __syncwarp();  // P rows are read across the warp's lanes
      warp_gemm<T, D / 8, kN, false, true>(o[0], p_w, SP, v_s, S, lane);
      __syncwarp();  // before the next tile overwrites P
    } else {
      uint32_t pf[MT][kN / 16][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) c_to_a_frags<T>(pf[mt], s[mt]);
      warp_gemm_a_frags<T, MT, D / 8, kN, true>(o, pf, v_s, S, lane);
    }
    if (kStages<T, D> == 1 && next < kt_end) {  // one buffer: refilled once every warp is done with it
      __syncthreads();
      load_kv(next, 0);
    }
    kt = next;
  }
  cp_async_wait<0>();  // Q, when no key tile was shown

  const bool split_out = gridDim.z > 1;
#pragma unroll
  for (int mr = 0; mr < 2 * MT; ++mr) {
    const int mt = mr / 2, r = mr % 2;
    const float sum = quad_sum(l[mt][r]);  // 0: the row saw no key (out 0, lse -inf); NaN stays NaN
    const float inv = sum == 0.f ? 0.f : 1.f / sum;
    const int q = q0 + w0 + 16 * mt + g + 8 * r;
    if (q >= p.Lq) continue;
    const int64_t row = int64_t(bh) * p.Lq + q;
    const float lse = sum == 0.f ? -INFINITY : m[mt][r] * p.scale + logf(sum);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {  // columns 2t, 2t + 1 of each 8: one packed store per pair
      const int64_t at = row * D + 8 * dt + 2 * t;
      const float v0 = o[mt][dt][2 * r] * inv, v1 = o[mt][dt][2 * r + 1] * inv;
      if (split_out) store_vector(out_accum + split * rows * D + at, make_float2(v0, v1));
      else if constexpr (kF32<T>) store_vector(static_cast<float*>(p.out) + at, make_float2(v0, v1));
      else store_vector(static_cast<T*>(p.out) + at, pack2<T>(v0, v1));
    }
    if (t == 0) (split_out ? lse_accum[split * rows + row] : p.lse[row]) = lse;
  }
}

// One warp per row of (B*H*Lq): merges the `splits` partial outputs (splits, rows, D) and lse (splits, rows).
template <class T, int D>
__global__ void __launch_bounds__(kThreads) attention_combine_kernel(const AttentionParams p, int splits,
                                                                     const float* out_accum,
                                                                     const float* lse_accum) {
  const int64_t rows = int64_t(p.B) * p.H * p.Lq, row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float mx = -INFINITY;  // NaN once a split is NaN (fmaxf would drop it)
  for (int s = 0; s < splits; ++s) {
    const float l = lse_accum[s * rows + row];
    mx = l > mx || l != l ? l : mx;
  }
  float sum = 0.f;
  for (int s = 0; s < splits; ++s) sum += mx == -INFINITY ? 0.f : expf(lse_accum[s * rows + row] - mx);
  const float lse = sum == 0.f ? -INFINITY : mx + logf(sum);
  for (int c = 2 * lane; c < D; c += 64) {  // a column pair per lane: one packed store
    float2 acc = make_float2(0.f, 0.f);
    for (int s = 0; s < splits; ++s)
      if (sum != 0.f) {
        const float w = expf(lse_accum[s * rows + row] - lse);
        const float2 part = load_vector<float2>(out_accum + (s * rows + row) * D + c);
        acc.x += w * part.x, acc.y += w * part.y;
      }
    if constexpr (kF32<T>) store_vector(static_cast<float*>(p.out) + row * D + c, acc);
    else store_vector(static_cast<T*>(p.out) + row * D + c, pack2<T>(acc.x, acc.y));
  }
  if (lane == 0) p.lse[row] = lse;
}

}  // namespace

size_t attention_fwd_workspace_bytes(const AttentionParams& p) { return plan(p).bytes; }

cudaError_t attention_fwd_launch(const AttentionParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.H < 0 || p.Hk < 1 || p.H % p.Hk || p.Lq < 0 || p.Lk < 0) return cudaErrorInvalidValue;
  if (int64_t(p.B) * p.H * p.Lq == 0) return cudaSuccess;
  const Plan s = plan(p);
  if (s.n_qt > 65535) return cudaErrorInvalidValue;  // gridDim.y
  auto* ws = static_cast<unsigned char*>(p.workspace);
  auto* flags = p.mask.kind == kFull ? nullptr : ws;  // the full mask's tile kinds need no kernel
  auto* out_accum = reinterpret_cast<float*>(ws + s.accum_offset);
  auto* lse_accum = reinterpret_cast<float*>(ws + s.lse_offset);
  return dispatch(p.dtype, p.D, [&](auto spec) {
    using T = typename decltype(spec)::Elem;
    constexpr int D = decltype(spec)::kDim;
    if (flags)
      if (cudaError_t e = attention_tile_flags_launch(p.mask, p.Lq, p.Lk, s.tile_q, kTileK<D>, flags, stream))
        return e;
    const dim3 grid(p.B * p.H, s.n_qt, s.splits);
    const auto kernel = s.vector ? attention_fwd_kernel<T, D, false> : attention_fwd_kernel<T, D, true>;
    const size_t smem = s.vector ? fwd_smem<T, D, false>(kStages<T, D>) : fwd_smem<T, D, true>(kStages<T, D>);
    if (cudaError_t e = launch_with_smem(kernel, grid, kThreads, smem, stream, p,
                                         static_cast<const uint8_t*>(flags), s.kt_per_split, out_accum, lse_accum))
      return e;
    if (s.splits == 1) return cudaSuccess;
    const dim3 rows(unsigned(cdiv(int(int64_t(p.B) * p.H * p.Lq), kWarps)));
    LAUNCH((attention_combine_kernel<T, D>), rows, kThreads, 0, stream)(p, s.splits, out_accum, lse_accum);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
