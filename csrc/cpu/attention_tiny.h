// The CPU attention's path for tiny sequences (FractalGen's levels and PixelLoss: L <= 32 at 10^5+ sequences):
// many whole sequences per task on the micro-kernels of cpu/attention_tiny_isa.cpp, instead of query blocks, key
// runs and BLAS calls per sequence. cpu/attention.cpp routes here.
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

#include "kernels/attention/mask.h"

namespace fastar::cpu {

// Whether the tiny path takes Lq queries against Lk keys of head dim D.
bool attention_tiny_takes(int64_t Lq, int64_t Lk, int64_t D);

// Many queries on a few keys under a mask that does not depend on the query (full, key_len: HiT's pixels on its 16
// latents): the rows c of query chunks that each run as a tiny sequence of their own (a head on the same key head;
// c divides Lq, 8 <= c <= the tiny limit), or 0 where the tiny path does not take the chunks.
int64_t attention_tiny_query_chunk(int64_t Lq, int64_t Lk, int64_t D);

// q (B, H, Lq, D), k and v (B, Hk, Lk, D) in the compute dtype (float32 or float64), unit-stride rows
// -> out (B, H, Lq, D), lse (B, H, Lq) of that dtype.
std::tuple<at::Tensor, at::Tensor> attention_tiny_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const kernels::MaskParams& mask, double scale);

// dout (B, H, Lq, D), contiguous, in the compute dtype -> dq (B, H, Lq, D), dk and dv (B, H, Lk, D) per query
// head (the caller sums heads sharing a key head). P is made again by the forward's softmax: no lse.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_tiny_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const kernels::MaskParams& mask, double scale);

}  // namespace fastar::cpu
