// CPU registration of the blur_pool family.
#include "torch/blur_pool.h"

#include <torch/library.h>

#include "cpu/blur_pool.h"

namespace fastar {

static at::Tensor blur_pool_cpu(const at::Tensor& x) {
  check_blur_pool(x, at::kCPU);
  return cpu::blur_pool(x);
}

static at::Tensor blur_pool_backward_cpu(const at::Tensor& grad, int64_t height, int64_t width) {
  check_blur_pool_backward(grad, height, width, at::kCPU);
  return cpu::blur_pool_backward(grad, height, width);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("blur_pool", &fastar::blur_pool_cpu);
  m.impl("blur_pool_backward", &fastar::blur_pool_backward_cpu);
}
