// CPU registration of transformer_decode (torch/transformer_decode.h): the loop on fastar's CPU kernels.
#include "torch/transformer_decode.h"

#include <torch/library.h>

namespace fastar {

static at::Tensor transformer_decode_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList k_caches,
                                         at::TensorList v_caches, int64_t cache_len, at::IntArrayRef mask_kinds,
                                         at::IntArrayRef mask_ints, int64_t heads, double eps,
                                         c10::string_view approximate, c10::string_view block,
                                         const std::optional<at::Tensor>& rope) {
  static const DecodeOps ops("fastar");
  return transformer_decode(ops, x, weights, k_caches, v_caches, cache_len, mask_kinds, mask_ints, heads, eps,
                            approximate, block, rope);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("transformer_decode", &fastar::transformer_decode_cpu); }
