// Device pieces shared by the attention kernels, on the warp tiles of kernels/tile.cuh: the block size, the
// (B, heads, L, D) operand layout and the dtype x head-dim switch.
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>

#include "kernels/attention/attention.h"
#include "kernels/attention/capabilities.h"
#include "kernels/common.cuh"
#include "kernels/tile.cuh"

namespace fastar::kernels::attn {

using namespace tile;

constexpr int kThreads = 128;  // 4 warps per block in every attention kernel
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;

// Base of head h of batch row b in a (B, heads, L, D) tensor with element strides {batch, head, row}.
template <class T>
__device__ __forceinline__ const T* head_base(const void* p, const int64_t (&s)[3], int b, int h) {
  return static_cast<const T*>(p) + b * s[0] + h * s[1];
}

// FlashAttention-2's delta = rowsum(dO * O) of one row, summed as the float32 warp_gemm sums dP = dO V^T (one running
// sum from 0, d ascending, the same `+= a * b`: the same FMAs under nvcc, none under the emulator): where O is one
// key's v (a single visible key, a softmax one-hot to the last bit) delta == dP bit for bit, so dS = P (dP - delta) is
// 0 there, as the reference's (a shuffle tree's or torch's sum left dq and dk of such rows past the tolerance).
template <class T, int D>
__device__ __forceinline__ float delta_row(const T* out, const T* dout) {
  float sum = 0.f;
  for (int c = 0; c < D; ++c) sum += to_float(out[c]) * to_float(dout[c]);
  return sum;
}

template <class T, int D>
struct Spec {
  using Elem = T;
  static constexpr int kDim = D;
};

template <class T, class F, size_t... I>
cudaError_t dispatch_head_dim(int D, F& f, std::index_sequence<I...>) {
  cudaError_t e = cudaErrorInvalidValue;
  (void)((D == kAttentionHeadDims[I] ? (e = f(Spec<T, kAttentionHeadDims[I]>{}), true) : false) || ...);
  return e;
}

// f(Spec<T, D>{}) for the runtime dtype and head dim (one of kAttentionHeadDims): the one place kernels are
// specialised.
template <class F>
cudaError_t dispatch(Dtype dtype, int D, F&& f) {
  return dispatch_dtype<float, __nv_bfloat16, __half>(dtype, [&](auto elem) {
    constexpr size_t kDims = sizeof(kAttentionHeadDims) / sizeof(int);
    return dispatch_head_dim<decltype(elem)>(D, f, std::make_index_sequence<kDims>{});
  });
}

}  // namespace fastar::kernels::attn
