// CPU registration of the linear family.
#include "torch/linear.h"

#include <torch/library.h>

#include "cpu/linear.h"

namespace fastar {

static at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear(x, weight, bias, at::kCPU);
  return cpu::linear(x, weight, bias);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("linear", &fastar::linear_cpu); }
