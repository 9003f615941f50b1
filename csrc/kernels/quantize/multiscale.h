// VAR's multi-scale residual quantization on the GPU: the boundary between the torch glue and the kernels (no torch
// types). Maps are NHWC (a channels_last (B, C, H, H) tensor): each pixel is C contiguous values.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace fastar::kernels {

constexpr int kMsqMaxScales = 32;  // scales per launch; the glue splits longer lists

// Per scale s: gather the (pn_s, pn_s) codes and bicubic-upsample them to H x H (torch's bicubic: A = -0.75,
// align_corners=False, border clamped; a plain gather at pn_s == H).
struct MsqUpParams {
  const void* src;      // idx ? codebook (V, C) : rows (B, cells, C), of `dtype`
  const int64_t* idx;   // (B, cells) code indices, or null; an index outside [0, V) gives NaN outputs
  void* out;            // (S, B, H, H, C) NHWC, of src's type
  int64_t V;            // codes in the codebook (when idx)
  int B, C, H, S;       // batch, channels, output side, scales in this launch
  int cells;            // row stride of idx / src in cells: sum over all scales of pn^2 (not only this launch's)
  int pn[kMsqMaxScales];      // patch size of each scale, 1 <= pn <= H
  int offset[kMsqMaxScales];  // first cell of each scale within a row of idx / src
  Dtype dtype;                // of src and out: f32, or f64 (the float64 gradcheck path)
};

// Per scale s: rows of scale s = area-down(f_hat + h[0] + ... + h[s], pn_s) (torch's adaptive average pooling bins;
// none when pn_s == 0), then f_hat += h[0] + ... + h[S-1] in place, the sums in that order per pixel (as repeated
// in-place updates round them). Two launches: the downs of all scales at once, then an elementwise update.
struct MsqAddDownParams {
  float* f_hat;                      // (B, H, H, C), updated in place
  const float* h[kMsqMaxScales];     // (B, H, H, C) per scale
  float* rows;                       // (B, cells, C) out
  int B, C, H, S;                    // batch, channels, side, scales in this launch
  int cells;                         // row stride of `rows` in cells
  int pn[kMsqMaxScales];             // 0 <= pn <= H
  int offset[kMsqMaxScales];         // first cell of each scale within a row of `rows`
};

// Channels up to which msq_residual_search runs fused: the block's 64 rows of C values stay in shared memory
// (C * 272 bytes, within the 48 KB a block gets without opting in). Above it, the rows go through `rows`.
constexpr int kMsqFusedMaxC = 160;

// One scale of VAR's encode loop: f_hat += h, f_rest -= h (when h; elementwise over the whole batch), then
// indices = nearest code (plain squared L2, lowest index on ties) of each row of area-down(f_rest, pn): the down
// computes each block's 64 rows straight into shared memory and the vq_nearest tile code searches them
// (at pn == H the rows are f_rest itself).
struct MsqResidualSearchParams {
  float* f_hat;           // (B, H, H, C), updated in place
  float* f_rest;          // (B, H, H, C), updated in place
  const float* h;         // (B, H, H, C) or null (no update)
  const float* codebook;  // (V, C)
  int64_t* indices;       // (B, pn * pn) out
  float* rows;            // (B, pn * pn, C) scratch when C > kMsqFusedMaxC and pn < H, else unused
  int B, C, H, pn, V;     // batch, channels, side, patch size (1 <= pn <= H), codes (>= 1)
};

// Enqueue on `stream`; return the launch error (cudaErrorInvalidValue for bad sizes).
cudaError_t msq_up_launch(const MsqUpParams& p, cudaStream_t stream);
cudaError_t msq_add_down_launch(const MsqAddDownParams& p, cudaStream_t stream);
cudaError_t msq_residual_search_launch(const MsqResidualSearchParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
