// CPU registration of the mlp family (no CUDA kernel: on a GPU cuBLASLt's GEMMs with a GELU epilogue are the path;
// this kernel's gain is keeping a narrow MLP's hidden activations in a CPU core's cache).
#include "torch/mlp.h"

#include <torch/library.h>

#include "cpu/mlp.h"

namespace fastar {

static at::Tensor mlp_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                          const at::Tensor& b2, const std::optional<at::Tensor>& residual, int64_t softmax_group) {
  check_mlp(x, w1, b1, w2, b2, residual, softmax_group, at::kCPU);
  return cpu::mlp(x, w1, b1, w2, b2, residual, softmax_group);
}

static void mlp_out_cpu(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                        const at::Tensor& b2, const std::optional<at::Tensor>& residual, int64_t softmax_group,
                        const at::Tensor& out) {
  check_mlp(x, w1, b1, w2, b2, residual, softmax_group, at::kCPU);
  check_mlp_out(x, residual, w2.size(0), out, at::kCPU);
  cpu::mlp_out(x, w1, b1, w2, b2, residual, softmax_group, out);
}

static std::tuple<at::Tensor, at::Tensor> gelu_with_derivative_cpu(const at::Tensor& x,
                                                                   c10::string_view approximate) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "gelu_with_derivative: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "gelu_with_derivative: x is on ", x.device(), ", expected cpu");
  TORCH_CHECK(approximate == "none" || approximate == "tanh",
              "gelu_with_derivative: approximate must be 'none' or 'tanh', got '", approximate, "'");
  return cpu::gelu_with_derivative(x.contiguous(), approximate == "tanh");
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("mlp", &fastar::mlp_cpu);
  m.impl("mlp.out", &fastar::mlp_out_cpu);
  m.impl("gelu_with_derivative", &fastar::gelu_with_derivative_cpu);
}
