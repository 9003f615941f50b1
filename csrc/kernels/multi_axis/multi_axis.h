// HiT's multi-axis attention on the GPU: the boundary between the torch glue and the kernels (no torch types).
// Tokens are read in place from the image layout (kernels/multi_axis/geometry.h); the head dims are attention's
// (kernels/attention/capabilities.h). The forward is FlashAttention-2 over each group's tokens; the backward owns
// key tiles, adds dq with fp32 atomics (its last bits follow the order blocks run in: not bit-reproducible on a GPU;
// the torch glue alerts torch.use_deterministic_algorithms) and writes dk, dv per query head, summed by the glue.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/multi_axis/geometry.h"

namespace fastar::kernels {

struct MultiAxisParams {
  const void* q;          // (B, H, W, heads, D) of `dtype`, last dim contiguous, every pixel's head 16-byte aligned
  const void* k;          // (B, H, W, heads_kv, D) likewise
  const void* v;          // (B, H, W, heads_kv, D) likewise
  int64_t q_strides[4];   // elements between batch rows, image rows, image columns and heads of q
  int64_t k_strides[4];   // same for k
  int64_t v_strides[4];   // same for v
  void* out;              // (B, H, W, heads, D) contiguous, of dtype
  float* lse;             // (B, H, W, heads) contiguous: natural-log logsumexp of the scaled scores
  int B, heads, hk;       // heads even; heads_kv 1 or an even divisor: head h reads k/v head h / (heads / hk)
  int D;                  // head dim: one of kAttentionHeadDims
  MultiAxisGeometry geo;  // image and block size
  float scale;            // softmax(scale * q k^T)
  Dtype dtype;            // of q, k, v, out and dout: f32, bf16 or f16; the math is fp32 for all
};

struct MultiAxisBwdParams : MultiAxisParams {
  const void* dout;         // (B, H, W, heads, D) of dtype, laid out like q
  int64_t dout_strides[4];  // as q_strides
  float* delta;        // (B, H, W, heads) contiguous fp32 workspace: the launch writes rowsum(dout * out) into it
  float* dq;           // (B, H, W, heads, D) contiguous fp32, zeroed by the caller: the kernel adds to it
  float* dk;           // (B, H, W, heads, D) contiguous fp32 per query head: the caller sums each key head's
  float* dv;           // same as dk
};

// Enqueue on `stream`; return the launch error (cudaErrorInvalidValue for unsupported sizes).
cudaError_t multi_axis_attention_fwd_launch(const MultiAxisParams& p, cudaStream_t stream);
cudaError_t multi_axis_attention_bwd_launch(const MultiAxisBwdParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
