// CPU registrations of the quantize family.
#include "cpu/quantize.h"
#include "torch/quantize.h"

#include <torch/library.h>

namespace fastar {

static std::tuple<at::Tensor, at::Tensor> vq_nearest_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                         c10::string_view metric) {
  check_vq_nearest(x, codebook, at::kCPU);
  return cpu::vq_nearest(x, codebook, is_cosine(metric));
}

static at::Tensor msq_residual_search_cpu(at::Tensor& f_hat, at::Tensor& f_rest, const std::optional<at::Tensor>& h,
                                          const at::Tensor& codebook, int64_t pn) {
  check_msq_residual_search(f_hat, f_rest, h, codebook, pn, at::kCPU);
  return cpu::msq_residual_search(f_hat, f_rest, h, codebook, pn);
}

static at::Tensor msq_up_cpu(const at::Tensor& src, const std::optional<at::Tensor>& idx,
                             c10::IntArrayRef patch_nums, int64_t H) {
  const int64_t B = check_msq_up(src, idx, patch_nums, H, at::kCPU);
  return cpu::msq_up(src, idx, patch_nums, H, B);
}

static at::Tensor msq_add_down_cpu(at::Tensor& f_hat, at::TensorList h, c10::IntArrayRef patch_nums) {
  const int64_t cells = check_msq_add_down(f_hat, h, patch_nums, at::kCPU);
  return cpu::msq_add_down(f_hat, h, patch_nums, cells);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("vq_nearest", &fastar::vq_nearest_cpu);
  m.impl("msq_residual_search", &fastar::msq_residual_search_cpu);
  m.impl("msq_up", &fastar::msq_up_cpu);
  m.impl("msq_add_down", &fastar::msq_add_down_cpu);
}
