// CPU kernels of the quantize family (ATen side: dtype policy, threading, scratch memory).
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar::cpu {

// x (N, D), codebook (K, D), any float dtype -> (indices (N,) int64, distances (N,) float32).
std::tuple<at::Tensor, at::Tensor> vq_nearest(const at::Tensor& x, const at::Tensor& codebook, bool cosine);

// Multi-scale residual quantization (schemas and shapes in torch/ops.h; arguments checked by torch/quantize.h).
at::Tensor msq_residual_search(at::Tensor& f_hat, at::Tensor& f_rest, const std::optional<at::Tensor>& h,
                               const at::Tensor& codebook, int64_t pn);
at::Tensor msq_up(const at::Tensor& src, const std::optional<at::Tensor>& idx, c10::IntArrayRef patch_nums,
                  int64_t H, int64_t B);
// cells: sum of patch_nums[s]^2.
at::Tensor msq_add_down(at::Tensor& f_hat, at::TensorList h, c10::IntArrayRef patch_nums, int64_t cells);

}  // namespace fastar::cpu
