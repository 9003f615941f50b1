// linear on the GPU: the boundary between the torch glue and the kernel (no torch types here).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace fastar::kernels {

// y (M, N) = x (M, K) weight (N, K)^T + bias (N,), all contiguous, for few rows M (decoding): each weight row is
// read once per 4 rows of x.
struct LinearParams {
  const void* x;       // (M, K)
  const void* weight;  // (N, K)
  const void* bias;    // (N,) or nullptr
  void* y;             // (M, N)
  int64_t M, N, K;
  Dtype dtype;         // of x, bias and y: f32 or f64
  Dtype weight_dtype;  // dtype, or bf16 with f32 (widened exactly: half the bytes to read)
};

// Any other dtype pair or a negative size is cudaErrorInvalidValue.
cudaError_t linear_launch(const LinearParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
