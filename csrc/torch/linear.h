// Argument checks of the linear family, shared by every backend's registration.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastar {

// x (M, K), weight (N, K), bias (N,) or none: contiguous, one dtype (float32 or float64; bfloat16 weights with float32
// x and bias), on `device`.
inline void check_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         c10::DeviceType device) {
  const char* op = "linear";
  TORCH_CHECK(x.dim() == 2, op, ": x must be (M, K), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be (N, K), got ", weight.sizes());
  TORCH_CHECK(x.size(1) == weight.size(1), op, ": x has ", x.size(1), " features, weight takes ", weight.size(1));
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() ||
                  (x.scalar_type() == at::kFloat && weight.scalar_type() == at::kBFloat16),
              op, ": weight is ", weight.scalar_type(), ", x is ", x.scalar_type(),
              ": they must match, or float32 x with bfloat16 weights");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), op, ": x and weight must be contiguous");
  TORCH_CHECK(x.device().type() == device && weight.device() == x.device(), op, ": x is on ", x.device(),
              ", weight on ", weight.device(), ", expected ", device);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be (", weight.size(0),
                ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->is_contiguous() && bias->device() == x.device(),
                op, ": bias must be contiguous ", x.scalar_type(), " on ", x.device());
  }
}

// grad (M, N) and x (M, K) float32 on `device`, each with a unit stride in one of its dims (a GEMM reads it in place).
inline void check_linear_weight_grad(const at::Tensor& grad, const at::Tensor& x, c10::DeviceType device) {
  const char* op = "linear_weight_grad";
  TORCH_CHECK(grad.dim() == 2, op, ": grad must be (M, N), got ", grad.sizes());
  TORCH_CHECK(x.dim() == 2, op, ": x must be (M, K), got ", x.sizes());
  TORCH_CHECK(grad.size(0) == x.size(0), op, ": grad has ", grad.size(0), " rows, x ", x.size(0));
  for (const auto* t : {&grad, &x}) {
    const char* name = t == &grad ? "grad" : "x";
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->device().type() == device, op, ": ", name, " is on ", t->device(), ", expected ", device);
    TORCH_CHECK(t->stride(0) == 1 || t->stride(1) == 1 || t->numel() <= 1, op, ": ", name,
                " must have a unit stride in one dim, got ", t->strides());
  }
}

}  // namespace fastar
