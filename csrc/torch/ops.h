// The one list of fastar's op schemas. TORCH_LIBRARY(fastar) and the test-only
// TORCH_LIBRARY(fastar_simt) both call define_ops, so the backends cannot drift apart.
#pragma once
#include <torch/library.h>

namespace fastar {

inline void define_ops(torch::Library& m) {
  // x (N, D), codebook (K, D) -> indices (N,) int64, squared distances (N,) float32.
  m.def("vq_nearest(Tensor x, Tensor codebook, str metric) -> (Tensor, Tensor)");
}

}  // namespace fastar
