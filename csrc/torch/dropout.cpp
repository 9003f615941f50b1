// CPU registration of the dropout family.
#include "torch/dropout.h"

#include <torch/library.h>

#include "cpu/dropout.h"

namespace fastar {

static at::Tensor dropout_cpu(const at::Tensor& x, int64_t seed, double p) {
  check_dropout(x, p, at::kCPU);
  return cpu::dropout(x, seed, p);
}

}  // namespace fastar

TORCH_LIBRARY_IMPL(fastar, CPU, m) { m.impl("dropout", &fastar::dropout_cpu); }
