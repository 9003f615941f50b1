#include "cpu/quantize.h"

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>

#include <cstdlib>

#include "cpu/isa.h"

namespace fastar::cpu {

// LlamaGen's cosine metric: both sides L2-normalized as F.normalize does (norm clamped at 1e-12).
static at::Tensor normalize_rows(const at::Tensor& t) { return t / t.norm(2, -1, true).clamp_min(1e-12); }

// Codes per cache slice of the search: FASTAR_VQ_NEAREST_CPU_SLICE when set (tests reach slice boundaries with
// small codebooks), else 0 (the kernel sizes slices for L2).
static int64_t slice_codes() {
  const char* env = std::getenv("FASTAR_VQ_NEAREST_CPU_SLICE");
  if (env == nullptr) return 0;
  char* stop = nullptr;
  const long long n = std::strtoll(env, &stop, 10);
  TORCH_CHECK(*env != '\0' && *stop == '\0' && n > 0,
              "vq_nearest: FASTAR_VQ_NEAREST_CPU_SLICE must be a positive integer, got '", env, "'");
  return n;
}

std::tuple<at::Tensor, at::Tensor> vq_nearest(const at::Tensor& x, const at::Tensor& codebook, bool cosine) {
  at::Tensor xf = x.to(at::kFloat).contiguous();         // (N, D)
  at::Tensor ef = codebook.to(at::kFloat).contiguous();  // (K, D)
  if (cosine) xf = normalize_rows(xf), ef = normalize_rows(ef);
  const int64_t N = xf.size(0), K = ef.size(0), D = ef.size(1);
  at::Tensor idx = at::empty({N}, x.options().dtype(at::kLong));
  at::Tensor dist = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {idx, dist};

  const VqNearestIsa& kern = *isa().vq_nearest;
  const int64_t padded = (K + kern.lanes - 1) / kern.lanes * kern.lanes;
  // at::empty is 64-byte aligned, as the micro-kernel's vector loads need.
  at::Tensor codes = at::empty({padded * D}, ef.options());
  at::Tensor norms = at::empty({padded}, ef.options());
  kern.pack(ef.data_ptr<float>(), K, D, codes.data_ptr<float>(), norms.data_ptr<float>());

  const VqPacked packed{codes.data_ptr<float>(), norms.data_ptr<float>(), K, D};
  const VqRows rows{xf.data_ptr<float>(), idx.data_ptr<int64_t>(), dist.data_ptr<float>()};
  // Enough rows per task to amortize the codebook sweep, enough tasks to balance the threads.
  const int64_t grain = std::max<int64_t>(48, N / (8 * at::get_num_threads()) / 48 * 48);
  const int64_t slice = slice_codes();
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) { kern.search(packed, rows, begin, end, slice); });
  return {idx, dist};
}

}  // namespace fastar::cpu
