// CPU registrations of the multi_axis family.
#include "torch/multi_axis.h"

#include <torch/library.h>

#include "cpu/multi_axis.h"

namespace fastar {

static std::tuple<at::Tensor, at::Tensor> multi_axis_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                       const at::Tensor& v, int64_t block_size,
                                                                       double scale) {
  check_multi_axis("multi_axis_attention_fwd", q, k, v, block_size, at::kCPU, true);
  return cpu::multi_axis_attention_fwd(q, k, v, block_size, scale);
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_axis_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, int64_t block_size, double scale) {
  check_multi_axis("multi_axis_attention_bwd", q, k, v, block_size, at::kCPU, true);
  check_multi_axis_bwd(dout, q, out, lse);
  return cpu::multi_axis_attention_bwd(dout, q, k, v, out, lse, block_size, scale);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) {
  m.impl("multi_axis_attention_fwd", &fastar::multi_axis_attention_fwd_cpu);
  m.impl("multi_axis_attention_bwd", &fastar::multi_axis_attention_bwd_cpu);
}
