// MAR's DiffLoss training loss from the head's output, with its gradient in the same pass: per row the iDDPM
// hybrid loss MSE(eps) + VB (KL of the learned-range posterior in bits; the discretized Gaussian NLL at t = 0),
// the VB term seeing eps through a stop-gradient. The official formulation is ~40 elementwise autograd ops on
// (N, C) tensors and their backward; here one pass per row writes the loss and d loss / d model_output.
#include "cpu/diffusion.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace fastar::cpu {
namespace {

// iDDPM's tanh approximation of the standard normal CDF and its derivative.
template <class T>
void approx_cdf(T u, T& cdf, T& pdf) {
  const T k = T(0.7978845608028654), c = T(0.044715);  // sqrt(2 / pi)
  const T th = std::tanh(k * (u + c * u * u * u));
  cdf = T(0.5) * (T(1) + th);
  pdf = T(0.5) * (T(1) - th * th) * k * (T(1) + T(3) * c * u * u);
}

// d(-log p(x)) / d log_var of x under N(mean, exp(log_var)) discretized to 255 bins on [-1, 1], and -log p(x).
template <class T>
T decoder_nll(T x, T mean, T log_var, T& dlog_var) {
  const T inv_std = std::exp(T(-0.5) * log_var), tiny = T(1e-12);
  const T u_plus = inv_std * (x - mean + T(1) / T(255)), u_min = inv_std * (x - mean - T(1) / T(255));
  T cdf_plus, pdf_plus, cdf_min, pdf_min;
  approx_cdf(u_plus, cdf_plus, pdf_plus);
  approx_cdf(u_min, cdf_min, pdf_min);
  // du / dlog_var = -u / 2; the probability's derivative, then -d log(p) = -dp / p (0 where p is clamped)
  const T dplus = pdf_plus * T(-0.5) * u_plus, dmin = pdf_min * T(-0.5) * u_min;
  T p, dp;
  if (x < T(-0.999)) p = cdf_plus, dp = dplus;
  else if (x > T(0.999)) p = T(1) - cdf_min, dp = -dmin;
  else p = cdf_plus - cdf_min, dp = dplus - dmin;
  dlog_var = p >= tiny ? -dp / p : T(0);
  return -std::log(std::max(p, tiny));
}

template <class T>
void loss_rows(const at::Tensor& out, const at::Tensor& x_start, const at::Tensor& noise, const at::Tensor& t,
               const at::Tensor& table, at::Tensor& loss, at::Tensor& grad) {
  const int64_t N = x_start.size(0), C = x_start.size(1);
  const T *o_p = out.data_ptr<T>(), *x_p = x_start.data_ptr<T>(), *n_p = noise.data_ptr<T>();
  const int64_t* t_p = t.data_ptr<int64_t>();
  const double* tab = table.data_ptr<double>();
  T *l_p = loss.data_ptr<T>(), *g_p = grad.data_ptr<T>();
  const T inv_C = T(1) / T(C), inv_ln2 = T(1) / T(std::log(2.0));
  at::parallel_for(0, N, std::max<int64_t>(1, 2048 / C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const double* c = tab + t_p[r] * kLossTableColumns;  // cast to T as the official _extract_into_tensor
      const T sqrt_ac = T(c[0]), sqrt_1m_ac = T(c[1]), sqrt_recip = T(c[2]), sqrt_recipm1 = T(c[3]), coef1 = T(c[4]),
              coef2 = T(c[5]), min_log = T(c[6]), max_log = T(c[7]);
      const T *o = o_p + r * 2 * C, *x0 = x_p + r * C, *n = n_p + r * C;
      T* g = g_p + r * 2 * C;
      T mse = 0, vb = 0;
      for (int64_t k = 0; k < C; ++k) {
        const T eps = o[k], v = o[C + k];
        const T x_t = sqrt_ac * x0[k] + sqrt_1m_ac * n[k];
        mse += (n[k] - eps) * (n[k] - eps);
        g[k] = T(2) * (eps - n[k]) * inv_C;
        const T frac = (v + T(1)) / T(2);
        const T log_var = frac * max_log + (T(1) - frac) * min_log;
        const T mean = coef1 * (sqrt_recip * x_t - sqrt_recipm1 * eps) + coef2 * x_t;
        T dlog_var;
        if (t_p[r] == 0) {
          vb += decoder_nll(x0[k], mean, log_var, dlog_var);
        } else {
          const T true_mean = coef1 * x0[k] + coef2 * x_t, d2 = (true_mean - mean) * (true_mean - mean);
          const T e_min = std::exp(min_log - log_var), e_inv = std::exp(-log_var);
          vb += T(0.5) * (T(-1) + log_var - min_log + e_min + d2 * e_inv);
          dlog_var = T(0.5) * (T(1) - e_min - d2 * e_inv);
        }
        g[C + k] = dlog_var * (max_log - min_log) / T(2) * inv_C * inv_ln2;
      }
      l_p[r] = mse * inv_C + vb * inv_C * inv_ln2;
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> diffusion_loss(const at::Tensor& model_output, const at::Tensor& x_start,
                                                  const at::Tensor& noise, const at::Tensor& t,
                                                  const at::Tensor& table) {
  at::Tensor out = model_output.contiguous(), x = x_start.contiguous(), n = noise.contiguous(), tt = t.contiguous();
  at::Tensor loss = at::empty({x.size(0)}, x.options()), grad = at::empty_like(out);
  if (x.size(0) == 0) return {loss, grad};
  if (x.scalar_type() == at::kDouble) loss_rows<double>(out, x, n, tt, table, loss, grad);
  else loss_rows<float>(out, x, n, tt, table, loss, grad);
  return {loss, grad};
}

}  // namespace fastar::cpu
