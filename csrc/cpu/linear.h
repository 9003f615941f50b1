// CPU kernel of the linear family.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastar::cpu {

// x (M, K), weight (N, K), bias (N,) or none, contiguous, one dtype (float32 / float64), or float32 with bfloat16
// weights (checked by torch/linear.h) -> x weight^T + bias (M, N) in x's dtype.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

}  // namespace fastar::cpu
