// HiT's multi-axis attention kernels, on the warp tiles of kernels/tile.cuh. A block owns one group of one axis
// (a b x b block for the regional heads, one offset of every block for the dilated heads) for one query head, and
// gathers that group's tokens straight from the image layout (geometry.h) into shared memory: no block_images copy.
// Forward (FlashAttention-2): 64 queries per block, 16 per warp, over 64-key tiles with an online softmax,
//   m' = max(m, rowmax S), P = exp(scale (S - m')), l' = l e^{scale (m - m')} + rowsum P, O' = O e^{...} + P V.
// Backward: a block owns 64 keys (16 per warp, as rows of S^T = K Q^T) and walks the group's queries 32 at a time,
//   P^T = exp(scale S^T - lse) (the difference in lse's units), dS^T = scale P^T (dP^T - delta), dV += P^T dO,
//   dK += dS^T Q, dQ += dS K,
// dQ by fp32 atomics (one add per element per key tile, in the order blocks run: dQ is not bit-reproducible on a GPU,
// and its last bits differ between the emulator's schedules where three key tiles or more add to it).
#include "kernels/attention/flash_tile.cuh"
#include "kernels/multi_axis/capabilities.h"
#include "kernels/multi_axis/multi_axis.h"

namespace fastar::kernels {
namespace {

using namespace attn;  // kThreads, kLog2e and Spec are attention's

constexpr int kTile = 64;  // queries and keys per tile, 16 per warp

// What a block works on: grid (B * groups * heads / 2 of the larger axis, tiles of the larger axis, axis).
struct Work {
  int axis, n, b, g, h, tile;  // axis, tokens per group, batch row, group, query head, tile
  __device__ __forceinline__ bool init(const MultiAxisParams& p) {
    axis = blockIdx.z, n = p.geo.tokens(axis), tile = blockIdx.y;
    const int half = p.heads / 2, groups = p.geo.groups(axis);
    const int64_t item = blockIdx.x;
    if (item >= int64_t(p.B) * groups * half || tile * kTile >= n) return false;  // uniform over the block
    h = axis * half + int(item % half), g = int(item / half % groups), b = int(item / half / groups);
    return true;
  }
  // Element offset of pixel (token t) of head `head` in a tensor with strides s, and its (B, H, W, heads) row.
  __device__ __forceinline__ int64_t offset(const MultiAxisParams& p, const int64_t (&s)[4], int head, int t) const {
    int y, x;
    p.geo.pixel(axis, g, t, y, x);
    return b * s[0] + y * s[1] + x * s[2] + head * s[3];
  }
  __device__ __forceinline__ int64_t row(const MultiAxisParams& p, int head, int t) const {
    int y, x;
    p.geo.pixel(axis, g, t, y, x);
    return ((int64_t(b) * p.geo.H + y) * p.geo.W + x) * p.heads + head;
  }
  __device__ __forceinline__ int kv_head(const MultiAxisParams& p) const { return h / (p.heads / p.hk); }
};

// tile <- rows [t0, t0 + R) of the group's tokens of head `head` (zeros past n).
template <class T, int R, int D>
__device__ __forceinline__ void load_group(T* tile, const Work& w, const MultiAxisParams& p, const void* base,
                                           const int64_t (&s)[4], int head, int t0, int tid) {
  const T* x = static_cast<const T*>(base);
  load_rows<T, R, D, kThreads>(tile, [&](int t) { return x + w.offset(p, s, head, t); }, t0, w.n, tid);
}

template <class T, int D>
constexpr size_t fwd_smem() {  // q, k, v (64 x D), P (64 x 64)
  return sizeof(T) * (3 * kTile * kStride<T, D> + kTile * kStride<T, kTile>);
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1) multi_axis_attention_fwd_kernel(const MultiAxisParams p) {
  constexpr int S = kStride<T, D>, SP = kStride<T, kTile>;
  DYNAMIC_SHARED(T, q_s);    // (64, S)
  T* k_s = q_s + kTile * S;  // (64, S)
  T* v_s = k_s + kTile * S;  // (64, S)
  T* p_s = v_s + kTile * S;  // (64, SP): probabilities, the A operand of P V
  Work w;
  if (!w.init(p)) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int q0 = w.tile * kTile, hk = w.kv_head(p);
  const float scale_log2 = p.scale * kLog2e;
  T* p_w = p_s + warp * 16 * SP;
  load_group<T, kTile, D>(q_s, w, p, p.q, p.q_strides, w.h, q0, tid);

  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g + 8 of the warp: raw-score max, sum
  for (int k0 = 0; k0 < w.n; k0 += kTile) {
    __syncthreads();  // the previous tile's k_s / v_s reads are done (and q_s is loaded)
    load_group<T, kTile, D>(k_s, w, p, p.k, p.k_strides, hk, k0, tid);
    load_group<T, kTile, D>(v_s, w, p, p.v, p.v_strides, hk, k0, tid);
    __syncthreads();
    float s[kTile / 8][4] = {};  // scores, then probabilities
    warp_gemm<T, kTile / 8, D, false, false>(s, q_s + warp * 16 * S, S, k_s, S, lane);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = m[r];
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          float& sc = s[nt][2 * r + c];
          if (k0 + 8 * nt + 2 * t + c >= w.n) sc = -INFINITY;  // past the group's tokens
          mx = fmaxf(mx, sc);
        }
      mx = quad_max(mx);  // finite: every tile holds at least one token
      const float alpha = exp2f((m[r] - mx) * scale_log2);
      m[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float pr = exp2f((s[nt][2 * r + c] - mx) * scale_log2);
          sum += pr;
          p_w[(g + 8 * r) * SP + 8 * nt + 2 * t + c] = from_float<T>(pr);
        }
      l[r] = l[r] * alpha + sum;  // per-lane partial sums; the quad is summed once at the end
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) o[dt][2 * r] *= alpha, o[dt][2 * r + 1] *= alpha;
    }
    __syncwarp();  // P rows are read across the warp's lanes
    warp_gemm<T, D / 8, kTile, false, true>(o, p_w, SP, v_s, S, lane);
    __syncwarp();  // before the next tile overwrites P
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const int q = q0 + warp * 16 + g + 8 * r;
    if (q >= w.n) continue;
    const int64_t row = w.row(p, w.h, q);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int c = 0; c < 2; ++c)
        static_cast<T*>(p.out)[row * D + 8 * dt + 2 * t + c] = from_float<T>(o[dt][2 * r + c] / sum);
    if (t == 0) p.lse[row] = __fmul_rn(m[r], p.scale) + logf(sum);  // the backward's rounding of scale S (no FMA)
  }
}

constexpr int kTileQ = 32;  // queries per backward step: S^T and dP^T beside dK and dV in registers

template <class T, int D>
constexpr size_t bwd_smem() {  // k, v (64 x D); q, dO (32 x D); dS^T and for float32 P^T (64 x 32); lse, delta
  return sizeof(T) * (2 * (kTile + kTileQ) * kStride<T, D> + (kF32<T> ? 2 : 1) * kTile * kStride<T, kTileQ>) +
         2 * kTileQ * sizeof(float);
}

// One thread per row (b, y, x, head): delta (attention's delta_row), dout read through its strides.
template <class T, int D>
__global__ void __launch_bounds__(kThreads) multi_axis_attention_delta_kernel(const MultiAxisBwdParams p) {
  const int64_t rows = int64_t(p.B) * p.geo.H * p.geo.W * p.heads, row = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (row >= rows) return;
  const int64_t h = row % p.heads, x = row / p.heads % p.geo.W, y = row / p.heads / p.geo.W % p.geo.H,
                b = row / p.heads / p.geo.W / p.geo.H;
  const T* dout = static_cast<const T*>(p.dout) +
                  (b * p.dout_strides[0] + y * p.dout_strides[1] + x * p.dout_strides[2] + h * p.dout_strides[3]);
  p.delta[row] = delta_row<T, D>(static_cast<const T*>(p.out) + row * D, dout);
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1) multi_axis_attention_bwd_kernel(const MultiAxisBwdParams p) {
  constexpr int S = kStride<T, D>, SM = kStride<T, kTileQ>;
  DYNAMIC_SHARED(T, k_s);         // (64, S)
  T* v_s = k_s + kTile * S;       // (64, S)
  T* q_s = v_s + kTile * S;       // (32, S)
  T* do_s = q_s + kTileQ * S;     // (32, S)
  T* dst_s = do_s + kTileQ * S;   // (64, SM): dS^T, keys x queries, the A operand of dQ for every warp
  T* pt_s = dst_s + kTile * SM;   // (64, SM), float32 only: P^T
  float* lse_s = reinterpret_cast<float*>(pt_s + (kF32<T> ? kTile * SM : 0));  // (32,): lse, +inf past n
  float* delta_s = lse_s + kTileQ;                                              // (32,)
  Work w;
  if (!w.init(p)) return;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
  const int k0 = w.tile * kTile, hk = w.kv_head(p);
  load_group<T, kTile, D>(k_s, w, p, p.k, p.k_strides, hk, k0, tid);
  load_group<T, kTile, D>(v_s, w, p, p.v, p.v_strides, hk, k0, tid);
  float dk[D / 8][4] = {}, dv[D / 8][4] = {};
  for (int q0 = 0; q0 < w.n; q0 += kTileQ) {
    __syncthreads();  // the previous step's reads of q_s, do_s, pt_s, dst_s are done
    load_group<T, kTileQ, D>(q_s, w, p, p.q, p.q_strides, w.h, q0, tid);
    load_group<T, kTileQ, D>(do_s, w, p, p.dout, p.dout_strides, w.h, q0, tid);
    for (int i = tid; i < kTileQ; i += kThreads) {
      const bool in = q0 + i < w.n;
      const int64_t row = in ? w.row(p, w.h, q0 + i) : 0;
      lse_s[i] = in ? p.lse[row] : INFINITY;
      delta_s[i] = in ? p.delta[row] : 0.f;
    }
    __syncthreads();

    float st[kTileQ / 8][4] = {}, dpt[kTileQ / 8][4] = {};  // S^T and dP^T: this warp's 16 keys x 32 queries
    warp_gemm<T, kTileQ / 8, D, false, false>(st, k_s + warp * 16 * S, S, q_s, S, lane);
    warp_gemm<T, kTileQ / 8, D, false, false>(dpt, v_s + warp * 16 * S, S, do_s, S, lane);
#pragma unroll
    for (int nt = 0; nt < kTileQ / 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int kl = warp * 16 + g + 8 * (i >> 1), ql = 8 * nt + 2 * t + (i & 1);
        float& pr = st[nt][i];   // S^T becomes P^T: 0 past n, both ways
        float& ds = dpt[nt][i];  // dP^T becomes dS^T
        // P = e^(scale S - lse), the difference taken in lse's units (scale S rounded as the forward rounds it):
        // exp2(S scale log2(e) - lse log2(e)) rounds both terms apart, ~ulps of |S|, which at |S| ~ 1e19 made P inf
        pr = k0 + kl < w.n ? exp2f((__fmul_rn(pr, p.scale) - lse_s[ql]) * kLog2e) : 0.f;
        ds = p.scale * pr * (ds - delta_s[ql]);
        dst_s[kl * SM + ql] = from_float<T>(ds);
        if constexpr (kF32<T>) pt_s[kl * SM + ql] = pr;
      }
    if constexpr (kF32<T>) {
      __syncwarp();  // dV and dK read this warp's own rows of P^T and dS^T
      warp_gemm<T, D / 8, kTileQ, false, true>(dv, pt_s + warp * 16 * SM, SM, do_s, S, lane);
      warp_gemm<T, D / 8, kTileQ, false, true>(dk, dst_s + warp * 16 * SM, SM, q_s, S, lane);
    } else {  // P^T and dS^T feed the products from registers, as A fragments
      uint32_t af[kTileQ / 16][4];
      c_to_a_frags<T>(af, st);
      warp_gemm_a_frags<T, D / 8, kTileQ, true>(dv, af, do_s, S, lane);
      c_to_a_frags<T>(af, dpt);
      warp_gemm_a_frags<T, D / 8, kTileQ, true>(dk, af, q_s, S, lane);
    }
    __syncthreads();  // dQ reads every warp's rows of dS^T

    // dQ (32 x D) += dS K, as 16 x 16 chunks spread over the warps (dS read transposed from dS^T).
    for (int c = warp; c < (kTileQ / 16) * (D / 16); c += kWarps) {
      const int mr = c / (D / 16) * 16, dc = c % (D / 16) * 16;
      float dq[2][4] = {};
      warp_gemm<T, 2, kTile, true, true>(dq, dst_s + mr, SM, k_s + dc, S, lane);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int q = q0 + mr + g + 8 * r;
        if (q >= w.n) continue;
        float* dq_row = p.dq + w.row(p, w.h, q) * D + dc;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) atomicAdd(&dq_row[8 * nt + 2 * t + e], dq[nt][2 * r + e]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = k0 + warp * 16 + g + 8 * r;
    if (key >= w.n) continue;
    const int64_t row = w.row(p, w.h, key);
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        p.dk[row * D + 8 * dt + 2 * t + c] = dk[dt][2 * r + c];
        p.dv[row * D + 8 * dt + 2 * t + c] = dv[dt][2 * r + c];
      }
  }
}

// f(Spec<T, D>{}) for the runtime dtype and head dim (one of kMultiAxisHeadDims).
template <class F, size_t... I>
cudaError_t dispatch_dims(Dtype dtype, int D, F&& f, std::index_sequence<I...>) {
  return dispatch_dtype<float, __nv_bfloat16, __half>(dtype, [&](auto elem) {
    cudaError_t e = cudaErrorInvalidValue;
    (void)((D == kMultiAxisHeadDims[I] ? (e = f(Spec<decltype(elem), kMultiAxisHeadDims[I]>{}), true) : false) || ...);
    return e;
  });
}
template <class F>
cudaError_t dispatch_dims(Dtype dtype, int D, F&& f) {
  return dispatch_dims(dtype, D, f, std::make_index_sequence<sizeof(kMultiAxisHeadDims) / sizeof(int)>{});
}

// Grid (B * groups * heads / 2, tiles, 2 axes), sized by the larger axis; the other's extra blocks return at once.
dim3 grid(const MultiAxisParams& p) {
  int64_t items = 0;
  int tiles = 0;
  for (int axis = 0; axis < 2; ++axis) {
    items = std::max<int64_t>(items, int64_t(p.B) * p.geo.groups(axis) * (p.heads / 2));
    tiles = std::max(tiles, cdiv(p.geo.tokens(axis), kTile));
  }
  return dim3(unsigned(items), unsigned(tiles), 2);
}

bool valid(const MultiAxisParams& p) {
  const MultiAxisGeometry& geo = p.geo;
  return p.B >= 0 && p.heads >= 2 && p.heads % 2 == 0 && p.hk >= 1 && p.heads % p.hk == 0 &&
         (p.hk == 1 || p.hk % 2 == 0) && geo.b >= 1 && geo.H >= geo.b && geo.W >= geo.b && geo.H % geo.b == 0 &&
         geo.W % geo.b == 0 && cdiv(geo.H * geo.W, kTile) <= 65535;
}

// f(Spec<T, D>{}) after the checks every launcher shares.
template <class F>
cudaError_t launch(const MultiAxisParams& p, F&& f) {
  if (!valid(p)) return cudaErrorInvalidValue;
  if (p.B == 0) return cudaSuccess;
  return dispatch_dims(p.dtype, p.D, f);
}

}  // namespace

cudaError_t multi_axis_attention_fwd_launch(const MultiAxisParams& p, cudaStream_t stream) {
  return launch(p, [&](auto spec) {
    using T = typename decltype(spec)::Elem;
    constexpr int D = decltype(spec)::kDim;
    return launch_with_smem(multi_axis_attention_fwd_kernel<T, D>, grid(p), kThreads, fwd_smem<T, D>(), stream, p);
  });
}

cudaError_t multi_axis_attention_bwd_launch(const MultiAxisBwdParams& p, cudaStream_t stream) {
  return launch(p, [&](auto spec) {
    using T = typename decltype(spec)::Elem;
    constexpr int D = decltype(spec)::kDim;
    const int64_t rows = int64_t(p.B) * p.geo.H * p.geo.W * p.heads;
    LAUNCH((multi_axis_attention_delta_kernel<T, D>), unsigned((rows + kThreads - 1) / kThreads), kThreads, 0,
           stream)(p);
    if (cudaError_t e = cudaGetLastError()) return e;
    return launch_with_smem(multi_axis_attention_bwd_kernel<T, D>, grid(p), kThreads, bwd_smem<T, D>(), stream, p);
  });
}

}  // namespace fastar::kernels
