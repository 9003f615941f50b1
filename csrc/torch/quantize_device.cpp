// CUDA (and simt) registrations of the quantize family: checks, then the params struct of each kernel.
#include "kernels/quantize/vq_nearest.h"
#include "torch/device.h"
#include "torch/quantize.h"

#include <torch/library.h>

namespace fastar {

static kernels::VqDtype vq_dtype(at::ScalarType t) {
  return t == at::kBFloat16 ? kernels::VqDtype::bf16 : t == at::kHalf ? kernels::VqDtype::f16 : kernels::VqDtype::f32;
}

static std::tuple<at::Tensor, at::Tensor> vq_nearest_device(const at::Tensor& x, const at::Tensor& codebook,
                                                            c10::string_view metric) {
  check_vq_nearest(x, codebook, kDeviceType);
  const bool cosine = is_cosine(metric);
  TORCH_CHECK(x.size(1) <= INT32_MAX, "vq_nearest: x has D=", x.size(1), ", more than the 2^31-1 the kernel indexes");
  DeviceScope scope(x);
  // The kernel reads one element type: a mixed pair meets in float32, which loses nothing.
  const bool same = x.scalar_type() == codebook.scalar_type();
  const at::Tensor x_ND = (same ? x : x.to(at::kFloat)).contiguous();                // (N, D)
  const at::Tensor e_KD = (same ? codebook : codebook.to(at::kFloat)).contiguous();  // (K, D)
  at::Tensor idx = at::empty({x.size(0)}, x.options().dtype(at::kLong));    // (N,)
  at::Tensor dist = at::empty({x.size(0)}, x.options().dtype(at::kFloat));  // (N,)
  kernels::VqNearestParams p{};
  p.x = x_ND.data_ptr(), p.codebook = e_KD.data_ptr();
  p.indices = idx.data_ptr<int64_t>(), p.distances = dist.data_ptr<float>();
  p.n = x.size(0), p.k = int(e_KD.size(0)), p.d = int(e_KD.size(1));
  p.dtype = vq_dtype(x_ND.scalar_type()), p.cosine = cosine;
  check_launch(kernels::vq_nearest_launch(p, scope.stream()), "vq_nearest");
  return {idx, dist};
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) { m.impl("vq_nearest", &fastar::vq_nearest_device); }
