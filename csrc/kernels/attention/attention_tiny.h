// Attention on tiny sequences (FractalGen's levels and PixelLoss: Lq, Lk <= 32 at 10^5+ sequences): one thread per
// query row (forward, dq) or key row (dk, dv), many whole sequences per block, no tiles. Same params as the tiled
// kernels (kernels/attention/attention.h); the glue routes here when attention_tiny_takes(p).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/attention/attention.h"

namespace fastar::kernels {

constexpr int kAttentionTinyMaxLen = 32;
constexpr int kAttentionTinyMaxDim = 64;  // a query row's accumulators live in registers

inline bool attention_tiny_takes(const AttentionParams& p) {
  return p.Lq >= 1 && p.Lq <= kAttentionTinyMaxLen && p.Lk >= 1 && p.Lk <= kAttentionTinyMaxLen &&
         p.D <= kAttentionTinyMaxDim;
}

// The backward's workspace: delta (B, H, Lq) = rowsum(dout * out) in fp32.
size_t attention_tiny_bwd_workspace_bytes(const AttentionBwdParams& p);

// Enqueue on `stream`; return the launch error (cudaErrorInvalidValue for sizes attention_tiny_takes refuses).
cudaError_t attention_tiny_fwd_launch(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_tiny_bwd_launch(const AttentionBwdParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
