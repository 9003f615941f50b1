// blur_pool on the CPU, separably: per output row, the four input rows it reads summed with the taps into a row
// buffer (contiguous, vectorized), then each output the taps of four neighbours of that row; the backward sums the
// (at most two) gradient rows an input row feeds, then spreads each onto the two columns pairs it reaches. Every
// row of an output is one work item; the buffers are padded by one zero each side, so no loop tests a border.
#include "cpu/blur_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <type_traits>
#include <vector>

#include "kernels/blur_pool/taps.h"

namespace fastar::cpu {
namespace {

template <class T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// y (planes, H / 2, W / 2) from x (planes, H, W).
template <class T>
void forward(const T* x, T* y, int64_t planes, int64_t H, int64_t W) {
  using A = Acc<T>;
  const int64_t Ho = H / 2, Wo = W / 2;
  const A o = A(kernels::kBlurOuter), n = A(kernels::kBlurInner);
  at::parallel_for(0, planes * Ho, std::max<int64_t>(1, 16384 / (4 * W)), [&](int64_t r0, int64_t r1) {
    std::vector<A> buf(W + 2, A(0));
    A* t = buf.data() + 1;  // t[-1] = t[W] = 0: the horizontal padding
    const std::vector<T> zero(W, T(0));  // the vertical padding: a row of zeros (not a row times 0: NaN for inf)
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / Ho, i = r % Ho;
      const T* xp = x + p * H * W;
      const T* rows[4];
      const A taps[4] = {o, n, n, o};
      for (int a = 0; a < 4; ++a) {
        const int64_t h = 2 * i + a - 1;
        rows[a] = h >= 0 && h < H ? xp + h * W : zero.data();
      }
      for (int64_t w = 0; w < W; ++w)
        t[w] = taps[0] * A(rows[0][w]) + taps[1] * A(rows[1][w]) + taps[2] * A(rows[2][w]) +
               taps[3] * A(rows[3][w]);
      T* yr = y + r * Wo;
      for (int64_t j = 0; j < Wo; ++j)
        yr[j] = T(o * (t[2 * j - 1] + t[2 * j + 2]) + n * (t[2 * j] + t[2 * j + 1]));
    }
  });
}

// gx (planes, H, W) from g (planes, H / 2, W / 2): input row h reads output rows (h + 1 - a) / 2 for the taps a of
// h's parity (even h: a = 1, 3; odd h: a = 0, 2), column c likewise.
template <class T>
void backward(const T* g, T* gx, int64_t planes, int64_t H, int64_t W) {
  using A = Acc<T>;
  const int64_t Ho = H / 2, Wo = W / 2;
  const A o = A(kernels::kBlurOuter), n = A(kernels::kBlurInner);
  at::parallel_for(0, planes * H, std::max<int64_t>(1, 16384 / (2 * W)), [&](int64_t r0, int64_t r1) {
    std::vector<A> buf(Wo + 2, A(0));
    A* v = buf.data() + 1;  // v[-1] = v[Wo] = 0
    const std::vector<T> zero(Wo, T(0));  // a missing gradient row (a row times 0 would read NaN for inf)
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t p = r / H, h = r % H, m = h / 2;
      const T* gp = g + p * Ho * Wo;
      // (output row, tap) pairs: even h = 2m: (m, f[1]), (m - 1, f[3]); odd h = 2m + 1: (m + 1, f[0]), (m, f[2])
      const int64_t i0 = h % 2 ? m + 1 : m, i1 = h % 2 ? m : m - 1;
      const A f0 = h % 2 ? o : n, f1 = h % 2 ? n : o;
      const T* g0 = i0 >= 0 && i0 < Ho ? gp + i0 * Wo : zero.data();
      const T* g1 = i1 >= 0 && i1 < Ho ? gp + i1 * Wo : zero.data();
      for (int64_t j = 0; j < Wo; ++j) v[j] = f0 * A(g0[j]) + f1 * A(g1[j]);
      T* out = gx + r * W;
      for (int64_t k = 0; 2 * k < W; ++k) {
        out[2 * k] = T(n * v[k] + o * v[k - 1]);  // column 2k: (k, f[1]), (k - 1, f[3])
        if (2 * k + 1 < W) out[2 * k + 1] = T(o * v[k + 1] + n * v[k]);  // 2k + 1: (k + 1, f[0]), (k, f[2])
      }
    }
  });
}

}  // namespace

at::Tensor blur_pool(const at::Tensor& x) {
  const int64_t H = x.size(2), W = x.size(3);
  at::Tensor y = at::empty({x.size(0), x.size(1), H / 2, W / 2}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "blur_pool", [&] {
    forward(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.size(0) * x.size(1), H, W);
  });
  return y;
}

at::Tensor blur_pool_backward(const at::Tensor& grad, int64_t height, int64_t width) {
  at::Tensor gx = at::empty({grad.size(0), grad.size(1), height, width}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "blur_pool_backward", [&] {
    backward(grad.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), grad.size(0) * grad.size(1), height, width);
  });
  return gx;
}

}  // namespace fastar::cpu
