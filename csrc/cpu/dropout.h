// CPU kernel of the dropout family.
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar::cpu {

// x contiguous (checked by torch/dropout.h) -> x with the elements Philox drops under seed zeroed and the others
// scaled by 1 / (1 - p) (kernels/dropout/philox.h: the CUDA kernel's mask).
at::Tensor dropout(const at::Tensor& x, int64_t seed, double p);

}  // namespace fastar::cpu
