// CPU kernels of the attention family (ATen side: dtype policy, threading, tile flags, scratch memory).
// float32 / bfloat16 / float16 inputs compute in float32, float64 inputs in float64 (for gradcheck).
#pragma once
#include <ATen/core/Tensor.h>

#include "kernels/attention/mask.h"

namespace fastar::cpu {

// q (B, H, Lq, D), k and v (B, Hk, Lk, D) -> out (B, H, Lq, D) like q, lse (B, H, Lq) float32
// (float64 for float64 inputs). The mask's kv_end / key_len point at int32 data the caller keeps alive.
std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const kernels::MaskParams& mask, double scale);

// dout, out (B, H, Lq, D), lse (B, H, Lq) from attention_fwd -> dq like q, dk and dv like k and v.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             const kernels::MaskParams& mask, double scale);

// q (B, H, Lq, D), the last Lq of keys [0, cache_len) of k_cache, v_cache (B, Hk, Lmax, D), read in place.
// Queries that each see a key prefix run fused (cpu/attention_decode_isa.h) when their blocks give every thread work;
// a few queries under a DALL-E mask read only the keys they see (no tile of hidden keys).
std::tuple<at::Tensor, at::Tensor> attention_decode(const at::Tensor& q, const at::Tensor& k_cache,
                                                    const at::Tensor& v_cache, int64_t cache_len,
                                                    const kernels::MaskParams& mask, double scale);

}  // namespace fastar::cpu
