// CPU kernel of the conv family.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastar::cpu {

// x (B, Ci, H, W) float32 contiguous, weight (Co, Ci, 3, 3) contiguous, bias (Co,) or None (checked by
// torch/conv.h) -> the stride-1, padding-1 convolution (B, Co, H, W), by Winograd F(2x2, 3x3) (cpu/conv_isa.h).
at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

}  // namespace fastar::cpu
