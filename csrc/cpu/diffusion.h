// CPU kernels of the diffusion family (MAR's diffusion head).
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace fastar::cpu {

// The whole p_sample_loop of SimpleMLPAdaLN (schema in torch/ops.h; checked by torch/diffusion.h).
// z (N, Z) float32, weights in head_shapes order, schedule (S, 7) float64 -> tokens (N, C), or (N/2, C) with cfg != 1.
at::Tensor diffusion_sample(const at::Tensor& z, at::TensorList weights, int64_t depth, const at::Tensor& schedule,
                            double temperature, double cfg, const std::optional<at::Generator>& generator);

}  // namespace fastar::cpu
