// CPU registration of the diffusion family.
#include "torch/diffusion.h"

#include <torch/library.h>

#include "cpu/diffusion.h"

namespace fastar {

static at::Tensor diffusion_sample_cpu(const at::Tensor& z, at::TensorList weights, const at::Tensor& schedule,
                                       double temperature, double cfg, std::optional<at::Generator> generator,
                                       bool bf16) {
  const int64_t depth = check_diffusion_sample(z, weights, schedule, cfg, at::kCPU);
  return cpu::diffusion_sample(z, weights, depth, schedule, temperature, cfg, generator, bf16);
}

static std::tuple<at::Tensor, at::Tensor> diffusion_loss_cpu(const at::Tensor& model_output, const at::Tensor& x_start,
                                                             const at::Tensor& noise, const at::Tensor& t,
                                                             const at::Tensor& table) {
  const char* op = "diffusion_loss";
  TORCH_CHECK(x_start.dim() == 2, op, ": x_start must be (N, C), got ", x_start.dim(), " dims");
  const int64_t N = x_start.size(0), C = x_start.size(1);
  TORCH_CHECK(x_start.scalar_type() == at::kFloat || x_start.scalar_type() == at::kDouble, op,
              ": x_start must be float32 or float64, got ", x_start.scalar_type());
  for (auto [name, tensor, shape] : {std::tuple{"model_output", &model_output, std::vector<int64_t>{N, 2 * C}},
                                     std::tuple{"x_start", &x_start, std::vector<int64_t>{N, C}},
                                     std::tuple{"noise", &noise, std::vector<int64_t>{N, C}}}) {
    TORCH_CHECK(tensor->sizes() == c10::IntArrayRef(shape), op, ": ", name, " must have shape ", c10::IntArrayRef(shape),
                ", got ", tensor->sizes());
    TORCH_CHECK(tensor->scalar_type() == x_start.scalar_type() && tensor->device().is_cpu(), op, ": ", name,
                " must be a CPU tensor of x_start's dtype ", x_start.scalar_type(), ", got ", tensor->scalar_type());
  }
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N && t.scalar_type() == at::kLong, op, ": t must be (", N,
              ",) int64, got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(table.dim() == 2 && table.size(1) == cpu::kLossTableColumns && table.scalar_type() == at::kDouble &&
              table.is_contiguous(), op, ": table must be (T, ", cpu::kLossTableColumns,
              ") contiguous float64, got ", table.sizes());
  TORCH_CHECK(N == 0 || (t.min().item<int64_t>() >= 0 && t.max().item<int64_t>() < table.size(0)), op,
              ": t must be in [0, ", table.size(0), ")");
  return cpu::diffusion_loss(model_output, x_start, noise, t, table);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("diffusion_sample", &fastar::diffusion_sample_cpu);
  m.impl("diffusion_loss", &fastar::diffusion_loss_cpu);
}
