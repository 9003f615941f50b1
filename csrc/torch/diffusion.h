// Argument checks of the diffusion family, shared by every backend's registration.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <tuple>
#include <vector>

#include "cpu/diffusion.h"
#include "torch/checks.h"

namespace fastar {

// Columns of the schedule table (fastar/reference/diffusion.py SCHEDULE_COLUMNS).
constexpr int64_t kScheduleColumns = 7;

// The head's tensors in head_shapes order: 4 (time_embed.mlp.0, .2, cond_embed, input_proj), 4 per res
// block (in_ln, mlp.0, mlp.2, adaLN_modulation.1), 2 final (adaLN_modulation.1, linear), each weight then bias.
inline int64_t diffusion_head_depth(at::TensorList weights) {
  TORCH_CHECK(weights.size() >= 12 && (weights.size() - 12) % 8 == 0, "diffusion_sample: weights must hold 12 + 8 "
              "* depth tensors (SimpleMLPAdaLN's state dict in head_shapes order), got ", weights.size());
  return (int64_t(weights.size()) - 12) / 8;
}

// Returns the depth. z (N, Z); weights float32 contiguous of the head's shapes; schedule (S, 7) float64.
inline int64_t check_diffusion_sample(const at::Tensor& z, at::TensorList weights, const at::Tensor& schedule,
                                      double cfg, c10::DeviceType device) {
  const char* op = "diffusion_sample";
  const int64_t depth = diffusion_head_depth(weights);
  TORCH_CHECK(z.dim() == 2, op, ": z must be (N, z_dim), got ", z.dim(), " dims");
  TORCH_CHECK(z.scalar_type() == at::kFloat, op, ": z must be float32, got ", z.scalar_type());
  check_device(op, "z", z, device, "z", z);
  TORCH_CHECK(cfg == 1.0 || z.size(0) % 2 == 0, op, ": with cfg != 1 z holds [cond ; uncond] rows, so its row "
              "count must be even, got ", z.size(0));
  const int64_t W = weights[0].size(0), C = weights[6].dim() == 2 ? weights[6].size(1) : -1, Z = z.size(1);
  auto expect = [&](int64_t i, std::vector<int64_t> shape) {
    const at::Tensor& t = weights[i];
    TORCH_CHECK(t.sizes() == c10::IntArrayRef(shape), op, ": weights[", i, "] must have shape ",
                c10::IntArrayRef(shape), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), op, ": weights[", i,
                "] must be contiguous float32, got ", t.scalar_type());
    check_device(op, ("weights[" + std::to_string(i) + "]").c_str(), t, device, "z", z);
  };
  TORCH_CHECK(C >= 1, op, ": weights[6] (input_proj.weight) must be (width, in_channels)");
  const std::vector<std::vector<int64_t>> head = {{W, 256}, {W}, {W, W}, {W}, {W, Z}, {W}, {W, C}, {W}};
  for (int64_t i = 0; i < 8; ++i) expect(i, head[i]);
  for (int64_t b = 0; b < depth; ++b) {
    const std::vector<std::vector<int64_t>> block = {{W}, {W}, {W, W}, {W}, {W, W}, {W}, {3 * W, W}, {3 * W}};
    for (int64_t i = 0; i < 8; ++i) expect(8 + 8 * b + i, block[i]);
  }
  const std::vector<std::vector<int64_t>> final = {{2 * W, W}, {2 * W}, {2 * C, W}, {2 * C}};
  for (int64_t i = 0; i < 4; ++i) expect(8 + 8 * depth + i, final[i]);
  TORCH_CHECK(schedule.dim() == 2 && schedule.size(0) >= 1 && schedule.size(1) == kScheduleColumns, op,
              ": schedule must be (num_steps, ", kScheduleColumns, "), got ", schedule.sizes());
  TORCH_CHECK(schedule.scalar_type() == at::kDouble && schedule.device().is_cpu(), op,
              ": schedule must be a float64 CPU tensor, got ", schedule.scalar_type(), " on ", schedule.device());
  return depth;
}

// model_output (N, 2C), x_start and noise (N, C) float32 or float64 of one dtype; t (N,) int64 in [0, T); table
// (T, 8) contiguous float64; all on x_start's device.
inline void check_diffusion_loss(const at::Tensor& model_output, const at::Tensor& x_start, const at::Tensor& noise,
                                 const at::Tensor& t, const at::Tensor& table, c10::DeviceType device) {
  const char* op = "diffusion_loss";
  TORCH_CHECK(x_start.dim() == 2, op, ": x_start must be (N, C), got ", x_start.dim(), " dims");
  const int64_t N = x_start.size(0), C = x_start.size(1);
  TORCH_CHECK(x_start.scalar_type() == at::kFloat || x_start.scalar_type() == at::kDouble, op,
              ": x_start must be float32 or float64, got ", x_start.scalar_type());
  for (auto [name, tensor, shape] : {std::tuple{"model_output", &model_output, std::vector<int64_t>{N, 2 * C}},
                                     std::tuple{"x_start", &x_start, std::vector<int64_t>{N, C}},
                                     std::tuple{"noise", &noise, std::vector<int64_t>{N, C}}}) {
    TORCH_CHECK(tensor->sizes() == c10::IntArrayRef(shape), op, ": ", name, " must have shape ",
                c10::IntArrayRef(shape), ", got ", tensor->sizes());
    TORCH_CHECK(tensor->scalar_type() == x_start.scalar_type(), op, ": ", name, " must have x_start's dtype ",
                x_start.scalar_type(), ", got ", tensor->scalar_type());
    check_device(op, name, *tensor, device, "x_start", x_start);
  }
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N && t.scalar_type() == at::kLong, op, ": t must be (", N,
              ",) int64, got ", t.sizes(), " ", t.scalar_type());
  check_device(op, "t", t, device, "x_start", x_start);
  TORCH_CHECK(table.dim() == 2 && table.size(1) == kernels::kDiffusionLossColumns && table.scalar_type() == at::kDouble &&
              table.is_contiguous(), op, ": table must be (T, ", kernels::kDiffusionLossColumns,
              ") contiguous float64, got ", table.sizes(), " ", table.scalar_type());
  check_device(op, "table", table, device, "x_start", x_start);
  TORCH_CHECK(N == 0 || (t.min().item<int64_t>() >= 0 && t.max().item<int64_t>() < table.size(0)), op,
              ": t must be in [0, ", table.size(0), ")");
}

}  // namespace fastar
