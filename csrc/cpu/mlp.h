// CPU kernel of the mlp family.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fastar::cpu {

// [residual +] act(x w1^T + b1) w2^T + b2, act the exact GELU or (softmax_group g > 0) a softmax over each g hidden
// units: x (N, C) float32 with unit column stride, w1 (Hd, C), b1 (Hd,), w2 (Co, Hd), b2 (Co,), residual (N, Co) with
// unit column stride or None (checked by torch/mlp.h) -> (N, Co).
at::Tensor mlp(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
               const at::Tensor& b2, const std::optional<at::Tensor>& residual, int64_t softmax_group);
// The same into out (N, Co) with unit column stride (checked: x's or residual's own rows, or no overlap with them).
void mlp_out(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
             const at::Tensor& b2, const std::optional<at::Tensor>& residual, int64_t softmax_group,
             const at::Tensor& out);

// (gelu(x), gelu'(x)) for x float32 contiguous, the exact GELU or (tanh) its tanh approximation.
std::tuple<at::Tensor, at::Tensor> gelu_with_derivative(const at::Tensor& x, bool tanh);

}  // namespace fastar::cpu
