// CPU registration of the conv family (no CUDA kernel: on a GPU cuDNN's convolutions are the fast path).
#include "torch/conv.h"

#include <torch/library.h>

#include "cpu/conv.h"

namespace fastar {

static at::Tensor conv3x3_weights_cpu(const at::Tensor& weight) {
  check_conv3x3_weights(weight, at::kCPU);
  return cpu::conv3x3_weights(weight);
}

static at::Tensor conv3x3_cpu(const at::Tensor& x, const at::Tensor& u, const std::optional<at::Tensor>& bias,
                              int64_t c_out) {
  check_conv3x3(x, u, bias, c_out, at::kCPU);
  return cpu::conv3x3(x, u, bias, c_out);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("conv3x3_weights", &fastar::conv3x3_weights_cpu);
  m.impl("conv3x3", &fastar::conv3x3_cpu);
}
