// dropout on the CPU: threads split the Philox counters (four elements each; float32 on vectors of counters,
// cpu/dropout_isa.cpp); the mask is made in registers and never stored, so the backward is this kernel on the
// gradient with the same seed. Semantics: fastar/reference/dropout.py.
#include "cpu/dropout.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>

#include <type_traits>

#include "cpu/isa.h"
#include "kernels/dropout/philox.h"

namespace fastar::cpu {
namespace {

template <class T, class S>
void run(const T* x, T* out, int64_t n, uint64_t seed, uint32_t threshold, S scale) {
  const int64_t counters = (n + 3) / 4;
  at::parallel_for(0, counters, 4096, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      uint32_t w[4];
      kernels::philox4x32(uint64_t(c), seed, w);
      const int64_t e0 = 4 * c;
      for (int j = 0; j < 4 && e0 + j < n; ++j)
        out[e0 + j] = T(S(x[e0 + j]) * ((w[j] >> 8) >= threshold ? scale : S(0)));  // times 0: NaN, inf stay NaN
    }
  });
}

}  // namespace

at::Tensor dropout(const at::Tensor& x, int64_t seed, double p) {
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const uint32_t threshold = kernels::dropout_threshold(p);
  const double scale = kernels::dropout_scale(p);
  if (x.scalar_type() == at::kFloat) {  // training's dtype: Philox on vectors of counters (cpu/dropout_isa.cpp)
    const float* xp = x.data_ptr<float>();
    float* op = out.data_ptr<float>();
    const int64_t n = x.numel();
    at::parallel_for(0, (n + 3) / 4, 4096, [&](int64_t c0, int64_t c1) {
      isa().dropout->f32(xp, op, n, c0, c1, uint64_t(seed), threshold, float(scale));
    });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dropout", [&] {
    if constexpr (std::is_same_v<scalar_t, double>)
      run(x.data_ptr<double>(), out.data_ptr<double>(), x.numel(), uint64_t(seed), threshold, scale);
    else
      run(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.numel(), uint64_t(seed), threshold, float(scale));
  });
  return out;
}

}  // namespace fastar::cpu
