// Attention backward (FlashAttention-2). With P = exp(scale Q K^T - lse) recomputed from the forward's lse and
// delta = rowsum(dO * O) (a pre-pass):
//   dV = P^T dO,  dP = dO V^T,  dS = scale P * (dP - delta),  dK = dS^T Q,  dQ = dS K.
// A block owns tile_k keys of one query head (128 for 16-bit types up to D 64, else 64: 32 or 16 per warp, as rows
// of S^T = K Q^T, so dK and dV stay in registers) and walks the query tiles the mask shows, loading the next one by
// cp.async while the current one is computed (two stages where shared memory allows, else one refilled during dQ);
// dQ is added to an fp32 buffer with atomics (one add per element per key block, in the order blocks run: dQ is not
// bit-reproducible on a GPU, and its last bits differ between the emulator's schedules where three blocks or more
// add to it) and converted to the output type at the end.
#include <string>

#include "kernels/attention/flash_tile.cuh"

namespace fastar::kernels {
namespace {

using namespace attn;

// 16-row tiles of keys (rows of S^T) per warp: two for 16-bit types up to D 64 (FlashAttention-2's 128-key blocks,
// as the forward's kRowTiles: each Q and dO fragment that ldmatrix reads from shared memory feeds the mma of both
// tiles, and dQ takes one atomic add per element per 128 keys); else one: float32 (its FMA path reads both operands
// from shared memory) and D 128 (dK and dV alone take 128 registers).
FASTAR_HOST_DEVICE constexpr int row_tiles(bool f32, int D) { return !f32 && D <= 64 ? 2 : 1; }
FASTAR_HOST_DEVICE constexpr int tile_k(bool f32, int D) { return 16 * kWarps * row_tiles(f32, D); }  // keys per block
// Queries per step (float32 may take half, choose_tile): bounds S^T and dP^T beside dK and dV in registers (with two
// key tiles per warp at D 64 the four take 192 per thread at 32 queries).
constexpr int full_tile_q(bool f32, int D) { return row_tiles(f32, D) == 2 || D == 128 ? 32 : 64; }

// Dynamic shared memory of a block with kM queries per step and `stages` buffers of the query-side operands: k, v
// (tile_k x D); stages x (q, dO (kM x D), lse, delta (kM)); dS^T and for float32 P^T (tile_k x kM).
size_t bwd_smem(size_t elem, bool f32, int D, int kM, int stages) {
  const auto stride = [elem](int c) { return size_t(c) + 16 / elem; };  // kStride
  const int kN = tile_k(f32, D);
  return elem * (2 * (kN + stages * kM) * stride(D) + (f32 ? 2 : 1) * kN * stride(kM)) +
         2 * stages * kM * sizeof(float);
}

// The smallest tile the launcher has: float32 has a half tile too, since its full one (104,960 B at D = 64,
// 120,064 B at D = 128, one stage) does not fit the 101,376 B of sm_86 / sm_89 / sm_120; 16-bit types fit
// everywhere with two stages (75,264 B at D = 128).
int min_tile_q(const AttentionBwdParams& p) {
  const bool f32 = p.dtype == Dtype::f32;
  return f32 ? full_tile_q(f32, p.D) / 2 : full_tile_q(f32, p.D);
}
size_t smem_bytes(const AttentionBwdParams& p, int kM, int stages) {
  return bwd_smem(p.dtype == Dtype::f32 ? 4 : 2, p.dtype == Dtype::f32, p.D, kM, stages);
}

struct Plan {
  int tile_q, stages, n_qt, n_kt;
  size_t delta_offset, dq_offset, bytes;  // workspace: tile flags, delta (B*H*Lq), dq_accum (B*H*Lq, D) fp32
};

// Queries per step and stages: the largest tile whose shared memory fits the device's opt-in limit, with two
// stages if they fit too (at 101,376 B float32 runs D = 32 and 64 at 64 and 32 queries with two stages, D = 128
// at 16 with one: 111,872 B for two); tile_q 0 if none does.
void choose_tile(const AttentionBwdParams& p, Plan& s) {
  s.tile_q = s.stages = 0;
  for (int kM = full_tile_q(p.dtype == Dtype::f32, p.D); kM >= min_tile_q(p) && !s.tile_q; kM /= 2)
    for (int stages = 2; stages >= 1 && !s.tile_q; --stages)
      if (smem_bytes(p, kM, stages) <= size_t(p.max_smem)) s.tile_q = kM, s.stages = stages;
}

Plan plan(const AttentionBwdParams& p) {
  Plan s{};
  choose_tile(p, s);
  s.n_qt = cdiv(p.Lq, std::max(s.tile_q, 1)), s.n_kt = cdiv(p.Lk, tile_k(p.dtype == Dtype::f32, p.D));
  const size_t rows = size_t(p.B) * p.H * p.Lq;
  s.delta_offset = align256(size_t(s.n_qt) * s.n_kt);
  s.dq_offset = s.delta_offset + align256(rows * sizeof(float));
  s.bytes = s.dq_offset + align256(rows * p.D * sizeof(float));
  return s;
}

// One thread per row of (B*H*Lq): delta (delta_row); then the block's threads zero its rows of dq_accum.
template <class T, int D>
__global__ void __launch_bounds__(kThreads) attention_bwd_prep_kernel(const AttentionBwdParams p, float* delta,
                                                                      float* dq_accum) {
  const int64_t rows = int64_t(p.B) * p.H * p.Lq, first = int64_t(blockIdx.x) * kThreads, row = first + threadIdx.x;
  if (row < rows)
    delta[row] = delta_row<T, D>(static_cast<const T*>(p.out) + row * D, static_cast<const T*>(p.dout) + row * D);
  const int64_t n = (rows - first < kThreads ? rows - first : kThreads) * D;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) dq_accum[first * D + i] = 0.f;
}

// Grid (B * H, key tiles). flags: (n_qt, n_kt) tile kinds for (kM, tile_k) tiles, or nullptr for the full mask.
// stages (1 or 2, uniform): buffers of the query-side operands (bwd_smem). 16-bit types feed P^T and dS^T to the dV
// and dK products from registers (their C fragments as A fragments); float32 from shared memory.
template <class T, int D, int kM>
__global__ void __launch_bounds__(kThreads, 1) attention_bwd_kernel(const AttentionBwdParams p, const uint8_t* flags,
                                                                 const float* delta, float* dq_accum, int stages) {
  constexpr int MT = row_tiles(kF32<T>, D), kN = tile_k(kF32<T>, D), S = kStride<T, D>, SM = kStride<T, kM>;
  constexpr int kStage = 2 * kM * S;  // elements of a stage's q and dO
  DYNAMIC_SHARED(T, k_s);        // (kN, S)
  T* v_s = k_s + kN * S;         // (kN, S)
  T* qdo_s = v_s + kN * S;       // stages x (q (kM, S), dO (kM, S))
  T* dst_s = qdo_s + stages * kStage;               // (kN, SM): dS^T, the A operand of dQ for every warp
  T* pt_s = dst_s + kN * SM;                        // (kN, SM), float32 only: P^T
  float* ld_s = reinterpret_cast<float*>(pt_s + (kF32<T> ? kN * SM : 0));  // stages x (lse log2(e), +inf
                                                                            // past Lq; delta), (kM,) each
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int bh = blockIdx.x, kt = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const int k0 = kt * kN, n_qt = cdiv(p.Lq, kM), n_kt = gridDim.y;
  const int w0 = warp * 16 * MT;  // this warp's first key row: it owns 16 MT of them
  const float scale_log2 = p.scale * kLog2e;
  const int64_t row0 = int64_t(bh) * p.Lq;  // first (b, h) row of q, out, lse, delta
  const T* q = static_cast<const T*>(p.q) + row0 * D;
  const T* dout = static_cast<const T*>(p.dout) + row0 * D;
  const auto kind_of = [&](int qt) {  // uniform over the block
    const uint8_t flag = flags ? flags[qt * n_kt + kt] : full_mask_tile(k0, kN, p.Lk);
    return tile_with_key_len(flag, p.mask, b, k0, k0 + kN);
  };
  const auto next_shown = [&](int qt) {  // skipped tiles (all hidden) are never loaded
    while (qt < n_qt && kind_of(qt) == kTileSkip) ++qt;
    return qt;
  };
  const auto load_q = [&](int qt, int stage) {  // q, dO by cp.async (one group), lse and delta stored at once
    const int q0 = qt * kM;
    T* q_dst = qdo_s + stage * kStage;
    load_tile<T, kM, D, kThreads, true>(q_dst, q, D, q0, p.Lq, tid);
    load_tile<T, kM, D, kThreads, true>(q_dst + kM * S, dout, D, q0, p.Lq, tid);
    cp_async_commit();
    float* lse_dst = ld_s + stage * 2 * kM;
    for (int i = tid; i < kM; i += kThreads) {
      const bool in = q0 + i < p.Lq;
      lse_dst[i] = in ? p.lse[row0 + q0 + i] * kLog2e : INFINITY;
      lse_dst[kM + i] = in ? delta[row0 + q0 + i] : 0.f;
    }
  };

  // 16-bit types at D 32 keep this warp's K and V rows as A fragments for the whole block (32 registers); at D 64
  // they would take 64 beside the 192 of dK, dV, S^T and dP^T, so there each k step reads its own from k_s, v_s.
  constexpr bool kKeepKV = !kF32<T> && D <= 32;
  uint32_t kf[MT][kKeepKV ? D / 16 : 1][4], vf[MT][kKeepKV ? D / 16 : 1][4];
  // acc += A B^T for A = this warp's 16 MT rows of a_s (K or V; `kept` where kKeepKV) and B = b_s (kM x D):
  // 16-bit types feed each B fragment to all MT tiles.
  const auto rows_gemm = [&](float (&acc)[MT][kM / 8][4], const uint32_t (&kept)[MT][kKeepKV ? D / 16 : 1][4],
                             const T* a_s, const T* b_s) {
    a_s += w0 * S;
    if constexpr (kF32<T>) {
      warp_gemm<T, kM / 8, D, false, false>(acc[0], a_s, S, b_s, S, lane);
    } else if constexpr (kKeepKV) {
      warp_gemm_a_frags<T, MT, kM / 8, D, false>(acc, kept, b_s, S, lane);
    } else {
#pragma unroll 2
      for (int kc = 0; kc < D / 16; ++kc) {
        uint32_t af[MT][1][4];
        load_a_frags(af, a_s + 16 * kc, S, lane);
        warp_gemm_a_frags<T, MT, kM / 8, 16, false>(acc, af, b_s + 16 * kc, S, lane);
      }
    }
  };

  // f(mt, nt, i, kl, ql) for each element of this warp's S^T-shaped C fragments: key kl of the block, query ql of
  // the step.
  const auto each_element = [&](auto f) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < kM / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) f(mt, nt, i, w0 + 16 * mt + g + 8 * (i >> 1), 8 * nt + 2 * t + (i & 1));
  };

  load_tile<T, kN, D, kThreads, true>(k_s, head_base<T>(p.k, p.k_strides, b, hk), p.k_strides[2], k0, p.Lk, tid);
  load_tile<T, kN, D, kThreads, true>(v_s, head_base<T>(p.v, p.v_strides, b, hk), p.v_strides[2], k0, p.Lk, tid);
  cp_async_commit();  // k and v: a group of their own
  if constexpr (kKeepKV) {  // landed before the first query tile is asked for
    cp_async_wait<0>();
    __syncthreads();
    load_a_frags(kf, k_s + w0 * S, S, lane);
    load_a_frags(vf, v_s + w0 * S, S, lane);
  }
  int qt = next_shown(0);
  if (qt < n_qt) load_q(qt, 0);
  float dk[MT][D / 8][4] = {}, dv[MT][D / 8][4] = {};
  for (int stage = 0; qt < n_qt; stage ^= stages - 1) {
    cp_async_wait<0>();
    __syncthreads();  // query tile qt is in `stage` for every thread (k_s, v_s too); the other stage is unread
    const int q0 = qt * kM, next = next_shown(qt + 1);
    const uint8_t kind = kind_of(qt);
    if (stages == 2 && next < n_qt) load_q(next, stage ^ 1);  // lands while tile qt is computed
    const T* q_s = qdo_s + stage * kStage;
    const T* do_s = q_s + kM * S;
    const float* lse_s = ld_s + stage * 2 * kM;
    const float* delta_s = lse_s + kM;

    // S^T (this warp's 16 MT keys x kM queries) becomes P^T; 16-bit types round it to T at once, as the A fragments
    // of dV = P^T dO, which dS also reads: S^T's registers are free while dP^T is computed.
    float st[MT][kM / 8][4] = {};
    rows_gemm(st, kf, k_s, q_s);
    each_element([&](int mt, int nt, int i, int kl, int ql) {
      const int key = k0 + kl, qi = q0 + ql;
      const bool shown = kind == kTileFull || (qi < p.Lq && key < p.Lk && visible(p.mask, b, qi, key, p.Lq, p.Lk));
      float& pr = st[mt][nt][i];
      pr = shown ? exp2f(pr * scale_log2 - lse_s[ql]) : 0.f;
      if constexpr (kF32<T>) pt_s[kl * SM + ql] = pr;
    });
    uint32_t pf[MT][kM / 16][4];  // 16-bit: P^T as A fragments
    if constexpr (!kF32<T>) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        c_to_a_frags<T>(pf[mt], st[mt]);
        keep_packed(pf[mt]);
      }
    }
    float dpt[MT][kM / 8][4] = {};  // dP^T, then dS^T
    rows_gemm(dpt, vf, v_s, do_s);
    each_element([&](int mt, int nt, int i, int kl, int ql) {
      float pr;
      if constexpr (kF32<T>) pr = st[mt][nt][i];
      else pr = unpack<T>(pf[mt][nt / 2][2 * (nt % 2) + i / 2], i % 2);  // c_to_a_frags' place of (nt, i)
      float& ds = dpt[mt][nt][i];
      ds = p.scale * pr * (ds - delta_s[ql]);
      dst_s[kl * SM + ql] = from_float<T>(ds);
    });
    if constexpr (kF32<T>) {
      __syncwarp();  // dV and dK read this warp's own rows of P^T and dS^T
      warp_gemm<T, D / 8, kM, false, true>(dv[0], pt_s + w0 * SM, SM, do_s, S, lane);
      warp_gemm<T, D / 8, kM, false, true>(dk[0], dst_s + w0 * SM, SM, q_s, S, lane);
    } else {
      warp_gemm_a_frags<T, MT, D / 8, kM, true>(dv, pf, do_s, S, lane);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) c_to_a_frags<T>(pf[mt], dpt[mt]);
      warp_gemm_a_frags<T, MT, D / 8, kM, true>(dk, pf, q_s, S, lane);
    }
    __syncthreads();  // dQ reads every warp's dS^T; q_s, do_s, lse_s, delta_s are done with
    if (stages == 1 && next < n_qt) load_q(next, 0);  // one buffer: refilled while dQ is computed

    // dQ (kM x D) += dS K, as (kM/16) x (D/32) chunks of 16 x 32 spread over the warps.
    for (int c = warp; c < (kM / 16) * (D / 32); c += kWarps) {
      const int mr = c / (D / 32) * 16, dc = c % (D / 32) * 32;
      float dq[4][4] = {};
      warp_gemm<T, 4, kN, true, true>(dq, dst_s + mr, SM, k_s + dc, S, lane);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int qi = q0 + mr + g + 8 * (i >> 1);
        if (qi >= p.Lq) continue;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) atomicAdd(&dq_accum[(row0 + qi) * D + dc + 8 * nt + 2 * t + (i & 1)], dq[nt][i]);
      }
    }
    qt = next;
  }
  cp_async_wait<0>();  // k and v, when no query tile was shown

  // dK, dV rows of this block: (B, H, Lk, D), one per query head; columns 2t, 2t + 1 of each 8 as one packed store.
#pragma unroll
  for (int mr = 0; mr < 2 * MT; ++mr) {
    const int mt = mr / 2, r = mr % 2, key = k0 + w0 + 16 * mt + g + 8 * r;
    if (key >= p.Lk) continue;
    const int64_t at = (int64_t(bh) * p.Lk + key) * D + 2 * t;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      const float* k2 = &dk[mt][dt][2 * r];
      const float* v2 = &dv[mt][dt][2 * r];
      if (kF32<T> || p.dkv_float) {
        store_vector(static_cast<float*>(p.dk) + at + 8 * dt, make_float2(k2[0], k2[1]));
        store_vector(static_cast<float*>(p.dv) + at + 8 * dt, make_float2(v2[0], v2[1]));
      } else if constexpr (!kF32<T>) {
        store_vector(static_cast<T*>(p.dk) + at + 8 * dt, pack2<T>(k2[0], k2[1]));
        store_vector(static_cast<T*>(p.dv) + at + 8 * dt, pack2<T>(v2[0], v2[1]));
      }
    }
  }
}

// dq = dq_accum in the output type, (B*H*Lq*D) elements, 8 per thread and step: two 16-byte loads, 16-byte stores
// (two for float32). n is a multiple of 8 (of D); dq and the workspace are 16-byte aligned.
template <class T>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(const AttentionBwdParams p,
                                                                    const float* dq_accum, int64_t n) {
  for (int64_t i = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * 8; i < n; i += int64_t(gridDim.x) * kThreads * 8) {
    const float4 a = load_vector<float4>(dq_accum + i), b = load_vector<float4>(dq_accum + i + 4);
    if constexpr (kF32<T>) {
      store_vector(static_cast<float*>(p.dq) + i, a);
      store_vector(static_cast<float*>(p.dq) + i + 4, b);
    } else {
      store_vector(static_cast<T*>(p.dq) + i, make_uint4(pack2<T>(a.x, a.y), pack2<T>(a.z, a.w), pack2<T>(b.x, b.y),
                                                         pack2<T>(b.z, b.w)));
    }
  }
}

}  // namespace

size_t attention_bwd_workspace_bytes(const AttentionBwdParams& p) { return plan(p).bytes; }

std::string attention_bwd_unsupported(const AttentionBwdParams& p) {
  const Plan s = plan(p);
  if (!s.tile_q)
    return "its kernel needs " + std::to_string(smem_bytes(p, min_tile_q(p), 1)) +
           " bytes of shared memory per block, the device allows " + std::to_string(p.max_smem);
  if (s.n_kt > 65535 || s.n_qt > 65535)  // gridDim.y of the kernel and of the tile flags
    return "Lq = " + std::to_string(p.Lq) + " and Lk = " + std::to_string(p.Lk) + " must stay within 65535 tiles of " +
           std::to_string(s.tile_q) + " queries and " + std::to_string(tile_k(p.dtype == Dtype::f32, p.D)) + " keys";
  return "";
}

cudaError_t attention_bwd_launch(const AttentionBwdParams& p, cudaStream_t stream) {
  if (p.B < 0 || p.H < 0 || p.Hk < 1 || p.H % p.Hk || p.Lq < 0 || p.Lk < 0) return cudaErrorInvalidValue;
  if (!attention_bwd_unsupported(p).empty()) return cudaErrorInvalidValue;
  if (int64_t(p.B) * p.H * (p.Lq + p.Lk) == 0) return cudaSuccess;
  const Plan s = plan(p);
  auto* ws = static_cast<unsigned char*>(p.workspace);
  auto* delta = reinterpret_cast<float*>(ws + s.delta_offset);
  auto* dq_accum = reinterpret_cast<float*>(ws + s.dq_offset);
  const int64_t rows = int64_t(p.B) * p.H * p.Lq;
  return dispatch(p.dtype, p.D, [&](auto spec) {
    using T = typename decltype(spec)::Elem;
    constexpr int D = decltype(spec)::kDim;
    const uint8_t* flags = p.mask.kind == kFull ? nullptr : ws;  // the full mask's tile kinds need no kernel
    if (flags)
      if (cudaError_t e = attention_tile_flags_launch(p.mask, p.Lq, p.Lk, s.tile_q, tile_k(kF32<T>, D), ws, stream))
        return e;
    if (rows > 0) {
      LAUNCH((attention_bwd_prep_kernel<T, D>), unsigned((rows + kThreads - 1) / kThreads), kThreads, 0,
             stream)(p, delta, dq_accum);
      if (cudaError_t e = cudaGetLastError()) return e;
    }
    if (p.Lk > 0) {
      const dim3 grid(p.B * p.H, s.n_kt);
      const auto run = [&](auto kernel, int kM) {
        return launch_with_smem(kernel, grid, kThreads, bwd_smem(sizeof(T), kF32<T>, D, kM, s.stages), stream, p,
                                flags, static_cast<const float*>(delta), dq_accum, s.stages);
      };
      constexpr int kFull = full_tile_q(kF32<T>, D), kHalf = kFull / 2;
      cudaError_t e = cudaErrorInvalidValue;
      if (s.tile_q == kFull) e = run(attention_bwd_kernel<T, D, kFull>, kFull);
      if constexpr (kF32<T>)  // the only dtype whose full tile may not fit
        if (s.tile_q == kHalf) e = run(attention_bwd_kernel<T, D, kHalf>, kHalf);
      if (e) return e;
    }
    if (rows == 0) return cudaSuccess;
    const int64_t n = rows * D;
    const unsigned blocks = unsigned(std::min<int64_t>((n / 8 + kThreads - 1) / kThreads, 4096));
    LAUNCH(attention_bwd_dq_kernel<T>, blocks, kThreads, 0, stream)(p, static_cast<const float*>(dq_accum), n);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
