// MAR's DiffLoss training loss and its gradient in one pass (diffusion.h), the math of csrc/cpu/diffusion_loss.cpp:
// per row the iDDPM hybrid loss MSE(eps) + VB (KL of the learned-range posterior in bits; the discretized Gaussian
// NLL at t = 0), the VB term seeing eps through a stop-gradient. A group of G lanes (the power of two >= C, at most
// a warp) per row: each lane does the channels k = lane + j G and writes their gradient, then the group's butterfly
// sums the row's terms, in a fixed order (deterministic). float32 or float64 throughout.
#include "kernels/common.cuh"
#include "kernels/diffusion/diffusion.h"

namespace fastar::kernels {
namespace {

constexpr int kThreads = 128;
constexpr double kInvLn2 = 1.4426950408889634;  // the VB term in bits

__device__ __forceinline__ float exp_(float v) { return expf(v); }
__device__ __forceinline__ double exp_(double v) { return exp(v); }
__device__ __forceinline__ float log_(float v) { return logf(v); }
__device__ __forceinline__ double log_(double v) { return log(v); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }

// iDDPM's tanh approximation of the standard normal CDF, and its derivative.
template <class T>
__device__ __forceinline__ void approx_cdf(T u, T& cdf, T& pdf) {
  const T k = T(0.7978845608028654), c = T(0.044715);  // sqrt(2 / pi)
  const T th = tanh_(k * (u + c * u * u * u));
  cdf = T(0.5) * (T(1) + th);
  pdf = T(0.5) * (T(1) - th * th) * k * (T(1) + T(3) * c * u * u);
}

// -log p(x) of N(mean, exp(log_var)) discretized to 255 bins on [-1, 1], and its derivative in log_var.
template <class T>
__device__ __forceinline__ T decoder_nll(T x, T mean, T log_var, T& dlog_var) {
  const T inv_std = exp_(T(-0.5) * log_var), tiny = T(1e-12);
  const T u_plus = inv_std * (x - mean + T(1) / T(255)), u_min = inv_std * (x - mean - T(1) / T(255));
  T cdf_plus, pdf_plus, cdf_min, pdf_min;
  approx_cdf(u_plus, cdf_plus, pdf_plus);
  approx_cdf(u_min, cdf_min, pdf_min);
  // du / dlog_var = -u / 2; then -d log(p) = -dp / p (0 where p is clamped)
  const T dplus = pdf_plus * T(-0.5) * u_plus, dmin = pdf_min * T(-0.5) * u_min;
  T p, dp;
  if (x < T(-0.999)) p = cdf_plus, dp = dplus;
  else if (x > T(0.999)) p = T(1) - cdf_min, dp = -dmin;
  else p = cdf_plus - cdf_min, dp = dplus - dmin;
  dlog_var = p >= tiny ? -dp / p : T(0);
  return -log_(p > tiny ? p : tiny);
}

template <class T>
__global__ void __launch_bounds__(kThreads) diffusion_loss_kernel(const DiffusionLossParams p, int log2_G) {
  const int G = 1 << log2_G;  // divides kThreads: a row's group never straddles blocks
  const int64_t r = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> log2_G;
  const int lane = int(threadIdx.x) & (G - 1);
  const bool live = r < p.N;  // lanes past the last row still join the group's shuffles
  const int C = p.C;
  T mse = 0, vb = 0;
  if (live) {
    const int64_t t = p.t[r];
    const double* c = p.table + t * kDiffusionLossColumns;  // cast to T as the official _extract_into_tensor
    const T sqrt_ac = T(c[0]), sqrt_1m_ac = T(c[1]), sqrt_recip = T(c[2]), sqrt_recipm1 = T(c[3]), coef1 = T(c[4]),
            coef2 = T(c[5]), min_log = T(c[6]), max_log = T(c[7]);
    const T* o = static_cast<const T*>(p.model_output) + r * 2 * C;
    const T* x0 = static_cast<const T*>(p.x_start) + r * C;
    const T* n = static_cast<const T*>(p.noise) + r * C;
    T* g = static_cast<T*>(p.grad) + r * 2 * C;
    const T inv_C = T(1) / T(C), dv = (max_log - min_log) / T(2) * inv_C * T(kInvLn2), exp_min = exp_(min_log);
    for (int k = lane; k < C; k += G) {
      const T eps = o[k], v = o[C + k], x = x0[k];
      const T x_t = sqrt_ac * x + sqrt_1m_ac * n[k];
      mse += (n[k] - eps) * (n[k] - eps);
      g[k] = T(2) * (eps - n[k]) * inv_C;
      const T frac = (v + T(1)) / T(2);
      const T log_var = frac * max_log + (T(1) - frac) * min_log;
      const T mean = coef1 * (sqrt_recip * x_t - sqrt_recipm1 * eps) + coef2 * x_t;
      T dlog_var;
      if (t == 0) {
        vb += decoder_nll(x, mean, log_var, dlog_var);
      } else {
        const T true_mean = coef1 * x + coef2 * x_t, d2 = (true_mean - mean) * (true_mean - mean);
        const T e_inv = exp_(-log_var), e_min = exp_min * e_inv;  // exp(min_log - log_var), one exp less
        vb += T(0.5) * (T(-1) + log_var - min_log + e_min + d2 * e_inv);
        dlog_var = T(0.5) * (T(1) - e_min - d2 * e_inv);
      }
      g[C + k] = dlog_var * dv;
    }
  }
  // G divides 32 and groups are aligned, so offsets below G stay inside the row's group; every lane ends with the
  // same sum (a + b == b + a).
  for (int s = G / 2; s > 0; s >>= 1) {
    mse += __shfl_xor_sync(0xffffffffu, mse, s);
    vb += __shfl_xor_sync(0xffffffffu, vb, s);
  }
  if (live && lane == 0) static_cast<T*>(p.loss)[r] = (mse + vb * T(kInvLn2)) / T(C);
}

}  // namespace

cudaError_t diffusion_loss_launch(const DiffusionLossParams& p, cudaStream_t stream) {
  if (p.N < 0 || p.C < 1) return cudaErrorInvalidValue;
  if (p.N == 0) return dispatch_dtype<float, double>(p.dtype, [](auto) { return cudaSuccess; });  // still checked
  int log2_G = 0;  // lanes per row: the power of two >= C, at most a warp
  while ((1 << log2_G) < p.C && log2_G < 5) ++log2_G;
  const int64_t blocks = ((p.N << log2_G) + kThreads - 1) / kThreads;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype<float, double>(p.dtype, [&](auto elem) {
    LAUNCH(diffusion_loss_kernel<decltype(elem)>, dim3(unsigned(blocks)), kThreads, 0, stream)(p, log2_G);
    return cudaGetLastError();
  });
}

}  // namespace fastar::kernels
