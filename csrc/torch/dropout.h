// Argument checks of the dropout family, shared by every backend's registration.
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar {

// x contiguous float32 / bfloat16 / float16 / float64 on `device`, p in [0, 1].
inline void check_dropout(const at::Tensor& x, double p, c10::DeviceType device) {
  const char* op = "dropout";
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kDouble,
              op, ": x must be float32, bfloat16, float16 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  TORCH_CHECK(x.device().type() == device, op, ": x is on ", x.device(), ", expected ", device);
  TORCH_CHECK(p >= 0 && p <= 1, op, ": p must be in [0, 1], got ", p);
}

}  // namespace fastar
