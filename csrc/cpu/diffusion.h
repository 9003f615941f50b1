// CPU kernels of the diffusion family (MAR's diffusion head).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fastar::cpu {

// The whole p_sample_loop of SimpleMLPAdaLN (schema in torch/ops.h; checked by torch/diffusion.h).
// z (N, Z) float32, weights in head_shapes order, schedule (S, 7) float64 -> tokens (N, C), or (N/2, C) with cfg != 1.
at::Tensor diffusion_sample(const at::Tensor& z, at::TensorList weights, int64_t depth, const at::Tensor& schedule,
                            double temperature, double cfg, const std::optional<at::Generator>& generator);

// Columns of the training chain's table (fastar/reference/diffusion.py LOSS_TABLE_COLUMNS), one row per timestep.
constexpr int64_t kLossTableColumns = 8;

// DiffLoss's per-row training loss and its gradient (schema in torch/ops.h; checked in torch/diffusion.cpp).
// model_output (N, 2C) [eps, v], x_start and noise (N, C), t (N,) int64, table (1000, 8) float64
// -> loss (N,), d loss / d model_output (N, 2C); float32 or float64.
std::tuple<at::Tensor, at::Tensor> diffusion_loss(const at::Tensor& model_output, const at::Tensor& x_start,
                                                  const at::Tensor& noise, const at::Tensor& t,
                                                  const at::Tensor& table);

}  // namespace fastar::cpu
