// CPU kernels of the blur_pool family (semantics: fastar/reference/blur_pool.py).
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar::cpu {

// x (B, C, H, W) contiguous (checked by torch/blur_pool.h) -> (B, C, H / 2, W / 2).
at::Tensor blur_pool(const at::Tensor& x);

// grad (B, C, height / 2, width / 2) contiguous -> (B, C, height, width): blur_pool's adjoint.
at::Tensor blur_pool_backward(const at::Tensor& grad, int64_t height, int64_t width);

}  // namespace fastar::cpu
