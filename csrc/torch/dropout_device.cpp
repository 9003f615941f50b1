// CUDA (and simt) registration of the dropout family: shared checks, then the params struct of the kernel.
#include "kernels/dropout/dropout.h"
#include "kernels/dropout/philox.h"
#include "torch/device.h"
#include "torch/dropout.h"

#include <ATen/ops/empty_like.h>
#include <torch/library.h>

namespace fastar {

static at::Tensor dropout_device(const at::Tensor& x, int64_t seed, double p) {
  check_dropout(x, p, kDeviceType);
  DeviceScope scope(x);
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  kernels::DropoutParams params{};
  params.x = x.data_ptr(), params.out = out.data_ptr(), params.n = x.numel(), params.seed = uint64_t(seed);
  params.threshold = kernels::dropout_threshold(p), params.scale = kernels::dropout_scale(p);
  params.dtype = kernel_dtype(x.scalar_type());
  check_launch(kernels::dropout_launch(params, scope.stream()), "dropout");
  return out;
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) { m.impl("dropout", &fastar::dropout_device); }
