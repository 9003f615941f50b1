// CPU registration of the conv family (no CUDA kernel: on a GPU cuDNN's convolutions are the fast path).
#include "torch/conv.h"

#include <torch/library.h>

#include "cpu/conv.h"

namespace fastar {

static at::Tensor conv3x3_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_conv3x3(x, weight, bias, at::kCPU);
  return cpu::conv3x3(x, weight, bias);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("conv3x3", &fastar::conv3x3_cpu); }
