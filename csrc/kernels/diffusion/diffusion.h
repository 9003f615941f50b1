// The diffusion family on the GPU (no torch types here).
// diffusion_sample: the fused row passes between the GEMMs of MAR's head loop. The loop
// (csrc/torch/diffusion_device.cpp) runs the GEMMs (cuBLAS through at::mm) into the buffers below, without their
// bias, and one pass per gap: the passes add the biases and do SiLU, the gated residual with the next LayerNorm +
// modulation, and the DDPM update, as csrc/cpu/diffusion.cpp does per row on the CPU.
// diffusion_loss: DiffLoss's per-row training loss and its gradient in one pass, as csrc/cpu/diffusion_loss.cpp.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/diffusion/loss_math.h"
#include "kernels/dtype.h"

namespace fastar::kernels {

struct DiffusionParams {
  int N;  // rows of the head: [cond ; uncond] under cfg
  int M;  // rows of x carried: N / 2 under cfg (both halves read the conditional x_t), else N
  int W;  // head width
  int C;  // token channels
  int A;  // modulation row: [shift, scale, gate] per block, then the final [shift, scale]: (3 depth + 2) W
  const float* cond;     // (N, W) cond_embed(z) with its bias, once per call
  const float* in_wT;    // (C, W) input_proj's weight transposed
  const float* in_b;     // (W,) input_proj's bias
  const float* ada_b;    // (A,) the modulation GEMM's bias
  const float* final_b;  // (2C,) the output layer's bias
  float* sy;    // (N, W) SiLU(t_emb + cond): the modulation GEMM's input
  float* mod;   // (N, A) the modulation GEMM's output, bias not added
  float* hid;   // (N, W) the residual stream
  float* h;     // (N, W) LayerNorm-modulated stream (a block MLP's input), then the MLP's output
  float* a;     // (N, W) the block MLP's hidden layer
  float* out;   // (N, 2C) the output GEMM's result [eps, v], bias not added
  float* x;     // (M, C) x_t, updated in place
  const float* noise;  // (N, C) this step's noise; the first M rows are used
};

// One spaced step's coefficients (fastar/reference/diffusion.py SCHEDULE_COLUMNS) and the guidance.
struct DiffusionStep {
  float sqrt_recip, sqrt_recipm1, coef1, coef2, min_log, max_log;
  float cfg;          // eps = uncond + cfg (cond - uncond) when N = 2M
  float noise_scale;  // temperature, 0 on the last step
};

// sy = SiLU(t_emb + cond), t_emb (W,) this step's time embedding.
cudaError_t diffusion_silu_cond_launch(const DiffusionParams& p, const float* t_emb, cudaStream_t stream);
// hid = input_proj(x) (row r reads x row r % M), h = LN(hid; ln_w, ln_b) * (1 + scale) + shift of block 0.
cudaError_t diffusion_input_ln_launch(const DiffusionParams& p, const float* ln_w, const float* ln_b,
                                      cudaStream_t stream);
// a = SiLU(a + bias).
cudaError_t diffusion_bias_silu_launch(const DiffusionParams& p, const float* bias, cudaStream_t stream);
// hid += gate_b * (h + bias); h = LN(hid; ln_w, ln_b) modulated by block b + 1's (or, after the last block, the
// final layer's, ln_w = ln_b = null: no affine) shift and scale.
cudaError_t diffusion_residual_ln_launch(const DiffusionParams& p, int b, const float* bias, const float* ln_w,
                                         const float* ln_b, cudaStream_t stream);
// x = posterior mean + exp(log_var / 2) noise * noise_scale from out + final_b (eps cfg-combined, v of the row).
cudaError_t diffusion_update_launch(const DiffusionParams& p, const DiffusionStep& s, cudaStream_t stream);

struct DiffusionLossParams {
  const void* model_output;  // (N, 2C) the head's [eps, v], of dtype
  const void* x_start;       // (N, C) targets, of dtype
  const void* noise;         // (N, C) their noise, of dtype
  const int64_t* t;          // (N,) timesteps: rows of table (the glue checks the range; the kernel does not)
  const double* table;       // (T, kDiffusionLossColumns) loss_table, cast to dtype per row as the official code
  void* loss;                // (N,) out: MSE(eps) + VB in bits
  void* grad;                // (N, 2C) out: d loss / d model_output
  int64_t N;                 // rows
  int C;                     // token channels
  Dtype dtype;               // f32 or f64
};

// loss and grad from model_output; any other dtype, N < 0 or C < 1 is cudaErrorInvalidValue.
cudaError_t diffusion_loss_launch(const DiffusionLossParams& p, cudaStream_t stream);

}  // namespace fastar::kernels
