// CUDA (and simt) registration of transformer_decode (torch/transformer_decode.h): the loop on the device's kernels.
#include "torch/device.h"
#include "torch/transformer_decode.h"

#include <torch/library.h>

#define FASTAR_STR2(x) #x
#define FASTAR_STR(x) FASTAR_STR2(x)

namespace fastar {

static at::Tensor transformer_decode_device(const at::Tensor& x, at::TensorList weights, at::TensorList k_caches,
                                            at::TensorList v_caches, int64_t cache_len, at::IntArrayRef mask_kinds,
                                            at::IntArrayRef mask_ints, int64_t heads, double eps,
                                            c10::string_view approximate, c10::string_view block,
                                         const std::optional<at::Tensor>& rope) {
  static const DecodeOps ops(FASTAR_STR(FASTAR_DEVICE_LIBRARY));
  TORCH_CHECK(x.scalar_type() == at::kFloat, "transformer_decode: x must be float32 on ", x.device(),
              " (the device's attention takes no float64; float64 runs on the CPU), got ", x.scalar_type());
  DeviceScope scope(x);
  return transformer_decode(ops, x, weights, k_caches, v_caches, cache_len, mask_kinds, mask_ints, heads, eps,
                            approximate, block, rope);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) {
  m.impl("transformer_decode", &fastar::transformer_decode_device);
}
