// linear on the CPU for few rows (decoding one token per sequence): threads split the weight's rows; each block of
// rows (<= 128 KB, so it stays in L2) is streamed from memory once and dotted with x four rows at a time by the
// ISA kernel (cpu/linear_isa.cpp), from float32 or bfloat16 weights. float64 runs a plain loop (the tests' and
// gradcheck's dtype). Semantics: fastar/reference/linear.py.
#include "cpu/linear.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "cpu/isa.h"

namespace fastar::cpu {
namespace {

constexpr int64_t kBlockBytes = 128 << 10;  // weight rows per block: an L2-resident slice for the row chunks
constexpr int64_t kInlineMacs = 1 << 16;    // below this many multiply-adds a call runs on the calling thread

template <class F>
void over_blocks(int64_t M, int64_t N, int64_t K, int64_t elem, F&& block) {
  const int64_t nb = std::max<int64_t>(4, kBlockBytes / std::max<int64_t>(1, K * elem));
  const int64_t blocks = (N + nb - 1) / nb;
  const int64_t macs_per_block = std::max<int64_t>(1, nb * K * M);
  const int64_t grain = M * N * K < kInlineMacs ? blocks : std::max<int64_t>(1, kInlineMacs / macs_per_block);
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) block(bi * nb, std::min(N, (bi + 1) * nb));
  });
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const bool has_bias = bias.has_value() && bias->defined();
  if (x.scalar_type() == at::kDouble) {
    const double *xp = x.data_ptr<double>(), *wp = weight.data_ptr<double>();
    const double* bp = has_bias ? bias->data_ptr<double>() : nullptr;
    double* yp = y.data_ptr<double>();
    over_blocks(M, N, K, 8, [&](int64_t n0, int64_t n1) {
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < n1; ++n) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += xp[m * K + k] * wp[n * K + k];
          yp[m * N + n] = bp ? s + bp[n] : s;
        }
    });
    return y;
  }
  const float* xp = x.data_ptr<float>();
  const float* bp = has_bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  auto run = [&](auto rows, const auto* wp) {
    over_blocks(M, N, K, int64_t(sizeof(*wp)), [&](int64_t n0, int64_t n1) {
      for (int64_t m = 0; m < M; m += 4)
        rows(xp + m * K, K, int(std::min<int64_t>(4, M - m)), wp, K, bp, yp + m * N, N, n0, n1);
    });
  };
  if (weight.scalar_type() == at::kBFloat16)
    run(isa().linear->rows_bf16, reinterpret_cast<const Bf16*>(weight.data_ptr()));
  else
    run(isa().linear->rows, weight.data_ptr<float>());
  return y;
}

}  // namespace fastar::cpu
