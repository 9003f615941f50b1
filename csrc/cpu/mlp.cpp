// mlp on the CPU: the weights packed in the ISA kernel's column panels (a few hundred KB at the widths it serves, once
// per call: HiT's generator folds its BatchNorm into w1 and b1 on every forward), then threads over blocks of rows
// (cpu/mlp_isa.cpp), each with its own scratch for the block's hidden activations.
// Semantics: fastar/reference/mlp.py.
#include "cpu/mlp.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "cpu/isa.h"

namespace fastar::cpu {
namespace {

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// w (N, K) contiguous -> (n_pad / cols, k_pad, cols): w^T by panels of `cols` columns, zero past N and K.
void pack(const float* w, int64_t N, int64_t K, int64_t k_pad, int64_t cols, float* out) {
  const int64_t panels = round_up(N, cols) / cols;
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t c = 0; c < cols && p * cols + c < N; ++c) {
        const float* row = w + (p * cols + c) * K;
        float* dst = out + p * k_pad * cols + c;
        for (int64_t k = 0; k < K; ++k) dst[k * cols] = row[k];
      }
  });
}

}  // namespace

at::Tensor mlp(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
               const at::Tensor& b2, const std::optional<at::Tensor>& residual, int64_t softmax_group) {
  at::Tensor y = at::empty({x.size(0), w2.size(0)}, x.options());
  mlp_out(x, w1, b1, w2, b2, residual, softmax_group, y);
  return y;
}

void mlp_out(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
             const at::Tensor& b2, const std::optional<at::Tensor>& residual, int64_t softmax_group,
             const at::Tensor& y) {
  const MlpIsa& k = *isa().mlp;
  const int64_t N = x.size(0), C = x.size(1), Hd = w1.size(0), Co = w2.size(0);
  const int64_t hd_pad = round_up(Hd, k.cols), co_pad = round_up(Co, k.cols);
  if (N == 0) return;
  // One zeroed buffer: w1p, w2p, b1p, b2p.
  at::Tensor packed = at::zeros({hd_pad * C + co_pad * hd_pad + hd_pad + co_pad}, x.options());
  float* w1p = packed.data_ptr<float>();
  float* w2p = w1p + hd_pad * C;
  float* b1p = w2p + co_pad * hd_pad;
  float* b2p = b1p + hd_pad;
  pack(w1.data_ptr<float>(), Hd, C, C, k.cols, w1p);
  pack(w2.data_ptr<float>(), Co, Hd, hd_pad, k.cols, w2p);
  std::copy_n(b1.data_ptr<float>(), Hd, b1p);
  std::copy_n(b2.data_ptr<float>(), Co, b2p);
  const bool has_res = residual.has_value() && residual->defined();
  const Mlp m{x.data_ptr<float>(), x.stride(0), w1p, b1p, w2p, b2p,
              has_res ? residual->data_ptr<float>() : nullptr, has_res ? residual->stride(0) : 0,
              y.data_ptr<float>(), y.stride(0), N, C, Hd, Co, hd_pad, co_pad, softmax_group};
  const int64_t blocks = (N + k.rows - 1) / k.rows;
  const size_t scratch = size_t(k.rows * (hd_pad + C + 2 * co_pad)) + 16;  // MlpIsa::forward's; + 16: to align
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    static thread_local std::vector<float> buf;
    if (buf.size() < scratch) buf.resize(scratch);
    float* p = buf.data();
    p += (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64 / sizeof(float);
    k.forward(m, begin * k.rows, std::min(end * k.rows, N), p);
  });
}

std::tuple<at::Tensor, at::Tensor> gelu_with_derivative(const at::Tensor& x, bool tanh) {
  at::Tensor y = at::empty(x.sizes(), x.options()), d = at::empty(x.sizes(), x.options());
  const float* xp = x.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *dp = d.data_ptr<float>();
  const auto f = isa().mlp->gelu_with_derivative;
  constexpr int64_t kGrain = 16384;  // floats a task: 64 KB in, 128 KB out
  at::parallel_for(0, (x.numel() + kGrain - 1) / kGrain, 1, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * kGrain, i1 = std::min(b1 * kGrain, x.numel());
    f(xp + i0, yp + i0, dp + i0, i1 - i0, tanh);
  });
  return {y, d};
}

}  // namespace fastar::cpu
