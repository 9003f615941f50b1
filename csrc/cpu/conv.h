// CPU kernel of the conv family.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastar::cpu {

// weight (Co, Ci, 3, 3) float32 contiguous -> u (16, ceil(Co / 12), Ci, 12): its Winograd transform, packed for the
// kernel (cpu/conv_isa.h).
at::Tensor conv3x3_weights(const at::Tensor& weight);

// x (B, Ci, H, W) float32 contiguous, u from conv3x3_weights, bias (c_out,) or None (checked by torch/conv.h) -> the
// stride-1, padding-1 convolution (B, c_out, H, W), by Winograd F(2x2, 3x3).
at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias, int64_t c_out);

}  // namespace fastar::cpu
