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
  check_diffusion_loss(model_output, x_start, noise, t, table, at::kCPU);
  return cpu::diffusion_loss(model_output, x_start, noise, t, table);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("diffusion_sample", &fastar::diffusion_sample_cpu);
  m.impl("diffusion_loss", &fastar::diffusion_loss_cpu);
}
