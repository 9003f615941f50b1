// CPU kernels of the sampling family.
#pragma once
#include <ATen/core/Tensor.h>

namespace fastar::cpu {

// One draw per row (schema in torch/ops.h; checked by torch/sampling.h): logits (R, V) contiguous float32, bfloat16
// or float16, race (R, V) float32 Exp(1) draws or int64 generator words -> indices (R,) int64.
at::Tensor sample_categorical(const at::Tensor& logits, const at::Tensor& race, double temperature, int64_t top_k,
                              double top_p, double min_prob);

}  // namespace fastar::cpu
