// sample_categorical on the GPU: the boundary between the torch glue and the kernel (no torch types here).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace fastar::kernels {

struct SampleCategoricalParams {
  const void* logits;     // (rows, V) row-major, contiguous, of `dtype`
  const float* race;      // (rows, V) Exp(1) draws, one per token (torch's generator, in the glue)
  int64_t* indices;       // (rows,) out: the drawn token, -1 on a row without a finite logit
  int64_t rows;           // 0 launches nothing
  int V;                  // tokens per row, >= 1
  Dtype dtype;            // of logits (f32, bf16 or f16); fp32 math
  float inv_temperature;  // 1 / temperature, clamped to FLT_MAX so that temperature -> 0 is the argmax
  int top_k;              // 0 or >= V: off
  float top_p;            // in [0, 1]; 1: off
  float min_prob;         // in [0, 1]; 0: off
};

// Enqueues the draw on `stream`; returns the launch error (cudaErrorInvalidValue for bad sizes).
cudaError_t sample_categorical_launch(const SampleCategoricalParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
