// VAR's multi-scale residual quantization on the GPU: the boundary between the torch glue and the kernels (no torch
// types). Maps are NHWC (a channels_last (B, C, H, H) tensor): each pixel is C contiguous values.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastar::kernels {

constexpr int kMsqMaxScales = 32;  // scales per launch; the glue splits longer lists

// Per scale s: gather the (pn_s, pn_s) codes and bicubic-upsample them to H x H (torch's bicubic: A = -0.75,
// align_corners=False, border clamped; a plain gather at pn_s == H).
struct MsqUpParams {
  const void* src;      // idx ? codebook (V, C) : rows (B, cells, C); float or double as `f64`
  const int64_t* idx;   // (B, cells) code indices, or null; an index outside [0, V) gives NaN outputs
  void* out;            // (S, B, H, H, C) NHWC, of src's type
  int64_t V;            // codes in the codebook (when idx)
  int B, C, H, S;       // batch, channels, output side, scales in this launch
  int cells;            // row stride of idx / src in cells: sum over all scales of pn^2 (not only this launch's)
  int pn[kMsqMaxScales];      // patch size of each scale, 1 <= pn <= H
  int offset[kMsqMaxScales];  // first cell of each scale within a row of idx / src
  bool f64;                   // src and out are double (the float64 gradcheck path), else float
};

// Per scale s: f_hat += h[s]; f_rest -= h[s] (when f_rest); then rows of scale s = area-down(f_rest or f_hat, pn_s)
// (torch's adaptive average pooling bins), none when pn_s == 0. One block per image, so each scale's down sees
// the whole updated image.
struct MsqUpdateDownParams {
  float* f_hat;                      // (B, H, H, C), updated in place
  float* f_rest;                     // (B, H, H, C) or null, updated in place
  const float* h[kMsqMaxScales];     // (B, H, H, C) per scale, or null (no update)
  float* rows;                       // (B, cells, C) out
  int B, C, H, S;                    // batch, channels, side, scales in this launch
  int cells;                         // row stride of `rows` in cells
  int pn[kMsqMaxScales];             // 0 <= pn <= H
  int offset[kMsqMaxScales];         // first cell of each scale within a row of `rows`
};

// Enqueue on `stream`; return the launch error (cudaErrorInvalidValue for bad sizes).
cudaError_t msq_up_launch(const MsqUpParams& p, cudaStream_t stream);
cudaError_t msq_update_down_launch(const MsqUpdateDownParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
