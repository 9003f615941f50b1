// Argument checks of the conv family.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastar {

// x (B, Ci, H, W) float32 contiguous, weight (Co, Ci, 3, 3) float32 contiguous, bias (Co,) float32 or None, all on
// `device`.
inline void check_conv3x3(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          c10::DeviceType device) {
  const char* op = "conv3x3";
  TORCH_CHECK(x.dim() == 4, op, ": x must be (B, C_in, H, W), got ", x.dim(), " dims");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 && weight.size(3) == 3, op,
              ": weight must be (C_out, ", x.size(1), ", 3, 3), got ", weight.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"x", &x}, {"weight", &weight}}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
    TORCH_CHECK(t->device().type() == device, op, ": ", name, " is on ", t->device(), ", expected ", device);
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be (", weight.size(0),
                ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == at::kFloat, op, ": bias must be float32, got ", bias->scalar_type());
    TORCH_CHECK(bias->is_contiguous() && bias->device().type() == device, op, ": bias must be contiguous on ",
                device);
  }
}

}  // namespace fastar
