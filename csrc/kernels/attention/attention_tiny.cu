// Tiny-sequence attention (see attention_tiny.h). Blocks of 128 threads hold floor(128 / L) whole sequences, one
// thread per row. Forward: a query row's online softmax over its visible keys, fp32 accumulators in registers.
// Backward (FlashAttention-2's formulas, P recomputed from lse): a thread per query row writes dq and
// delta = rowsum(dout * out); then a thread per key row sums dk and dv over the queries that see it, so no
// atomics and no result depends on thread order.
#include "kernels/attention/attention_tiny.h"

#include <cmath>
#include <type_traits>

#include "kernels/common.cuh"

namespace fastar::kernels {
namespace {

constexpr int kThreads = 128;

// Sequence and row of this thread when each sequence takes `rows` threads; false past the last sequence.
__device__ __forceinline__ bool locate(const AttentionParams& p, int rows, int64_t& bh, int& row) {
  const int per_block = kThreads / rows;
  if (int(threadIdx.x) >= per_block * rows) return false;
  bh = int64_t(blockIdx.x) * per_block + threadIdx.x / rows;
  row = threadIdx.x % rows;
  return bh < int64_t(p.B) * p.H;
}

template <class T>
__device__ __forceinline__ const T* row_of(const void* base, const int64_t* strides, int64_t b, int64_t h, int l) {
  return static_cast<const T*>(base) + b * strides[0] + h * strides[1] + l * strides[2];
}

template <class T, int D>
__device__ __forceinline__ float dot(const T* x, const T* y) {
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < D; ++c) s += to_float(x[c]) * to_float(y[c]);
  return s;
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads) tiny_fwd_kernel(const AttentionParams p) {
  int64_t bh;
  int i;
  if (!locate(p, p.Lq, bh, i)) return;
  const int64_t b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const T* q = row_of<T>(p.q, p.q_strides, b, h, i);
  float m = -INFINITY, l = 0.f, o[D];
#pragma unroll
  for (int c = 0; c < D; ++c) o[c] = 0.f;
  for (int j = 0; j < p.Lk; ++j) {
    if (!visible(p.mask, int(b), i, j, p.Lq, p.Lk)) continue;
    const float s = p.scale * dot<T, D>(q, row_of<T>(p.k, p.k_strides, b, hk, j));
    const float m_new = fmaxf(m, s), corr = expf(m - m_new), e = expf(s - m_new);  // m = -inf first: corr 0
    const T* v = row_of<T>(p.v, p.v_strides, b, hk, j);
    l = l * corr + e;
#pragma unroll
    for (int c = 0; c < D; ++c) o[c] = o[c] * corr + e * to_float(v[c]);
    m = m_new;
  }
  const float inv = l == 0.f ? 0.f : 1.f / l;  // a row that sees no key: out 0, lse -inf (NaN stays NaN)
  T* out = static_cast<T*>(p.out) + (bh * p.Lq + i) * D;
#pragma unroll
  for (int c = 0; c < D; ++c) out[c] = from_float<T>(o[c] * inv);
  p.lse[bh * p.Lq + i] = l == 0.f ? -INFINITY : m + logf(l);
}

// dq_i = scale sum_j P_ij (dP_ij - delta_i) k_j, P = exp(scale q k^T - lse), dP = dout v^T; delta to the workspace.
template <class T, int D>
__global__ void __launch_bounds__(kThreads) tiny_bwd_dq_kernel(const AttentionBwdParams p) {
  int64_t bh;
  int i;
  if (!locate(p, p.Lq, bh, i)) return;
  const int64_t b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk), r = bh * p.Lq + i;
  const T *q = static_cast<const T*>(p.q) + r * D, *dout = static_cast<const T*>(p.dout) + r * D;
  const float lse = p.lse[r], delta = dot<T, D>(dout, static_cast<const T*>(p.out) + r * D);
  static_cast<float*>(p.workspace)[r] = delta;
  float dq[D];
#pragma unroll
  for (int c = 0; c < D; ++c) dq[c] = 0.f;
  for (int j = 0; j < p.Lk && lse != -INFINITY; ++j) {  // a row that saw no key has no gradient
    if (!visible(p.mask, int(b), i, j, p.Lq, p.Lk)) continue;
    const T* k = row_of<T>(p.k, p.k_strides, b, hk, j);
    const float P = expf(p.scale * dot<T, D>(q, k) - lse);
    const float ds = p.scale * P * (dot<T, D>(dout, row_of<T>(p.v, p.v_strides, b, hk, j)) - delta);
#pragma unroll
    for (int c = 0; c < D; ++c) dq[c] += ds * to_float(k[c]);
  }
  T* out = static_cast<T*>(p.dq) + r * D;
#pragma unroll
  for (int c = 0; c < D; ++c) out[c] = from_float<T>(dq[c]);
}

// dv_j = sum_i P_ij dout_i, then dk_j = scale sum_i P_ij (dP_ij - delta_i) q_i, over the queries that see key j: one
// output per pass, P recomputed, so that a single row of accumulators lives in registers.
template <class T, class G, int D>
__global__ void __launch_bounds__(kThreads) tiny_bwd_dkv_kernel(const AttentionBwdParams p) {
  int64_t bh;
  int j;
  if (!locate(p, p.Lk, bh, j)) return;
  const int64_t b = bh / p.H, h = bh % p.H, hk = h / (p.H / p.Hk);
  const T *k = row_of<T>(p.k, p.k_strides, b, hk, j), *v = row_of<T>(p.v, p.v_strides, b, hk, j);
  const float* delta = static_cast<const float*>(p.workspace) + bh * p.Lq;
#pragma unroll 1
  for (int pass = 0; pass < 2; ++pass) {  // 0: dv, 1: dk
    float acc[D];
#pragma unroll
    for (int c = 0; c < D; ++c) acc[c] = 0.f;
    for (int i = 0; i < p.Lq; ++i) {
      const float lse = p.lse[bh * p.Lq + i];
      if (lse == -INFINITY || !visible(p.mask, int(b), i, j, p.Lq, p.Lk)) continue;
      const T* q = static_cast<const T*>(p.q) + (bh * p.Lq + i) * D;
      const T* dout = static_cast<const T*>(p.dout) + (bh * p.Lq + i) * D;
      const float P = expf(p.scale * dot<T, D>(q, k) - lse);
      const float w = pass == 0 ? P : p.scale * P * (dot<T, D>(dout, v) - delta[i]);
      const T* x = pass == 0 ? dout : q;
#pragma unroll
      for (int c = 0; c < D; ++c) acc[c] += w * to_float(x[c]);
    }
    G* out = static_cast<G*>(pass == 0 ? p.dv : p.dk) + (bh * p.Lk + j) * D;
#pragma unroll
    for (int c = 0; c < D; ++c) out[c] = from_float<G>(acc[c]);
  }
}

// f(std::integral_constant<int, D>) for the head dims the tiny kernels are built for.
template <class F>
cudaError_t dispatch_dim(int D, F&& f) {
  if (D == 32) return f(std::integral_constant<int, 32>{});
  if (D == 64) return f(std::integral_constant<int, 64>{});
  return cudaErrorInvalidValue;
}

unsigned blocks(const AttentionParams& p, int rows) {
  const int64_t per_block = kThreads / rows;
  return unsigned((int64_t(p.B) * p.H + per_block - 1) / per_block);
}

}  // namespace

size_t attention_tiny_bwd_workspace_bytes(const AttentionBwdParams& p) {
  return align256(size_t(p.B) * p.H * p.Lq * sizeof(float));
}

cudaError_t attention_tiny_fwd_launch(const AttentionParams& p, cudaStream_t stream) {
  if (!attention_tiny_takes(p)) return cudaErrorInvalidValue;
  if (int64_t(p.B) * p.H == 0) return cudaSuccess;
  return dispatch_dtype<float, __nv_bfloat16, __half>(p.dtype, [&](auto elem) {
    return dispatch_dim(p.D, [&](auto dim) {
      LAUNCH((tiny_fwd_kernel<decltype(elem), decltype(dim)::value>), blocks(p, p.Lq), kThreads, 0, stream)(p);
      return cudaGetLastError();
    });
  });
}

cudaError_t attention_tiny_bwd_launch(const AttentionBwdParams& p, cudaStream_t stream) {
  if (!attention_tiny_takes(p)) return cudaErrorInvalidValue;
  if (int64_t(p.B) * p.H == 0) return cudaSuccess;
  return dispatch_dtype<float, __nv_bfloat16, __half>(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    return dispatch_dim(p.D, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      LAUNCH((tiny_bwd_dq_kernel<T, D>), blocks(p, p.Lq), kThreads, 0, stream)(p);
      if (p.dkv_float) LAUNCH((tiny_bwd_dkv_kernel<T, float, D>), blocks(p, p.Lk), kThreads, 0, stream)(p);
      else LAUNCH((tiny_bwd_dkv_kernel<T, T, D>), blocks(p, p.Lk), kThreads, 0, stream)(p);
      return cudaGetLastError();
    });
  });
}

}  // namespace fastar::kernels
