// blur_pool on the GPU: the boundary between the torch glue and the kernels (no torch types here).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace fastar::kernels {

// planes (B C) of height x width: in is (planes, height, width) and out (planes, height / 2, width / 2) for the
// forward, the other way round for the backward (fastar/reference/blur_pool.py); both contiguous, of dtype.
struct BlurPoolParams {
  const void* in;
  void* out;
  int64_t planes;
  int64_t height, width;  // the forward's input, >= 2
  Dtype dtype;            // f32, bf16, f16 or f64
};

// Any other dtype, height or width < 2, or planes < 0 is cudaErrorInvalidValue.
cudaError_t blur_pool_launch(const BlurPoolParams& p, cudaStream_t stream);
cudaError_t blur_pool_backward_launch(const BlurPoolParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
