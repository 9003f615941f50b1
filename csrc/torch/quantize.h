// Argument checks of the quantize family, shared by every backend's registration (cpu, cuda, simt).
#pragma once
#include <ATen/ATen.h>

namespace fastar {

inline bool is_cosine(c10::string_view metric) {
  TORCH_CHECK(metric == "l2" || metric == "cosine", "vq_nearest: metric must be 'l2' or 'cosine', got '",
              std::string(metric), "'");
  return metric == "cosine";
}

inline void check_vq_nearest(const at::Tensor& x, const at::Tensor& codebook, c10::DeviceType device) {
  TORCH_CHECK(x.dim() == 2, "vq_nearest: x must be (N, D), got ", x.dim(), " dims");
  TORCH_CHECK(codebook.dim() == 2, "vq_nearest: codebook must be (K, D), got ", codebook.dim(), " dims");
  TORCH_CHECK(codebook.size(1) == x.size(1), "vq_nearest: codebook has D=", codebook.size(1), " but x has D=",
              x.size(1));
  TORCH_CHECK(codebook.size(0) > 0, "vq_nearest: codebook must hold at least one code");
  TORCH_CHECK(codebook.size(0) <= INT32_MAX, "vq_nearest: codebook holds ", codebook.size(0),
              " codes, more than the 2^31-1 the kernels index");
  for (const auto& [name, t] : {std::pair{"x", &x}, std::pair{"codebook", &codebook}}) {
    const auto dt = t->scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, "vq_nearest: ", name,
                " must be float32, bfloat16 or float16, got ", dt);
    TORCH_CHECK(t->device().type() == device, "vq_nearest: ", name, " is on ", t->device(), ", expected ",
                device);
  }
}

}  // namespace fastar
