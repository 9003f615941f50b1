// vq_nearest on the GPU: the boundary between the torch glue and the kernel (no torch types here).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace fastar::kernels {

struct VqNearestParams {
  const void* x;         // (n, d) row-major, contiguous, of `dtype`
  const void* codebook;  // (k, d) row-major, contiguous, of `dtype`
  int64_t* indices;      // (n,) out: index of the nearest code, lowest on ties, 0 when every distance is NaN
  float* distances;      // (n,) out, or null: ||x||^2 + ||e||^2 - 2 x.e of that code, in fp32
  int64_t n;             // rows of x; 0 launches nothing
  int k;                 // codes, >= 1
  int d;                 // vector size, >= 0
  Dtype dtype;           // of x and codebook (f32, bf16 or f16; the glue upcasts mixed pairs to f32); fp32 math
  bool cosine;           // L2-normalize both sides first (F.normalize, eps 1e-12), as LlamaGen's quantizer
};

// Enqueues the search on `stream`; returns the launch error (cudaErrorInvalidValue for bad sizes).
cudaError_t vq_nearest_launch(const VqNearestParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
