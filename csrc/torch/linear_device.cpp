// CUDA (and simt) registration of the linear family: shared checks, then the params struct of the kernel.
#include "kernels/linear/linear.h"
#include "torch/device.h"
#include "torch/linear.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace fastar {

static at::Tensor linear_device(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias) {
  check_linear(x, weight, bias, kDeviceType);
  DeviceScope scope(x);
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  kernels::LinearParams params{};
  params.x = x.data_ptr(), params.weight = weight.data_ptr(), params.y = y.data_ptr();
  params.bias = bias.has_value() && bias->defined() ? bias->data_ptr() : nullptr;
  params.M = x.size(0), params.N = weight.size(0), params.K = x.size(1);
  params.dtype = kernel_dtype(x.scalar_type()), params.weight_dtype = kernel_dtype(weight.scalar_type());
  check_launch(kernels::linear_launch(params, scope.stream()), "linear");
  return y;
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) { m.impl("linear", &fastar::linear_device); }
