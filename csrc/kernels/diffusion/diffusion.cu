// The fused row passes of MAR's head loop (diffusion.h): one block per row for the passes with a LayerNorm (a
// block reduction over the width), one thread per element for the others. float32 throughout.
#include "kernels/common.cuh"
#include "kernels/diffusion/diffusion.h"

namespace fastar::kernels {
namespace {

constexpr int kThreads = 128;
constexpr float kLnEps = 1e-6f;  // SimpleMLPAdaLN's LayerNorms

__device__ __forceinline__ float silu(float v) { return v / (1.f + expf(-v)); }

// The block's sum of v, in a fixed tree order (deterministic); red: kThreads floats of shared memory.
__device__ float block_sum(float v, float* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const float total = red[0];
  __syncthreads();  // red is reused by the next reduction
  return total;
}

// h (W,) = LN(x) * (1 + scale) + shift, LN affine unless ln_w is null; mod, bias: [shift, scale] (2W,) of the
// modulation GEMM's row and its bias. Each thread touches the columns j = threadIdx.x + k kThreads only.
__device__ void ln_modulate(const float* x, const float* ln_w, const float* ln_b, const float* mod, const float* bias,
                            float* h, int W, float* red) {
  float sum = 0.f;
  for (int j = threadIdx.x; j < W; j += kThreads) sum += x[j];
  const float mean = block_sum(sum, red) / float(W);
  float sq = 0.f;
  for (int j = threadIdx.x; j < W; j += kThreads) sq += (x[j] - mean) * (x[j] - mean);
  const float rstd = 1.f / sqrtf(block_sum(sq, red) / float(W) + kLnEps);
  for (int j = threadIdx.x; j < W; j += kThreads) {
    float n = (x[j] - mean) * rstd;
    if (ln_w) n = n * ln_w[j] + ln_b[j];
    h[j] = n * (1.f + mod[W + j] + bias[W + j]) + mod[j] + bias[j];
  }
}

__global__ void __launch_bounds__(kThreads) silu_cond_kernel(const DiffusionParams p, const float* t_emb) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < int64_t(p.N) * p.W) p.sy[i] = silu(t_emb[i % p.W] + p.cond[i]);
}

__global__ void __launch_bounds__(kThreads) input_ln_kernel(const DiffusionParams p, const float* ln_w,
                                                            const float* ln_b) {
  STATIC_SHARED(float[kThreads], red);
  const int64_t r = blockIdx.x;
  const float* xr = p.x + (r % p.M) * p.C;
  float* hid = p.hid + r * p.W;
  for (int j = threadIdx.x; j < p.W; j += kThreads) {
    float v = p.in_b[j];
    for (int k = 0; k < p.C; ++k) v += xr[k] * p.in_wT[int64_t(k) * p.W + j];
    hid[j] = v;
  }
  ln_modulate(hid, ln_w, ln_b, p.mod + r * p.A, p.ada_b, p.h + r * p.W, p.W, red);
}

__global__ void __launch_bounds__(kThreads) bias_silu_kernel(const DiffusionParams p, const float* bias) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i < int64_t(p.N) * p.W) p.a[i] = silu(p.a[i] + bias[i % p.W]);
}

__global__ void __launch_bounds__(kThreads) residual_ln_kernel(const DiffusionParams p, int b, const float* bias,
                                                               const float* ln_w, const float* ln_b) {
  STATIC_SHARED(float[kThreads], red);
  const int64_t r = blockIdx.x;
  float *hid = p.hid + r * p.W, *h = p.h + r * p.W;
  const float *gate = p.mod + r * p.A + (3 * b + 2) * p.W, *bgate = p.ada_b + (3 * b + 2) * p.W;
  for (int j = threadIdx.x; j < p.W; j += kThreads) hid[j] += (gate[j] + bgate[j]) * (h[j] + bias[j]);
  const int next = 3 * (b + 1) * p.W;  // the next block's [shift, scale], or the final layer's
  ln_modulate(hid, ln_w, ln_b, p.mod + r * p.A + next, p.ada_b + next, h, p.W, red);
}

__global__ void __launch_bounds__(kThreads) update_kernel(const DiffusionParams p, const DiffusionStep s) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= int64_t(p.M) * p.C) return;
  const int64_t r = i / p.C;
  const int k = int(i % p.C);
  const float* o = p.out + r * 2 * p.C;
  float eps = o[k] + p.final_b[k];
  if (p.N != p.M) {
    const float eps_u = p.out[(r + p.M) * 2 * p.C + k] + p.final_b[k];
    eps = eps_u + s.cfg * (eps - eps_u);
  }
  const float frac = (o[p.C + k] + p.final_b[p.C + k] + 1.f) / 2.f;
  const float log_var = frac * s.max_log + (1.f - frac) * s.min_log;
  const float x = p.x[i];
  const float mean = s.coef1 * (s.sqrt_recip * x - s.sqrt_recipm1 * eps) + s.coef2 * x;
  p.x[i] = mean + expf(0.5f * log_var) * p.noise[r * p.C + k] * s.noise_scale;
}

bool bad(const DiffusionParams& p) { return p.N < 0 || p.M < 0 || p.M > p.N || p.W < 1 || p.C < 1 || p.A < 2 * p.W; }

dim3 elementwise_grid(int64_t n) { return dim3(unsigned((n + kThreads - 1) / kThreads)); }

}  // namespace

cudaError_t diffusion_silu_cond_launch(const DiffusionParams& p, const float* t_emb, cudaStream_t stream) {
  if (bad(p)) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  LAUNCH(silu_cond_kernel, elementwise_grid(int64_t(p.N) * p.W), kThreads, 0, stream)(p, t_emb);
  return cudaGetLastError();
}

cudaError_t diffusion_input_ln_launch(const DiffusionParams& p, const float* ln_w, const float* ln_b,
                                      cudaStream_t stream) {
  if (bad(p)) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  LAUNCH(input_ln_kernel, dim3(unsigned(p.N)), kThreads, 0, stream)(p, ln_w, ln_b);
  return cudaGetLastError();
}

cudaError_t diffusion_bias_silu_launch(const DiffusionParams& p, const float* bias, cudaStream_t stream) {
  if (bad(p)) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  LAUNCH(bias_silu_kernel, elementwise_grid(int64_t(p.N) * p.W), kThreads, 0, stream)(p, bias);
  return cudaGetLastError();
}

cudaError_t diffusion_residual_ln_launch(const DiffusionParams& p, int b, const float* bias, const float* ln_w,
                                         const float* ln_b, cudaStream_t stream) {
  if (bad(p) || b < 0 || 3 * (b + 1) * p.W + 2 * p.W > p.A) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  LAUNCH(residual_ln_kernel, dim3(unsigned(p.N)), kThreads, 0, stream)(p, b, bias, ln_w, ln_b);
  return cudaGetLastError();
}

cudaError_t diffusion_update_launch(const DiffusionParams& p, const DiffusionStep& s, cudaStream_t stream) {
  if (bad(p)) return cudaErrorInvalidValue;
  if (p.M == 0) return cudaSuccess;
  LAUNCH(update_kernel, elementwise_grid(int64_t(p.M) * p.C), kThreads, 0, stream)(p, s);
  return cudaGetLastError();
}

}  // namespace fastar::kernels
