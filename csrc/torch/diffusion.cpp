// CPU registration of the diffusion family.
#include "torch/diffusion.h"

#include <torch/library.h>

#include "cpu/diffusion.h"

namespace fastar {

static at::Tensor diffusion_sample_cpu(const at::Tensor& z, at::TensorList weights, const at::Tensor& schedule,
                                       double temperature, double cfg, std::optional<at::Generator> generator) {
  const int64_t depth = check_diffusion_sample(z, weights, schedule, cfg, at::kCPU);
  return cpu::diffusion_sample(z, weights, depth, schedule, temperature, cfg, generator);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("diffusion_sample", &fastar::diffusion_sample_cpu); }
