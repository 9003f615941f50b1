#include "cpu/quantize.h"

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>

#include <cstdlib>
#include <string>

#include "cpu/isa.h"
#include "cpu/vq_tree.h"

namespace fastar::cpu {

// The k-d tree search: leaves of about kTreeLeafCodes codes; on its own for D <= kTreeMaxD, K >= kTreeMinCodesPerD * D
// and N >= kTreeMinRows. Diagnostic runs on a Zen 4 (AVX2 kernels, 2 threads; tree over sweep; not the benchmark):
// D 8, K 16384: N 16384 1.31x (1.57x on unit vectors), N 4096 1.06x; K 8192 0.96x, K 65536 2.1x; D 4: K 4096 1.25x,
// K 1024 0.75x; D 12: 0.64x.
constexpr int64_t kTreeLeafCodes = 128, kTreeMaxD = 8, kTreeMinCodesPerD = 2048, kTreeMinRows = 8192;

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

// Whether the search goes through the k-d tree (cpu/vq_tree.h): FASTAR_VQ_NEAREST_CPU_TREE=1 or 0 forces it either
// way (tests compare the two); else when the codebook's D is small enough for the leaves' boxes to prune and there
// are enough rows to pay for the build.
static bool use_tree(int64_t N, int64_t K, int64_t D) {
  const char* env = std::getenv("FASTAR_VQ_NEAREST_CPU_TREE");
  if (env != nullptr) {
    const std::string v(env);
    TORCH_CHECK(v == "0" || v == "1", "vq_nearest: FASTAR_VQ_NEAREST_CPU_TREE must be 0 or 1, got '", v, "'");
    return v == "1";
  }
  return D <= kTreeMaxD && K >= kTreeMinCodesPerD * D && N >= kTreeMinRows;
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
  const VqRows rows{xf.data_ptr<float>(), idx.data_ptr<int64_t>(), dist.data_ptr<float>()};
  if (use_tree(N, K, D)) {
    const VqTreeShape shape = vq_tree_shape(K, kern.lanes, kTreeLeafCodes);
    const int64_t positions = shape.positions(kern.lanes);
    at::Tensor order = at::empty({positions}, ef.options().dtype(at::kInt));
    // Leaf boxes, lo then hi: rows of box_stride floats, whole vectors, so the search's aligned loads hold.
    at::Tensor box = at::empty({2, D, shape.box_stride}, ef.options());
    const float radius = vq_tree_build(ef.data_ptr<float>(), K, D, shape, kern.lanes, order.data_ptr<int32_t>(),
                                       box[0].data_ptr<float>(), box[1].data_ptr<float>());
    at::Tensor codes = at::empty({positions * D}, ef.options()), norms = at::empty({positions}, ef.options());
    kern.pack(ef.data_ptr<float>(), K, D, order.data_ptr<int32_t>(), positions, codes.data_ptr<float>(),
              norms.data_ptr<float>());
    const VqPacked packed{codes.data_ptr<float>(), norms.data_ptr<float>(), K, D};
    const VqTree tree{order.data_ptr<int32_t>(), box[0].data_ptr<float>(), box[1].data_ptr<float>(),
                      shape.leaves, shape.leaf_blocks, shape.box_stride, radius};
    at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) { kern.search_tree(packed, tree, rows, begin, end); });
    return {idx, dist};
  }
  const int64_t padded = (K + kern.lanes - 1) / kern.lanes * kern.lanes;
  // at::empty is 64-byte aligned, as the micro-kernel's vector loads need.
  at::Tensor codes = at::empty({padded * D}, ef.options());
  at::Tensor norms = at::empty({padded}, ef.options());
  kern.pack(ef.data_ptr<float>(), K, D, nullptr, padded, codes.data_ptr<float>(), norms.data_ptr<float>());

  const VqPacked packed{codes.data_ptr<float>(), norms.data_ptr<float>(), K, D};
  // Enough rows per task to amortize the codebook sweep, enough tasks to balance the threads.
  const int64_t grain = std::max<int64_t>(48, N / (8 * at::get_num_threads()) / 48 * 48);
  const int64_t slice = slice_codes();
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) { kern.search(packed, rows, begin, end, slice); });
  return {idx, dist};
}

}  // namespace fastar::cpu
