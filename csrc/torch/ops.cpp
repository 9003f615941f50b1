#include "torch/ops.h"

TORCH_LIBRARY(fastar, m) { fastar::define_ops(m); }
