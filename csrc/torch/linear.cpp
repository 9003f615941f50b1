// CPU registration of the linear family.
#include "torch/linear.h"

#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "cpu/blas.h"
#include "cpu/linear.h"

namespace fastar {

static at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_linear(x, weight, bias, at::kCPU);
  return cpu::linear(x, weight, bias);
}

// grad^T x by the float32 GEMM library (no CUDA kernel: on a GPU cuBLAS's GEMMs are the path).
static at::Tensor linear_weight_grad_cpu(const at::Tensor& grad, const at::Tensor& x) {
  check_linear_weight_grad(grad, x, at::kCPU);
  if (grad.size(0) == 0) return at::zeros({grad.size(1), x.size(1)}, x.options());
  at::Tensor out = at::empty({grad.size(1), x.size(1)}, x.options());
  if (out.numel()) cpu::blas::mm_f32(out, grad.t(), x);
  return out;
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("linear", &fastar::linear_cpu);
  m.impl("linear_weight_grad", &fastar::linear_weight_grad_cpu);
}
