// dropout on the GPU: the boundary between the torch glue and the kernel (no torch types here).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace fastar::kernels {

// out[e] = x[e] * scale where element e is kept (kernels/dropout/philox.h), else x[e] * 0 (NaN for NaN and inf, as
// torch's dropout); x and out contiguous, n elements.
struct DropoutParams {
  const void* x;       // (n,) of dtype
  void* out;           // (n,) of dtype
  int64_t n;           // elements
  uint64_t seed;       // Philox key
  uint32_t threshold;  // dropout_threshold(p)
  double scale;        // 1 / (1 - p) (0 when p = 1), rounded to float32 for the 16- and 32-bit dtypes
  Dtype dtype;         // f32, bf16, f16 or f64
};

// Any other dtype or n < 0 is cudaErrorInvalidValue.
cudaError_t dropout_launch(const DropoutParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
