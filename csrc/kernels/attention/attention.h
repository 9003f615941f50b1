// Attention on the GPU: the boundary between the torch glue and the kernels (no torch types here).
// One forward kernel serves training, inference and KV-cache decode (split over keys when the
// queries alone cannot fill the GPU); the backward is FlashAttention-2's, dq by fp32 atomics across key blocks, so
// dq's last bits follow the order blocks run in (not bit-reproducible run to run on a GPU; the torch glue alerts
// torch.use_deterministic_algorithms).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/attention/capabilities.h"
#include "kernels/attention/mask.h"
#include "kernels/dtype.h"

namespace fastar::kernels {

struct AttentionParams {
  const void* q;          // (B, H, Lq, D_in) of `dtype`, last dim contiguous; the backward and the tiny kernels
                          // take D_in == D and rows 16-byte aligned, the forward any D_in <= D and alignment
  const void* k;          // (B, Hk, >= Lk, D_in) likewise (a KV cache may hold more rows than Lk)
  const void* v;          // (B, Hk, >= Lk, D_in) likewise
  int64_t q_strides[3];   // elements between batch rows, heads and sequence rows of q
  int64_t k_strides[3];   // same for k
  int64_t v_strides[3];   // same for v
  void* out;              // (B, H, Lq, D) contiguous: forward output, backward input
  float* lse;             // (B, H, Lq) contiguous: natural-log logsumexp of the scaled scores, -inf for a row
                          // that sees no key (its output is 0)
  int B, H, Hk, Lq, Lk;   // H % Hk == 0: head h reads k/v head h / (H / Hk)
  int D;                  // head dim: one of kAttentionHeadDims
  int D_in;               // columns q, k, v hold, <= D: the forward reads columns past them as zeros
  float scale;            // softmax(scale * q k^T)
  Dtype dtype;            // of q, k, v, out and the gradients: f32, bf16 or f16; the math is fp32 for all
  MaskParams mask;        // device pointers; kv_end (Lq,), key_len (B,)
  int sm_count;           // multiprocessors of the device: the forward splits the keys below two waves of blocks
  void* workspace;        // *_workspace_bytes(p) bytes of device memory, 256-byte aligned, any content
};

struct AttentionBwdParams : AttentionParams {
  const void* dout;  // (B, H, Lq, D) contiguous, of dtype
  void* dq;          // (B, H, Lq, D) contiguous out, of dtype
  void* dk;          // (B, H, Lk, D) contiguous out: per query head, of dtype, or float32 when dkv_float
  void* dv;          // same as dk
  bool dkv_float;    // grouped heads: the glue sums the H / Hk query heads of each k/v head in fp32
  int max_smem;      // dynamic shared memory a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin)
};

size_t attention_fwd_workspace_bytes(const AttentionParams& p);
size_t attention_bwd_workspace_bytes(const AttentionBwdParams& p);
// Why the backward cannot run these sizes on this device (shared memory, grid limits); empty when it can. Reads
// dtype, D, Lq, Lk and max_smem only.
std::string attention_bwd_unsupported(const AttentionBwdParams& p);

// Enqueue on `stream`; return the launch error (cudaErrorInvalidValue for unsupported sizes).
cudaError_t attention_fwd_launch(const AttentionParams& p, cudaStream_t stream);
cudaError_t attention_bwd_launch(const AttentionBwdParams& p, cudaStream_t stream);

// flags (ceil(Lq / tile_q), ceil(Lk / tile_k)) <- the TileKind of every tile pair, key_len ignored; a key tile
// that runs past Lk is never full (its padding must be masked). Shared by the forward and backward launchers.
cudaError_t attention_tile_flags_launch(const MaskParams& mask, int Lq, int Lk, int tile_q, int tile_k,
                                        uint8_t* flags, cudaStream_t stream);

}  // namespace fastar::kernels
