// vq_nearest on the GPU: the boundary between the torch glue and the kernel (no torch types here).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
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
  int slices;            // codebook slices searched by separate blocks (grid y), then merged; <= 1: none. The
                         // launch uses vq_nearest_slices(*this); results are bitwise those of one slice
  void* workspace;       // vq_nearest_workspace_bytes(*this) bytes (each slice's candidate per row), or null if 0
};

// The slices a launch uses: p.slices clamped to [1, code tiles of 64] (and grid y's 65,535), then lowered to the
// fewest that keep the same tiles per slice.
int vq_nearest_slices(const VqNearestParams& p);

// The slices that give one block per multiprocessor (VAR's first scales have a few rows and 4,096 codes):
// 1 when the row blocks alone fill the device.
int vq_nearest_auto_slices(int64_t n, int k, int sm_count);

size_t vq_nearest_workspace_bytes(const VqNearestParams& p);

// Enqueues the search on `stream`; returns the launch error (cudaErrorInvalidValue for bad sizes or a missing
// workspace).
cudaError_t vq_nearest_launch(const VqNearestParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
