// Flash-style CPU attention (FlashAttention-2, Dao 2023): query blocks x key runs with an online softmax,
// never an Lq x Lk array; the backward walks the forward's plan. Masks where each query sees a key prefix
// (full, block-causal, decode) compute exactly the visible keys of each block of rows; the others go by
// tiles: tiles the mask hides are skipped before their keys are read, fully visible tiles skip the
// per-element mask. The products run on the BLAS that libtorch_cpu exports (cpu/blas.h), the softmax between
// them on the per-ISA micro-kernels of cpu/attention_isa.cpp; decode runs the per-ISA kernels of
// cpu/attention_decode_isa.cpp instead: the fused one under a prefix mask, one query at a time for a few queries.
#include "cpu/attention.h"

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cpu/attention_decode_isa.h"
#include "cpu/attention_tiny.h"
#include "cpu/blas.h"
#include "cpu/isa.h"

namespace fastar::cpu {
namespace {

using blas::gemm;
using kernels::MaskParams;
// Tiles of the generic plan (masks other than key prefixes): 32 query rows x 64 keys, a score row of whole
// vectors; runs of them make the products (TilePlan).
constexpr int kTileQ = 32, kTileK = 64;

template <class T>
const AttentionKernels<T>& micro() {
  if constexpr (std::is_same_v<T, float>) return isa().attention->f32;
  else return isa().attention->f64;
}

// One (B, H, L, D) operand whose rows are unit-stride: element (b, h, l, d) at b * sb + h * sh + l * sl + d;
// sl >= D is the BLAS leading dimension.
template <class T>
struct Heads {
  T* data;
  int64_t sb, sh, sl;
  T* at(int64_t b, int64_t h) const { return data + b * sb + h * sh; }
};

template <class T>
T* data_of(const at::Tensor& t) {  // T: a compute dtype, or the bits of a bfloat16 / float16 cache
  if constexpr (std::is_same_v<T, Bf16>) return reinterpret_cast<Bf16*>(t.data_ptr<at::BFloat16>());
  else if constexpr (std::is_same_v<T, F16>) return reinterpret_cast<F16*>(t.data_ptr<at::Half>());
  else return t.data_ptr<T>();
}

template <class T>
Heads<T> heads(const at::Tensor& t) {  // a single row's stride is arbitrary: D is a valid one
  return {data_of<T>(t), t.stride(0), t.stride(1), t.size(2) == 1 ? t.size(3) : t.stride(2)};
}

// The compute dtype of the inputs, read in place when each row is unit-stride and rows do not overlap (a cache
// narrowed on L; VAR's q, k, v views of one (B, L, 3, H, D) qkv tensor), else a contiguous copy.
at::Tensor operand(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor r = t.to(dtype);
  const bool rows_ok = (r.stride(3) == 1 || r.size(3) == 1) && (r.stride(2) >= r.size(3) || r.size(2) == 1);
  return rows_ok ? r : r.contiguous();
}

at::ScalarType compute_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Tile flags (ceil(Lq / kTileQ), ceil(Lk / kTileK)) of a mask, computed once per mask and shape: every
// layer of a model and every training step reuses them.
std::shared_ptr<const std::vector<uint8_t>> tile_flags(const MaskParams& m, int Lq, int Lk) {
  std::vector<int32_t> key = {m.kind, m.text_len, m.grid, m.conv_kernel, Lq, Lk};
  if (m.kind == kernels::kBlockCausal) key.insert(key.end(), m.kv_end, m.kv_end + Lq);
  static std::mutex mutex;
  static std::map<std::vector<int32_t>, std::shared_ptr<const std::vector<uint8_t>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  if (cache.size() >= 256) cache.clear();  // bounds memory under ever-new shapes
  auto flags = std::make_shared<std::vector<uint8_t>>(size_t((Lq + kTileQ - 1) / kTileQ) * ((Lk + kTileK - 1) / kTileK));
  kernels::classify_tiles(m, Lq, Lk, kTileQ, kTileK, flags->data());
  cache.emplace(std::move(key), flags);
  return flags;
}

struct Dims {
  int64_t B, H, Hk, Lq, Lk, D;
  int nq, nk;  // query tiles, key tiles
};

Dims dims(const at::Tensor& q, const at::Tensor& k, int64_t Lk) {
  const int nq = int((q.size(2) + kTileQ - 1) / kTileQ), nk = int((Lk + kTileK - 1) / kTileK);
  return {q.size(0), q.size(1), k.size(1), q.size(2), Lk, q.size(3), nq, nk};
}

// The mask at tile granularity: kind of (query tile i, key tile j) for batch row b.
struct Tiles {
  const uint8_t* flags;  // (nq, nk) from tile_flags
  MaskParams mask;
  const Dims& d;
  uint8_t kind(int b, int i, int j) const {
    const int k0 = j * kTileK, k1 = int(std::min<int64_t>(k0 + kTileK, d.Lk));
    return kernels::tile_with_key_len(flags[i * d.nk + j], mask, b, k0, k1);
  }
  // End of the run of at most max_len tiles that see keys, from key tile `begin` (visible) on.
  template <class Visible>
  static int run_end(int begin, int end, int max_len, Visible visible) {
    int e = begin + 1;
    while (e < end && e - begin < max_len && visible(e)) ++e;
    return e;
  }
};

// -inf on the hidden keys of the partial tiles among query tiles [i0, i1) x key tiles [j0, j1) of S (rows, ld),
// whose rows start at query tile i0 and columns at key tile j0.
template <class T>
void mask_tiles(const Tiles& t, int b, int i0, int i1, int j0, int j1, T* S, int ld) {
  const Dims& d = t.d;
  const int q1 = int(std::min<int64_t>(i1 * kTileQ, d.Lq)), k1 = int(std::min<int64_t>(j1 * kTileK, d.Lk));
  for (int i = i0; i < i1; ++i) {
    for (int j = j0; j < j1; ++j) {
      if (t.kind(b, i, j) != kernels::kTilePartial) continue;
      for (int q = i * kTileQ; q < std::min((i + 1) * kTileQ, q1); ++q)
        for (int k = j * kTileK; k < std::min((j + 1) * kTileK, k1); ++k)
          if (!kernels::visible(t.mask, b, q, k, int(d.Lq), int(d.Lk)))
            S[(q - i0 * kTileQ) * ld + k - j0 * kTileK] = -std::numeric_limits<T>::infinity();
    }
  }
}

// S (rows, ld) = scale Q K^T for `rows` queries from Q and keys [k0, k1) of K (row strides ldq, ldk), then
// -inf on columns [k1 - k0, ld).
template <class T>
void scores(const T* Q, int ldq, const T* K, int ldk, int rows, int k0, int k1, int D, T scale, T* S, int ld) {
  gemm<T>(false, true, rows, k1 - k0, D, scale, Q, ldq, K + int64_t(k0) * ldk, ldk, T(0), S, ld);
  for (int r = 0; r < rows; ++r) std::fill(S + r * ld + k1 - k0, S + (r + 1) * ld, -std::numeric_limits<T>::infinity());
}

// Score rows are whole vectors of the widest ISA (cpu/attention_isa.h).
constexpr int kRowAlign = 16;
int row_ld(int cols) { return (cols + kRowAlign - 1) / kRowAlign * kRowAlign; }

// Query rows [r0, r1) of every head, processed together (one product pair per run of keys). Prefix masks
// also keep the most keys any of the rows sees.
struct QueryBlock {
  int r0, r1, keys;
};

// The generic plan, for any mask: query blocks are runs of up to kBlockQ query tiles whose tile flags are
// equal, so a block visits exactly the key tiles each of its tiles would; runs of up to kRunK visible key
// tiles go through one product pair, partial tiles masked element by element.
struct TilePlan {
  static constexpr int kBlockQ = 4, kRunK = 8, kMaxRows = kBlockQ * kTileQ, kMaxCols = kRunK * kTileK;
  Tiles t;
  std::vector<QueryBlock> blocks;

  TilePlan(const uint8_t* flags, const MaskParams& mask, const Dims& d) : t{flags, mask, d} {
    for (int i0 = 0; i0 < d.nq;) {
      int i1 = i0 + 1;
      while (i1 < d.nq && i1 - i0 < kBlockQ && std::memcmp(flags + i1 * d.nk, flags + i0 * d.nk, d.nk) == 0) ++i1;
      blocks.push_back({i0 * kTileQ, int(std::min<int64_t>(i1 * kTileQ, d.Lq)), 0});
      i0 = i1;
    }
  }
  int splittable_keys() const { return t.d.nk; }
  // run(k0, k1, mask) for each run of visible keys of block blk in key split s of splits (batch row b);
  // mask(S, ld) hides what the run's product must not see.
  template <class Run>
  void runs(int b, int blk, int s, int splits, Run run) const {
    const int i0 = blocks[blk].r0 / kTileQ, i1 = (blocks[blk].r1 + kTileQ - 1) / kTileQ;
    const int per_split = (t.d.nk + splits - 1) / splits, j_end = std::min(t.d.nk, (s + 1) * per_split);
    auto visible = [&](int j) { return t.kind(b, i0, j) != kernels::kTileSkip; };
    for (int j = s * per_split; j < j_end;) {
      if (!visible(j)) { ++j; continue; }
      const int j1 = Tiles::run_end(j, j_end, kRunK, visible);
      run(j * kTileK, int(std::min<int64_t>(j1 * kTileK, t.d.Lk)),
          [&](auto* S, int ld) { mask_tiles(t, b, i0, i1, j, j1, S, ld); });
      j = j1;
    }
  }
};

// The plan of the masks where every query row sees a key prefix [0, n_r): full, block-causal (n_r = kv_end[r],
// VAR), either with key_len, and decode. Rows that see the same prefix (a VAR scale) form blocks of at most
// kMaxRows rows that compute exactly their keys: no tile rounding, no per-element mask, products over the
// exact key count. A block whose keys fit kMaxCols takes one pass (one softmax, no rescaling of out).
struct PrefixPlan {
  // A product call costs about as much as kCallCost more score elements: neighbouring small blocks (VAR's
  // first scales) merge when the union, masked per row, costs less than the two calls.
  static constexpr int kMaxRows = 128, kMaxCols = 1024, kCallCost = 4096;
  MaskParams mask;
  const Dims& d;
  std::vector<QueryBlock> blocks;

  int keys(int r) const {  // n_r before key_len
    return mask.kind == kernels::kBlockCausal ? std::clamp(mask.kv_end[r], 0, int(d.Lk)) : int(d.Lk);
  }
  int keys(int b, int r) const { return mask.key_len ? std::min(keys(r), mask.key_len[b]) : keys(r); }

  PrefixPlan(const MaskParams& mask, const Dims& d) : mask(mask), d(d) {
    for (int r0 = 0; r0 < d.Lq;) {  // runs of equal prefixes, cut into equal pieces of <= kMaxRows rows
      int r1 = r0 + 1;
      while (r1 < d.Lq && keys(r1) == keys(r0)) ++r1;
      const int n = (r1 - r0 + kMaxRows - 1) / kMaxRows;
      for (int p = 0; p < n; ++p) add({r0 + (r1 - r0) * p / n, r0 + (r1 - r0) * (p + 1) / n, keys(r0)});
      r0 = r1;
    }
  }
  void add(QueryBlock next) {
    if (!blocks.empty()) {
      QueryBlock& last = blocks.back();
      const int64_t rows = next.r1 - last.r0, n = std::max(last.keys, next.keys);
      const int64_t apart = int64_t(last.r1 - last.r0) * last.keys + int64_t(next.r1 - next.r0) * next.keys;
      if (rows <= kMaxRows && rows * n < apart + kCallCost) {
        last = {last.r0, next.r1, int(n)};
        return;
      }
    }
    blocks.push_back(next);
  }
  int splittable_keys() const { return int(d.Lk); }
  template <class Run>
  void runs(int b, int blk, int s, int splits, Run run) const {
    const QueryBlock& qb = blocks[blk];
    const int n = mask.key_len ? std::clamp(mask.key_len[b], 0, qb.keys) : qb.keys;
    const int per_split = (n + splits - 1) / splits;
    const int k_end = std::min(n, (s + 1) * per_split), passes = (k_end - s * per_split + kMaxCols - 1) / kMaxCols;
    for (int p = 0; p < passes; ++p) {  // equal passes of <= kMaxCols keys
      const int k0 = s * per_split + (k_end - s * per_split) * p / passes;
      const int k1 = s * per_split + (k_end - s * per_split) * (p + 1) / passes;
      run(k0, k1, [&](auto* S, int ld) {
        for (int r = qb.r0; r < qb.r1; ++r)  // rows that see fewer keys than the block
          std::fill(S + (r - qb.r0) * ld + std::clamp(keys(b, r) - k0, 0, k1 - k0), S + (r - qb.r0) * ld + (k1 - k0),
                    -std::numeric_limits<std::remove_pointer_t<decltype(S)>>::infinity());
      });
    }
  }
};

// Whether every query row sees a key prefix (PrefixPlan).
bool prefix_mask(const MaskParams& mask) { return mask.kind == kernels::kFull || mask.kind == kernels::kBlockCausal; }

// Query chunks of the tiny path (cpu/attention_tiny.h) where the mask does not depend on the query: full, key_len.
int64_t query_chunk(const MaskParams& mask, const Dims& d) {
  return mask.kind == kernels::kFull ? attention_tiny_query_chunk(d.Lq, d.Lk, d.D) : 0;
}

// Forward over key split s of every (b, h, query block of the plan): out (splits, B, H, Lq, D) and lse
// (splits, B, H, Lq), each split normalized on its own keys (combined by the caller).
template <class T, class Plan>
void forward(Heads<T> q, Heads<T> k, Heads<T> v, const Plan& plan, const Dims& d, T scale, int splits, T* out,
             T* lse) {
  const int n_blocks = int(plan.blocks.size()), D = int(d.D);
  const int64_t items = d.B * d.H * n_blocks * splits, group = d.H / d.Hk;
  const auto& kern = micro<T>();
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const blas::SerialScope serial_blas;
    std::vector<T> S(Plan::kMaxRows * row_ld(Plan::kMaxCols)), m(Plan::kMaxRows), l(Plan::kMaxRows);
    for (int64_t item = begin; item < end; ++item) {
      const int blk = int(item % n_blocks), s = int(item / n_blocks % splits);
      const int64_t bh = item / n_blocks / splits, b = bh / d.H, h = bh % d.H;
      const int q0 = plan.blocks[blk].r0, rows = plan.blocks[blk].r1 - q0;
      const T *Q = q.at(b, h) + q0 * q.sl, *K = k.at(b, h / group), *V = v.at(b, h / group);
      T* o = out + ((s * d.B * d.H + bh) * d.Lq + q0) * D;  // (rows, D), the running accumulator
      std::fill(o, o + rows * D, T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      plan.runs(int(b), blk, s, splits, [&](int k0, int k1, auto mask) {
        const int ld = row_ld(k1 - k0);
        scores<T>(Q, int(q.sl), K, int(k.sl), rows, k0, k1, D, scale, S.data(), ld);
        mask(S.data(), ld);
        kern.online_softmax(S.data(), rows, ld, m.data(), l.data(), o, D);
        gemm<T>(false, false, rows, D, k1 - k0, T(1), S.data(), ld, V + k0 * v.sl, int(v.sl), T(1), o, D);
      });
      T* lse_rows = lse + (s * d.B * d.H + bh) * d.Lq + q0;
      for (int r = 0; r < rows; ++r) {  // a row that saw no key: out 0, lse -inf (a NaN row stays NaN)
        const T inv = l[r] == T(0) ? T(0) : T(1) / l[r];
        for (int c = 0; c < D; ++c) o[r * D + c] *= inv;
        lse_rows[r] = l[r] == T(0) ? -std::numeric_limits<T>::infinity() : m[r] + std::log(l[r]);
      }
    }
  });
}

// Splits of the keys so that (B, H, query blocks, splits) gives every thread a few items: decoding one
// scale (or one token) for a small batch has too few query blocks alone.
int key_splits(const Dims& d, int n_blocks, int keys) {
  const int64_t items = std::max<int64_t>(1, d.B * d.H * n_blocks), want = 4 * at::get_num_threads();
  return items >= want ? 1 : int(std::max<int64_t>(1, std::min<int64_t>(keys, (want + items - 1) / items)));
}

// Merges per-split results: lse = logsumexp over splits, out = sum of exp(lse_s - lse) out_s.
std::tuple<at::Tensor, at::Tensor> combine(const at::Tensor& out_s, const at::Tensor& lse_s) {
  if (out_s.size(0) == 1) return {out_s[0], lse_s[0]};
  at::Tensor lse = at::logsumexp(lse_s, 0);                            // (B, H, Lq)
  at::Tensor w = at::exp(lse_s - lse).masked_fill_(lse_s == -INFINITY, 0.0);  // (splits, B, H, Lq); NaN stays
  return {(w.unsqueeze(-1) * out_s).sum(0), lse};
}

template <class T, class Plan>
std::tuple<at::Tensor, at::Tensor> forward_plan(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const Plan& plan, const Dims& d, double scale) {
  const int splits = key_splits(d, int(plan.blocks.size()), plan.splittable_keys());
  at::Tensor out = at::empty({splits, d.B, d.H, d.Lq, d.D}, q.options());  // (splits, B, H, Lq, D)
  at::Tensor lse = at::empty({splits, d.B, d.H, d.Lq}, q.options());       // (splits, B, H, Lq)
  if (out.numel() > 0)
    forward<T>(heads<T>(q), heads<T>(k), heads<T>(v), plan, d, T(scale), splits, out.data_ptr<T>(),
               lse.data_ptr<T>());
  return combine(out, lse);
}

std::tuple<at::Tensor, at::Tensor> run_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               int64_t Lk, const MaskParams& mask, double scale) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = operand(q, dt), kc = operand(k, dt), vc = operand(v, dt);
  const Dims d = dims(q, k, Lk);
  if (attention_tiny_takes(d.Lq, d.Lk, d.D)) {
    auto [out, lse] = attention_tiny_fwd(qc, kc, vc, mask, scale);
    return {out.to(q.scalar_type()), lse};
  }
  if (const int64_t c = query_chunk(mask, d)) {  // (B, H Lq / c, c, D): chunks of c queries as tiny sequences
    auto [out, lse] = attention_tiny_fwd(qc.reshape({d.B, d.H * (d.Lq / c), c, d.D}), kc, vc, mask, scale);
    return {out.view({d.B, d.H, d.Lq, d.D}).to(q.scalar_type()), lse.view({d.B, d.H, d.Lq})};
  }
  auto [out, lse] = AT_DISPATCH_FLOATING_TYPES(dt, "attention_fwd", [&] {
    if (prefix_mask(mask))
      return forward_plan<scalar_t>(qc, kc, vc, PrefixPlan(mask, d), d, scale);
    const auto flags = tile_flags(mask, int(d.Lq), int(d.Lk));
    return forward_plan<scalar_t>(qc, kc, vc, TilePlan(flags->data(), mask, d), d, scale);
  });
  return {out.to(q.scalar_type()), lse};
}

// FlashAttention-2 backward for every (b, h), over the forward's plan: each query block against each run of its
// keys, P recomputed from lse.
//   P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - delta), dQ += scale dS K, dK += scale dS^T Q
// dk, dv (B, H, Lk, D) per query head; the caller sums the heads that share a key head.
template <class T, class Plan>
void backward(Heads<T> q, Heads<T> k, Heads<T> v, Heads<T> dout, const T* lse, const T* out, const Plan& plan,
              const Dims& d, T scale, T* dq, T* dk, T* dv) {
  const int64_t group = d.H / d.Hk;
  const int D = int(d.D), n_blocks = int(plan.blocks.size());
  const auto& kern = micro<T>();
  at::parallel_for(0, d.B * d.H, 1, [&](int64_t begin, int64_t end) {
    const blas::SerialScope serial_blas;
    std::vector<T> P(Plan::kMaxRows * row_ld(Plan::kMaxCols)), dS(P.size()), delta(d.Lq);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / d.H, h = bh % d.H;
      const T *Q = q.at(b, h), *K = k.at(b, h / group), *V = v.at(b, h / group), *dO = dout.at(b, h);
      T *dQ = dq + bh * d.Lq * D, *dK = dk + bh * d.Lk * D, *dV = dv + bh * d.Lk * D;
      // this head's gradients are summed into from zero here, in the thread that writes them (no zeroing pass
      // before the kernel), and its rowsum(dout * out) taken while the rows are read anyway
      std::fill(dQ, dQ + d.Lq * D, T(0));
      std::fill(dK, dK + d.Lk * D, T(0));
      std::fill(dV, dV + d.Lk * D, T(0));
      const T* O = out + bh * d.Lq * D;
      for (int64_t r = 0; r < d.Lq; ++r) {
        T acc[4] = {0, 0, 0, 0};
        const T *a = dO + r * D, *o = O + r * D;
        int c = 0;
        for (; c + 4 <= D; c += 4)
          for (int j = 0; j < 4; ++j) acc[j] += a[c + j] * o[c + j];
        for (; c < D; ++c) acc[0] += a[c] * o[c];
        delta[r] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      }
      for (int blk = 0; blk < n_blocks; ++blk) {
        const int q0 = plan.blocks[blk].r0, rows = plan.blocks[blk].r1 - q0;
        const T *lse_rows = lse + bh * d.Lq + q0, *delta_rows = delta.data() + q0;
        plan.runs(int(b), blk, 0, 1, [&](int k0, int k1, auto mask) {
          const int cols = k1 - k0, ld = row_ld(cols);
          scores<T>(Q + q0 * q.sl, int(q.sl), K, int(k.sl), rows, k0, k1, D, scale, P.data(), ld);
          mask(P.data(), ld);
          kern.probs(P.data(), rows, ld, lse_rows);
          gemm<T>(true, false, cols, D, rows, T(1), P.data(), ld, dO + q0 * D, D, T(1), dV + k0 * D, D);
          gemm<T>(false, true, rows, cols, D, T(1), dO + q0 * D, D, V + k0 * v.sl, int(v.sl), T(0), dS.data(), ld);
          kern.dscores(P.data(), dS.data(), rows, ld, delta_rows);
          gemm<T>(false, false, rows, D, cols, scale, dS.data(), ld, K + k0 * k.sl, int(k.sl), T(1), dQ + q0 * D, D);
          gemm<T>(true, false, cols, D, rows, scale, dS.data(), ld, Q + q0 * q.sl, int(q.sl), T(1), dK + k0 * D, D);
        });
      }
    }
  });
}

// ---- decode query by query: each query row reads exactly the keys it sees ----

// The keys query row qr (of the last Lq of Lk keys), in batch row b, sees, as spans in key order: under a prefix mask
// one span; under a DALL-E mask (mask.h's visible() written as ranges) the text, then its row window (the previous
// grid image tokens), its column (every grid-th key back) or its conv window's rows.
void query_spans(const MaskParams& m, int b, int qr, int Lq, int Lk, std::vector<Span>& spans) {
  if (decode_prefix_mask(m.kind)) {
    const int n = prefix_keys(m, b, qr, Lq, Lk);
    spans.assign(n > 0 ? 1 : 0, Span{0, n, 1});
    return;
  }
  const int p = qr + Lk - Lq;  // the query's position among the keys
  const int end = std::min(p + 1, m.key_len ? std::min(m.key_len[b], Lk) : Lk);  // keys >= end are hidden
  spans.clear();
  auto add = [&](int k0, int n, int stride) {
    n = std::min(n, k0 < end ? (end - 1 - k0) / stride + 1 : 0);
    if (n > 0) spans.push_back({k0, n, stride});
  };
  const int T = m.text_len, W = m.grid;
  add(0, std::min(T, p + 1), 1);
  if (p < T) return;  // a text query: causal over the text
  const int i = p - T, r = i / W, c = i % W;  // raster index, row and column on the grid
  if (m.kind == kernels::kDalleRow) {
    add(T + std::max(0, i - W), std::min(i, W) + 1, 1);
  } else if (m.kind == kernels::kDalleColumn) {
    add(T + c, r + 1, W);
  } else {
    const int half = m.conv_kernel / 2, c0 = std::max(0, c - half);
    for (int rr = std::max(0, r - half); rr <= r; ++rr)
      add(T + rr * W + c0, (rr < r ? std::min(W - 1, c + half) : c) - c0 + 1, 1);
  }
}

// The grain of a parallel_for over `items` items of about `work` multiply-adds each: all inline when the whole job is
// under kInlineWork (~10 us on one core), less than waking the pool's threads costs when they sleep between calls
// (VAR's first scales: 1 or 4 queries per head; a benchmark's single calls).
constexpr int64_t kInlineWork = int64_t(1) << 17;
int64_t grain(int64_t items, int64_t work) { return items * work < kInlineWork ? items : 1; }

template <class T>
const AttentionDecodeKernels<T>& decode_micro() {
  if constexpr (std::is_same_v<T, float>) return isa().attention_decode->f32;
  else return isa().attention_decode->f64;
}

// Queries too few for the fused kernel's blocks, whose lanes would be mostly empty (a block reads each key's D
// values once per lane, one query at a time once per query): they go span by span (VAR's first scales, one token).
bool few_queries(int64_t Lq, int block) { return Lq * 4 <= block; }

// The span kernel of compute dtype T for caches stored as S (T, or bfloat16 / float16 under float32).
template <class T, class S>
auto spans_kernel() {
  if constexpr (std::is_same_v<S, Bf16>) return isa().attention_decode->bf16_spans;
  else if constexpr (std::is_same_v<S, F16>) return isa().attention_decode->f16_spans;
  else return decode_micro<T>().spans;
}

// out (B, H, Lq, D), lse (B, H, Lq) of every (b, h, query row >= row0) from the keys of its spans, read in place
// in their storage S: the decode micro-kernel's one-query path (scores, softmax and P V in one pass over the spans).
template <class T, class S = T>
void decode_spans(Heads<T> q, Heads<S> k, Heads<S> v, const MaskParams& mask, const Dims& d, T scale, T* out,
                  T* lse, int64_t row0 = 0) {
  const int64_t group = d.H / d.Hk, rows = d.Lq - row0;
  const auto kernel = spans_kernel<T, S>();
  const int64_t items = d.B * d.H * rows;
  at::parallel_for(0, items, grain(items, 2 * d.Lk * d.D), [&](int64_t begin, int64_t end) {
    std::vector<Span> spans;
    std::vector<T> scores(d.Lk + decode_micro<T>().block);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = row0 + item % rows, bh = item / rows, b = bh / d.H, h = bh % d.H;
      query_spans(mask, int(b), int(r), int(d.Lq), int(d.Lk), spans);
      kernel(q.at(b, h) + r * q.sl, spans.data(), int(spans.size()), k.at(b, h / group), k.sl, v.at(b, h / group),
             v.sl, int(d.D), scale, out + (bh * d.Lq + r) * d.D, lse + bh * d.Lq + r, scores.data());
    }
  });
}

// ---- decode under a prefix mask: the fused kernel of cpu/attention_decode_isa.cpp ----

// Whether the fused kernel takes a decode: every query sees a key prefix, the head fits its scratch, and its query
// blocks alone give every thread work (else forward_plan splits the keys).
bool fused_decode(const MaskParams& mask, const Dims& d, int block) {
  const int blocks = int((d.Lq + block - 1) / block);
  return decode_prefix_mask(mask.kind) && d.D <= kDecodeMaxDim && key_splits(d, blocks, int(d.Lk)) == 1;
}

// out (B, H, Lq, D), lse (B, H, Lq) of the compute dtype T from operands with unit-stride rows: the fused kernel's
// blocks, and span by span the last rows when they are too few for a block of their own (few_queries: AVX2's 24-row
// blocks leave 1 of VAR's 25 and 169 queries, 4 of its 100).
template <class T>
std::tuple<at::Tensor, at::Tensor> decode_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const Dims& d, const MaskParams& mask, double scale) {
  const auto& kern = decode_micro<T>();
  const int64_t last = d.Lq % kern.block, by_spans = last > 0 && few_queries(last, kern.block) ? last : 0;
  const DecodeDims dd{d.B, d.H, d.Hk, int(d.Lq), int(d.Lk), int(d.D), int(d.Lq - by_spans)};
  const int64_t items = d.B * d.H * ((dd.rows + kern.block - 1) / kern.block);
  at::Tensor out = at::empty({d.B, d.H, d.Lq, d.D}, q.options());  // (B, H, Lq, D)
  at::Tensor lse = at::empty({d.B, d.H, d.Lq}, q.options());       // (B, H, Lq)
  auto view = [](const at::Tensor& t) {
    const Heads<T> h = heads<T>(t);
    return TinyHeads<T>{h.data, h.sb, h.sh, h.sl};
  };
  at::parallel_for(0, items, grain(items, 2 * kern.block * d.Lk * d.D), [&](int64_t begin, int64_t end) {
    kern.forward(view(q), view(k), view(v), dd, mask, T(scale), begin, end, out.data_ptr<T>(), lse.data_ptr<T>());
  });
  if (by_spans > 0)
    decode_spans<T>(heads<T>(q), heads<T>(k), heads<T>(v), mask, d, T(scale), out.data_ptr<T>(), lse.data_ptr<T>(),
                    d.Lq - by_spans);
  return {out, lse};
}

// Decode steps this short read their keys span by span; longer ones (a prompt) go by tiles.
constexpr int kSpanMaxQueries = 16;
bool span_decode(const MaskParams& mask, int64_t Lq) {
  return mask.kind >= kernels::kDalleRow && Lq <= kSpanMaxQueries;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const MaskParams& mask, double scale) {
  auto [out, lse] = run_forward(q, k, v, k.size(2), mask, scale);
  return {out, lse.to(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat)};
}

std::tuple<at::Tensor, at::Tensor> attention_decode(const at::Tensor& q, const at::Tensor& k_cache,
                                                    const at::Tensor& v_cache, int64_t cache_len,
                                                    const MaskParams& mask, double scale) {
  const at::Tensor k = k_cache.narrow(2, 0, cache_len), v = v_cache.narrow(2, 0, cache_len);
  const auto lse_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto dt = compute_dtype(q);
  const Dims d = dims(q, k, cache_len);
  const int block = dt == at::kDouble ? decode_micro<double>().block : decode_micro<float>().block;
  const bool fused = q.numel() > 0 && fused_decode(mask, d, block);
  if (fused && !few_queries(d.Lq, block)) {
    const at::Tensor qc = operand(q, dt), kc = operand(k, dt), vc = operand(v, dt);
    auto [out, lse] = AT_DISPATCH_FLOATING_TYPES(dt, "attention_decode", [&] {
      return decode_fused<scalar_t>(qc, kc, vc, d, mask, scale);
    });
    return {out.to(q.scalar_type()), lse.to(lse_dtype)};
  }
  if (!fused && !span_decode(mask, q.size(2))) {
    auto [out, lse] = run_forward(q, k, v, cache_len, mask, scale);
    return {out, lse.to(lse_dtype)};
  }
  // Span by span, bfloat16 and float16 caches are read in place, widened as they are loaded (half the bytes of
  // float32; only q, a few rows, is converted); the other paths above compute on float32 copies.
  const auto cache = q.scalar_type();
  const bool half = cache == at::kBFloat16 || cache == at::kHalf;
  const at::Tensor qc = operand(q, dt).contiguous(), kc = operand(k, half ? cache : dt),
                   vc = operand(v, half ? cache : dt);
  at::Tensor out = at::empty(qc.sizes(), qc.options());       // (B, H, Lq, D)
  at::Tensor lse = at::empty(qc.sizes().slice(0, 3), qc.options());  // (B, H, Lq)
  if (out.numel() == 0) return {out.to(cache), lse.to(lse_dtype)};
  if (cache == at::kBFloat16)
    decode_spans<float, Bf16>(heads<float>(qc), heads<Bf16>(kc), heads<Bf16>(vc), mask, d, float(scale),
                              out.data_ptr<float>(), lse.data_ptr<float>());
  else if (cache == at::kHalf)
    decode_spans<float, F16>(heads<float>(qc), heads<F16>(kc), heads<F16>(vc), mask, d, float(scale),
                             out.data_ptr<float>(), lse.data_ptr<float>());
  else
    AT_DISPATCH_FLOATING_TYPES(dt, "attention_decode", [&] {
      decode_spans<scalar_t>(heads<scalar_t>(qc), heads<scalar_t>(kc), heads<scalar_t>(vc), mask, d,
                             scalar_t(scale), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    });
  return {out.to(cache), lse.to(lse_dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             const MaskParams& mask, double scale) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = operand(q, dt), kc = operand(k, dt), vc = operand(v, dt);
  const at::Tensor dOc = dout.to(dt).contiguous();
  const Dims d = dims(q, k, k.size(2));
  at::Tensor dq, dk, dv;  // (B, H, Lq, D); (B, H, Lk, D) per query head
  const int64_t c = query_chunk(mask, d), chunks = c > 0 ? d.Lq / c : 0;
  const bool tiny = c > 0 || attention_tiny_takes(d.Lq, d.Lk, d.D);
  if (c > 0) {  // the forward's query chunks; each chunk's key gradients summed into its head's
    std::tie(dq, dk, dv) = attention_tiny_bwd(dOc.view({d.B, d.H * chunks, c, d.D}),
                                              qc.reshape({d.B, d.H * chunks, c, d.D}), kc, vc, mask, scale);
    dq = dq.view({d.B, d.H, d.Lq, d.D});
    // one sum per key head over its query heads' chunks (head h = hk * group + g, chunk-major within it)
    dk = dk.view({d.B, d.Hk, d.H / d.Hk * chunks, d.Lk, d.D}).sum(2);
    dv = dv.view({d.B, d.Hk, d.H / d.Hk * chunks, d.Lk, d.D}).sum(2);
  } else if (tiny) {
    std::tie(dq, dk, dv) = attention_tiny_bwd(dOc, qc, kc, vc, mask, scale);
  } else if (d.Lk == 0 || qc.numel() == 0) {  // nothing for backward() to write
    dq = at::zeros(qc.sizes(), qc.options());
    dk = at::zeros({d.B, d.H, d.Lk, d.D}, qc.options());
    dv = at::zeros({d.B, d.H, d.Lk, d.D}, qc.options());
  } else {  // zeroed head by head inside backward()
    dq = at::empty(qc.sizes(), qc.options());
    dk = at::empty({d.B, d.H, d.Lk, d.D}, qc.options());
    dv = at::empty({d.B, d.H, d.Lk, d.D}, qc.options());
  }
  if (!tiny && dq.numel() > 0 && d.Lk > 0) {
    const at::Tensor outc = out.to(dt).contiguous();  // (B, H, Lq, D), as dout
    const at::Tensor lsec = lse.to(dt).contiguous();  // the tiny kernels make P again without it
    AT_DISPATCH_FLOATING_TYPES(dt, "attention_bwd", [&] {
      auto run = [&](const auto& plan) {
        backward<scalar_t>(heads<scalar_t>(qc), heads<scalar_t>(kc), heads<scalar_t>(vc), heads<scalar_t>(dOc),
                           lsec.data_ptr<scalar_t>(), outc.data_ptr<scalar_t>(), plan, d, scalar_t(scale),
                           dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
      };
      if (prefix_mask(mask)) return run(PrefixPlan(mask, d));
      const auto flags = tile_flags(mask, int(d.Lq), int(d.Lk));
      run(TilePlan(flags->data(), mask, d));
    });
  }
  if (d.H != d.Hk && c == 0) {  // heads sharing a key head (multi-query) add their key gradients
    dk = dk.view({d.B, d.Hk, d.H / d.Hk, d.Lk, d.D}).sum(2);
    dv = dv.view({d.B, d.Hk, d.H / d.Hk, d.Lk, d.D}).sum(2);
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace fastar::cpu
