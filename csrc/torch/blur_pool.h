// Argument checks of the blur_pool family, shared by every backend's registration.
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar {

inline void check_blur_pool_tensor(const char* op, const char* name, const at::Tensor& t, c10::DeviceType device) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kDouble,
              op, ": ", name, " must be float32, bfloat16, float16 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be (B, C, H, W), got ", t.dim(), " dims");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " is on ", t.device(), ", expected ", device);
}

// x (B, C, H, W) contiguous on `device`, H and W >= 2.
inline void check_blur_pool(const at::Tensor& x, c10::DeviceType device) {
  check_blur_pool_tensor("blur_pool", "x", x, device);
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "blur_pool: x must be at least 2 x 2, got ", x.size(2), " x ",
              x.size(3));
}

// grad (B, C, height / 2, width / 2) contiguous on `device`, height and width >= 2.
inline void check_blur_pool_backward(const at::Tensor& grad, int64_t height, int64_t width, c10::DeviceType device) {
  const char* op = "blur_pool_backward";
  check_blur_pool_tensor(op, "grad", grad, device);
  TORCH_CHECK(height >= 2 && width >= 2, op, ": height and width must be >= 2, got ", height, " x ", width);
  TORCH_CHECK(grad.size(2) == height / 2 && grad.size(3) == width / 2, op, ": grad must be (B, C, ", height / 2, ", ",
              width / 2, ") for an input of ", height, " x ", width, ", got ", grad.sizes());
}

}  // namespace fastar
