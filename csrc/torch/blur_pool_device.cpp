// CUDA (and simt) registration of the blur_pool family: shared checks, then the params struct of the kernels.
#include "kernels/blur_pool/blur_pool.h"
#include "torch/blur_pool.h"
#include "torch/device.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace fastar {

static at::Tensor run(const at::Tensor& in, int64_t height, int64_t width, bool forward) {
  DeviceScope scope(in);
  const int64_t B = in.size(0), C = in.size(1);
  at::Tensor out = forward ? at::empty({B, C, height / 2, width / 2}, in.options())
                           : at::empty({B, C, height, width}, in.options());
  kernels::BlurPoolParams params{};
  params.in = in.data_ptr(), params.out = out.data_ptr(), params.planes = B * C;
  params.height = height, params.width = width, params.dtype = kernel_dtype(in.scalar_type());
  if (forward)
    check_launch(kernels::blur_pool_launch(params, scope.stream()), "blur_pool");
  else
    check_launch(kernels::blur_pool_backward_launch(params, scope.stream()), "blur_pool_backward");
  return out;
}

static at::Tensor blur_pool_device(const at::Tensor& x) {
  check_blur_pool(x, kDeviceType);
  return run(x, x.size(2), x.size(3), true);
}

static at::Tensor blur_pool_backward_device(const at::Tensor& grad, int64_t height, int64_t width) {
  check_blur_pool_backward(grad, height, width, kDeviceType);
  return run(grad, height, width, false);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) {
  m.impl("blur_pool", &fastar::blur_pool_device);
  m.impl("blur_pool_backward", &fastar::blur_pool_backward_device);
}
