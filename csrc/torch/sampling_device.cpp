// CUDA (and simt) registration of the sampling family: shared checks, then the params struct of the kernel.
#include "kernels/sampling/sampling.h"
#include "torch/device.h"
#include "torch/sampling.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

namespace fastar {

static at::Tensor sample_categorical_device(const at::Tensor& logits, const at::Tensor& race, double temperature,
                                            int64_t top_k, double top_p, double min_prob) {
  const char* op = "sample_categorical";
  check_sample_categorical(logits, race, temperature, top_k, top_p, min_prob, kDeviceType, /*words_ok=*/false);
  DeviceScope scope(logits);
  at::Tensor out = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  kernels::SampleCategoricalParams p{};
  p.logits = logits.data_ptr(), p.race = race.data_ptr<float>(), p.indices = out.data_ptr<int64_t>();
  p.rows = logits.size(0), p.V = int(logits.size(1)), p.dtype = kernel_dtype(logits.scalar_type());
  p.inv_temperature = float(std::min(1.0 / temperature, double(FLT_MAX)));
  p.top_k = int(std::min<int64_t>(top_k, INT32_MAX)), p.top_p = float(top_p), p.min_prob = float(min_prob);
  check_launch(kernels::sample_categorical_launch(p, scope.stream()), op);
  return out;
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(FASTAR_DEVICE_LIBRARY, FASTAR_DEVICE_KEY, m) {
  m.impl("sample_categorical", &fastar::sample_categorical_device);
}
