// Argument checks of the conv family.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

#include "cpu/conv_isa.h"

namespace fastar {

inline void check_conv_tensor(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " is on ", t.device(), ", expected ", device);
}

// weight (Co, Ci, 3, 3) float32 contiguous on `device`.
inline void check_conv3x3_weights(const at::Tensor& weight, c10::DeviceType device) {
  const char* op = "conv3x3_weights";
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3, op,
              ": weight must be (C_out, C_in, 3, 3), got ", weight.sizes());
  check_conv_tensor(op, "weight", weight, device);
}

// x (B, Ci, H, W) and u (16, ceil(c_out / 12), Ci, 12) float32 contiguous, bias (c_out,) float32 or None, all on
// `device`.
inline void check_conv3x3(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias,
                          int64_t c_out, c10::DeviceType device) {
  const char* op = "conv3x3";
  constexpr int64_t P = cpu::kConvPack;
  TORCH_CHECK(x.dim() == 4, op, ": x must be (B, C_in, H, W), got ", x.dim(), " dims");
  TORCH_CHECK(c_out >= 1, op, ": c_out must be at least 1, got ", c_out);
  TORCH_CHECK(u.dim() == 4 && u.size(0) == 16 && u.size(1) == (c_out + P - 1) / P && u.size(2) == x.size(1) &&
                  u.size(3) == P,
              op, ": u must be conv3x3_weights of a (", c_out, ", ", x.size(1), ", 3, 3) weight: (16, ",
              (c_out + P - 1) / P, ", ", x.size(1), ", ", P, "), got ", u.sizes());
  check_conv_tensor(op, "x", x, device);
  check_conv_tensor(op, "u", u, device);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == c_out, op, ": bias must be (", c_out, ",), got ",
                bias->sizes());
    check_conv_tensor(op, "bias", *bias, device);
  }
}

}  // namespace fastar
