// CPU kernels of the multi_axis family (HiT's regional + dilated heads, read straight from the image layout).
// float32 / bfloat16 / float16 inputs compute in float32, float64 inputs in float64 (for gradcheck).
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar::cpu {

// q (B, H, W, heads, D), k and v (B, H, W, heads_kv, D), last dim unit-stride or not -> out (B, H, W, heads, D)
// like q, lse (B, H, W, heads) float32 (float64 for float64 inputs).
std::tuple<at::Tensor, at::Tensor> multi_axis_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, int64_t block_size, double scale);

// dout, out (B, H, W, heads, D), lse (B, H, W, heads) from the forward -> dq like q, dk and dv like k and v.
std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_axis_attention_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                                        const at::Tensor& k, const at::Tensor& v,
                                                                        const at::Tensor& out, const at::Tensor& lse,
                                                                        int64_t block_size, double scale);

}  // namespace fastar::cpu
