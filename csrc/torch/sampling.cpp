// CPU registration of the sampling family.
#include "torch/sampling.h"

#include <torch/library.h>

#include "cpu/sampling.h"

namespace fastar {

static at::Tensor sample_categorical_cpu(const at::Tensor& logits, const at::Tensor& race, double temperature,
                                         int64_t top_k, double top_p, double min_prob) {
  check_sample_categorical(logits, race, temperature, top_k, top_p, min_prob, at::kCPU, /*words_ok=*/true);
  return cpu::sample_categorical(logits, race, temperature, top_k, top_p, min_prob);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("sample_categorical", &fastar::sample_categorical_cpu); }
