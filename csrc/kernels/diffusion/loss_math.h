// The per-channel math of MAR's DiffLoss training loss (iDDPM's hybrid loss: MSE on eps + the VB term of the
// learned-range variance, the discretized Gaussian NLL at t = 0), shared by the CPU kernel (cpu/diffusion_loss.cpp)
// and the CUDA one (diffusion_loss.cu): torch-free, host and device, float32 or float64.
#pragma once
#include <math.h>

#include <cstdint>

#include "kernels/host_device.h"

namespace fastar::kernels {

// Columns of the training chain's table (fastar/reference/diffusion.py LOSS_TABLE_COLUMNS), one row per timestep.
constexpr int64_t kDiffusionLossColumns = 8;
constexpr double kInvLn2 = 1.4426950408889634;  // the VB term in bits

FASTAR_HOST_DEVICE inline float exp_(float v) { return expf(v); }
FASTAR_HOST_DEVICE inline double exp_(double v) { return exp(v); }
FASTAR_HOST_DEVICE inline float log_(float v) { return logf(v); }
FASTAR_HOST_DEVICE inline double log_(double v) { return log(v); }
FASTAR_HOST_DEVICE inline float tanh_(float v) { return tanhf(v); }
FASTAR_HOST_DEVICE inline double tanh_(double v) { return tanh(v); }

// iDDPM's tanh approximation of the standard normal CDF, and its derivative.
template <class T>
FASTAR_HOST_DEVICE inline void approx_cdf(T u, T& cdf, T& pdf) {
  const T k = T(0.7978845608028654), c = T(0.044715);  // sqrt(2 / pi)
  const T th = tanh_(k * (u + c * u * u * u));
  cdf = T(0.5) * (T(1) + th);
  pdf = T(0.5) * (T(1) - th * th) * k * (T(1) + T(3) * c * u * u);
}

// -log p(x) of N(mean, exp(log_var)) discretized to 255 bins on [-1, 1], and its derivative in log_var.
template <class T>
FASTAR_HOST_DEVICE inline T decoder_nll(T x, T mean, T log_var, T& dlog_var) {
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

// One timestep's row of the training chain's table, cast to T as the official _extract_into_tensor does.
template <class T>
struct LossCoefs {
  T sqrt_ac, sqrt_1m_ac, sqrt_recip, sqrt_recipm1, coef1, coef2, min_log, max_log, exp_min;
  bool first;  // t = 0: the decoder NLL instead of the KL
  FASTAR_HOST_DEVICE LossCoefs(const double* c, bool first_step)
      : sqrt_ac(T(c[0])), sqrt_1m_ac(T(c[1])), sqrt_recip(T(c[2])), sqrt_recipm1(T(c[3])), coef1(T(c[4])),
        coef2(T(c[5])), min_log(T(c[6])), max_log(T(c[7])), exp_min(exp_(T(c[6]))), first(first_step) {}
};

// One channel with head outputs eps and v, target x and noise n: adds its squared error to mse and its VB term (in
// nats) to vb; returns d(VB) / d log_var in dlog_var (d(MSE) / d eps is 2 (eps - n)). The VB term sees eps through
// a stop-gradient, as the official loss.
template <class T>
FASTAR_HOST_DEVICE inline void loss_channel(const LossCoefs<T>& c, T eps, T v, T x, T n, T& mse, T& vb, T& dlog_var) {
  const T x_t = c.sqrt_ac * x + c.sqrt_1m_ac * n;
  mse += (n - eps) * (n - eps);
  const T frac = (v + T(1)) / T(2);
  const T log_var = frac * c.max_log + (T(1) - frac) * c.min_log;
  const T mean = c.coef1 * (c.sqrt_recip * x_t - c.sqrt_recipm1 * eps) + c.coef2 * x_t;
  if (c.first) {
    vb += decoder_nll(x, mean, log_var, dlog_var);
  } else {
    const T true_mean = c.coef1 * x + c.coef2 * x_t, d2 = (true_mean - mean) * (true_mean - mean);
    const T e_inv = exp_(-log_var), e_min = c.exp_min * e_inv;  // exp(min_log - log_var), one exp less
    vb += T(0.5) * (T(-1) + log_var - c.min_log + e_min + d2 * e_inv);
    dlog_var = T(0.5) * (T(1) - e_min - d2 * e_inv);
  }
}

}  // namespace fastar::kernels
