// MAR's DiffLoss training loss from the head's output, with its gradient in the same pass: per row the iDDPM
// hybrid loss MSE(eps) + VB (KL of the learned-range posterior in bits; the discretized Gaussian NLL at t = 0),
// the VB term seeing eps through a stop-gradient. The official formulation is ~40 elementwise autograd ops on
// (N, C) tensors and their backward; here one pass per row writes the loss and d loss / d model_output.
#include "cpu/diffusion.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>

namespace fastar::cpu {
namespace {

using kernels::LossCoefs;

template <class T>
void loss_rows(const at::Tensor& out, const at::Tensor& x_start, const at::Tensor& noise, const at::Tensor& t,
               const at::Tensor& table, at::Tensor& loss, at::Tensor& grad) {
  const int64_t N = x_start.size(0), C = x_start.size(1);
  const T *o_p = out.data_ptr<T>(), *x_p = x_start.data_ptr<T>(), *n_p = noise.data_ptr<T>();
  const int64_t* t_p = t.data_ptr<int64_t>();
  const double* tab = table.data_ptr<double>();
  T *l_p = loss.data_ptr<T>(), *g_p = grad.data_ptr<T>();
  const T inv_C = T(1) / T(C), inv_ln2 = T(kernels::kInvLn2);
  at::parallel_for(0, N, std::max<int64_t>(1, 2048 / C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const LossCoefs<T> c(tab + t_p[r] * kernels::kDiffusionLossColumns, t_p[r] == 0);
      const T *o = o_p + r * 2 * C, *x0 = x_p + r * C, *n = n_p + r * C;
      T* g = g_p + r * 2 * C;
      const T dv = (c.max_log - c.min_log) / T(2) * inv_C * inv_ln2;
      T mse = 0, vb = 0;
      for (int64_t k = 0; k < C; ++k) {
        T dlog_var;
        loss_channel(c, o[k], o[C + k], x0[k], n[k], mse, vb, dlog_var);
        g[k] = T(2) * (o[k] - n[k]) * inv_C;
        g[C + k] = dlog_var * dv;
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
