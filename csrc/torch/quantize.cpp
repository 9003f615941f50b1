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

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("vq_nearest", &fastar::vq_nearest_cpu); }
