// Flash-style CPU attention (FlashAttention-2, Dao 2023): query tiles x key tiles with an online softmax,
// never an Lq x Lk array. Tiles the mask hides are skipped before their keys are read, fully visible
// tiles skip the per-element mask. The tile products run on the BLAS that libtorch_cpu carries and exports
// (MKL or OpenBLAS; at::native::cpublas::gemm is not exported), the softmax between them on the per-ISA
// micro-kernels of cpu/attention_isa.cpp.
#include "cpu/attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cpu/attention_isa.h"
#include "cpu/isa.h"

extern "C" {  // Fortran BLAS, column-major, LP64
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace fastar::cpu {
namespace base { extern const AttentionIsa kAttentionIsa; }
namespace avx2 { extern const AttentionIsa kAttentionIsa; }
namespace avx512 { extern const AttentionIsa kAttentionIsa; }

const AttentionIsa& attention_isa() {
  static const AttentionIsa& chosen = [] () -> const AttentionIsa& {
    const char* name = isa().name;
    for (const AttentionIsa* cand : {&avx512::kAttentionIsa, &avx2::kAttentionIsa})
      if (std::strcmp(name, cand->name) == 0) return *cand;
    return base::kAttentionIsa;
  }();
  return chosen;
}

namespace {

using kernels::MaskParams;
// 32 query rows keep block-causal VAR's visited fraction near the element count (0.67 of L^2 at L = 680,
// against 0.62 visible); 64 keys fill a score row with whole vectors. ld of the score tile = kTileK.
constexpr int kTileQ = 32, kTileK = 64;

template <class T>
const AttentionKernels<T>& micro() {
  if constexpr (std::is_same_v<T, float>) return attention_isa().f32;
  else return attention_isa().f64;
}

// Row-major C (M, N) = alpha op(A) op(B) + beta C, op(A) (M, K), op(B) (K, N): column-major BLAS on the
// transposes, C^T = op(B)^T op(A)^T.
template <class T>
void mm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
        T* C, int ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  if constexpr (std::is_same_v<T, float>) sgemm_(&tb, &ta, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
  else dgemm_(&tb, &ta, &N, &M, &K, &alpha, B, &ldb, A, &lda, &beta, C, &ldc);
}

// One (B, H, L, D) operand whose rows are contiguous: element (b, h, l, d) at b * sb + h * sh + l * D + d.
template <class T>
struct Heads {
  T* data;
  int64_t sb, sh;
  T* at(int64_t b, int64_t h) const { return data + b * sb + h * sh; }
};

template <class T>
Heads<T> heads(const at::Tensor& t) { return {t.data_ptr<T>(), t.stride(0), t.stride(1)}; }

// The compute dtype of the inputs, with rows contiguous (a cache narrowed on L keeps its storage).
at::Tensor operand(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor r = t.to(dtype);
  return r.stride(3) == 1 && r.stride(2) == r.size(3) ? r : r.contiguous();
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
  if (cache.size() >= 256) cache.clear();  // bounds memory under ever-new shapes (decode's growing cache)
  auto flags = std::make_shared<std::vector<uint8_t>>(size_t((Lq + kTileQ - 1) / kTileQ) * ((Lk + kTileK - 1) / kTileK));
  kernels::classify_tiles(m, Lq, Lk, kTileQ, kTileK, flags->data());
  cache.emplace(std::move(key), flags);
  return flags;
}

// Scores of one tile, S (rows, kTileK) = scale Q K^T, -inf on hidden keys and on columns past the tile.
template <class T>
void scores(const T* Q, const T* K, int rows, int cols, int D, T scale, uint8_t kind, const MaskParams& mask,
            int b, int q0, int k0, int Lq, int Lk, T* S) {
  mm<T>(false, true, rows, cols, D, scale, Q, D, K, D, T(0), S, kTileK);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (int r = 0; r < rows; ++r) {
    T* s = S + r * kTileK;
    if (kind == kernels::kTilePartial)
      for (int c = 0; c < cols; ++c)
        if (!kernels::visible(mask, b, q0 + r, k0 + c, Lq, Lk)) s[c] = neg_inf;
    for (int c = cols; c < kTileK; ++c) s[c] = neg_inf;
  }
}

struct Dims {
  int64_t B, H, Hk, Lq, Lk, D;
  int nq, nk;
};

Dims dims(const at::Tensor& q, const at::Tensor& k, int64_t Lk) {
  const int nq = int((q.size(2) + kTileQ - 1) / kTileQ), nk = int((Lk + kTileK - 1) / kTileK);
  return {q.size(0), q.size(1), k.size(1), q.size(2), Lk, q.size(3), nq, nk};
}

// Forward over key tiles [j0, j1) of every (b, h, query tile): out (splits, B, H, Lq, D) and lse
// (splits, B, H, Lq), each split normalized on its own keys (combined by the caller).
template <class T>
void forward(Heads<T> q, Heads<T> k, Heads<T> v, const Dims& d, const MaskParams& mask, const uint8_t* flags,
             T scale, int splits, T* out, T* lse) {
  const int64_t items = d.B * d.H * d.nq * splits, group = d.H / d.Hk;
  const int per_split = (d.nk + splits - 1) / splits;
  const auto& kern = micro<T>();
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> S(kTileQ * kTileK), m(kTileQ), l(kTileQ);
    for (int64_t item = begin; item < end; ++item) {
      const int i = int(item % d.nq), s = int(item / d.nq % splits);
      const int64_t bh = item / d.nq / splits, b = bh / d.H, h = bh % d.H;
      const int q0 = i * kTileQ, rows = int(std::min<int64_t>(kTileQ, d.Lq - q0));
      const T* Q = q.at(b, h) + q0 * d.D;
      const T* K = k.at(b, h / group);
      const T* V = v.at(b, h / group);
      T* o = out + ((s * d.B * d.H + bh) * d.Lq + q0) * d.D;  // (rows, D), the running accumulator
      std::fill(o, o + rows * d.D, T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      for (int j = s * per_split; j < std::min(d.nk, (s + 1) * per_split); ++j) {
        const int k0 = j * kTileK, cols = int(std::min<int64_t>(kTileK, d.Lk - k0));
        const uint8_t kind = kernels::tile_with_key_len(flags[i * d.nk + j], mask, int(b), k0, k0 + cols);
        if (kind == kernels::kTileSkip) continue;
        scores<T>(Q, K + k0 * d.D, rows, cols, int(d.D), scale, kind, mask, int(b), q0, k0, int(d.Lq), int(d.Lk),
                  S.data());
        kern.online_softmax(S.data(), rows, kTileK, m.data(), l.data(), o, int(d.D));
        mm<T>(false, false, rows, d.D, cols, T(1), S.data(), kTileK, V + k0 * d.D, d.D, T(1), o, d.D);
      }
      T* lse_rows = lse + (s * d.B * d.H + bh) * d.Lq + q0;
      for (int r = 0; r < rows; ++r) {  // a row that saw no key: out 0, lse -inf
        const T inv = l[r] > 0 ? T(1) / l[r] : T(0);
        for (int64_t c = 0; c < d.D; ++c) o[r * d.D + c] *= inv;
        lse_rows[r] = l[r] > 0 ? m[r] + std::log(l[r]) : -std::numeric_limits<T>::infinity();
      }
    }
  });
}

// Splits of the keys so that (B, H, query tiles, splits) gives every thread a few items: decoding one
// scale (or one token) for a small batch has too few query tiles alone.
int key_splits(const Dims& d) {
  const int64_t items = d.B * d.H * d.nq, want = 4 * at::get_num_threads();
  return items >= want ? 1 : int(std::min<int64_t>(d.nk, (want + items - 1) / items));
}

// Merges per-split results: lse = logsumexp over splits, out = sum of exp(lse_s - lse) out_s.
std::tuple<at::Tensor, at::Tensor> combine(const at::Tensor& out_s, const at::Tensor& lse_s) {
  if (out_s.size(0) == 1) return {out_s[0], lse_s[0]};
  at::Tensor lse = at::logsumexp(lse_s, 0);                            // (B, H, Lq)
  at::Tensor w = at::exp(lse_s - lse).nan_to_num(0.0);                 // (splits, B, H, Lq); -inf - -inf = 0
  return {(w.unsqueeze(-1) * out_s).sum(0), lse};
}

template <class T>
std::tuple<at::Tensor, at::Tensor> forward_heads(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 int64_t Lk, const MaskParams& mask, double scale, bool split) {
  const Dims d = dims(q, k, Lk);
  const int splits = split ? key_splits(d) : 1;
  at::Tensor out = at::empty({splits, d.B, d.H, d.Lq, d.D}, q.options());  // (splits, B, H, Lq, D)
  at::Tensor lse = at::empty({splits, d.B, d.H, d.Lq}, q.options());       // (splits, B, H, Lq)
  if (out.numel() > 0) {
    const auto flags = tile_flags(mask, int(d.Lq), int(d.Lk));
    forward<T>(heads<T>(q), heads<T>(k), heads<T>(v), d, mask, flags->data(), T(scale), splits,
               out.data_ptr<T>(), lse.data_ptr<T>());
  } else if (lse.numel() > 0) {
    lse.fill_(-std::numeric_limits<double>::infinity());  // D = 0 still has rows and keys: no visible value
  }
  return combine(out, lse);
}

std::tuple<at::Tensor, at::Tensor> run_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               int64_t Lk, const MaskParams& mask, double scale, bool split) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = q.to(dt).contiguous(), kc = operand(k, dt), vc = operand(v, dt);
  auto [out, lse] = AT_DISPATCH_FLOATING_TYPES(dt, "attention_fwd", [&] {
    return forward_heads<scalar_t>(qc, kc, vc, Lk, mask, scale, split);
  });
  return {out.to(q.scalar_type()), lse};
}

// FlashAttention-2 backward for every (b, h): key tiles outer, query tiles inner, P recomputed from lse.
//   P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - delta), dQ += scale dS K, dK += scale dS^T Q
// dk, dv (B, H, Lk, D) per query head; the caller sums the heads that share a key head.
template <class T>
void backward(Heads<T> q, Heads<T> k, Heads<T> v, Heads<T> dout, const T* lse, const T* delta, const Dims& d,
              const MaskParams& mask, const uint8_t* flags, T scale, T* dq, T* dk, T* dv) {
  const int64_t group = d.H / d.Hk;
  const auto& kern = micro<T>();
  at::parallel_for(0, d.B * d.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> P(kTileQ * kTileK), dS(kTileQ * kTileK);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / d.H, h = bh % d.H;
      const T *Q = q.at(b, h), *K = k.at(b, h / group), *V = v.at(b, h / group), *dO = dout.at(b, h);
      T *dQ = dq + bh * d.Lq * d.D, *dK = dk + bh * d.Lk * d.D, *dV = dv + bh * d.Lk * d.D;
      for (int j = 0; j < d.nk; ++j) {
        const int k0 = j * kTileK, cols = int(std::min<int64_t>(kTileK, d.Lk - k0));
        for (int i = 0; i < d.nq; ++i) {
          const int q0 = i * kTileQ, rows = int(std::min<int64_t>(kTileQ, d.Lq - q0));
          const uint8_t kind = kernels::tile_with_key_len(flags[i * d.nk + j], mask, int(b), k0, k0 + cols);
          if (kind == kernels::kTileSkip) continue;
          const T *Qi = Q + q0 * d.D, *dOi = dO + q0 * d.D;
          scores<T>(Qi, K + k0 * d.D, rows, cols, int(d.D), scale, kind, mask, int(b), q0, k0, int(d.Lq),
                    int(d.Lk), P.data());
          kern.probs(P.data(), rows, kTileK, lse + bh * d.Lq + q0);
          mm<T>(true, false, cols, d.D, rows, T(1), P.data(), kTileK, dOi, d.D, T(1), dV + k0 * d.D, d.D);
          mm<T>(false, true, rows, cols, d.D, T(1), dOi, d.D, V + k0 * d.D, d.D, T(0), dS.data(), kTileK);
          kern.dscores(P.data(), dS.data(), rows, kTileK, delta + bh * d.Lq + q0);
          mm<T>(false, false, rows, d.D, cols, scale, dS.data(), kTileK, K + k0 * d.D, d.D, T(1), dQ + q0 * d.D, d.D);
          mm<T>(true, false, cols, d.D, rows, scale, dS.data(), kTileK, Qi, d.D, T(1), dK + k0 * d.D, d.D);
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const MaskParams& mask, double scale) {
  auto [out, lse] = run_forward(q, k, v, k.size(2), mask, scale, /*split=*/true);
  return {out, lse.to(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat)};
}

std::tuple<at::Tensor, at::Tensor> attention_decode(const at::Tensor& q, const at::Tensor& k_cache,
                                                    const at::Tensor& v_cache, int64_t cache_len, double scale) {
  const MaskParams full{kernels::kFull, 0, 0, 0, nullptr, nullptr};
  auto [out, lse] = run_forward(q, k_cache.narrow(2, 0, cache_len), v_cache.narrow(2, 0, cache_len), cache_len,
                                full, scale, /*split=*/true);
  return {out, lse.to(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse,
                                                             const MaskParams& mask, double scale) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = q.to(dt).contiguous(), kc = operand(k, dt), vc = operand(v, dt);
  const at::Tensor dOc = dout.to(dt).contiguous(), lsec = lse.to(dt).contiguous();
  const at::Tensor delta = (dOc * out.to(dt)).sum(-1).contiguous();  // (B, H, Lq) rowsum(dout * out)
  const Dims d = dims(q, k, k.size(2));
  at::Tensor dq = at::zeros(qc.sizes(), qc.options());                            // (B, H, Lq, D)
  at::Tensor dk = at::zeros({d.B, d.H, d.Lk, d.D}, qc.options());                 // (B, H, Lk, D)
  at::Tensor dv = at::zeros({d.B, d.H, d.Lk, d.D}, qc.options());                 // per query head
  if (dq.numel() > 0 && d.Lk > 0) {
    const auto flags = tile_flags(mask, int(d.Lq), int(d.Lk));
    AT_DISPATCH_FLOATING_TYPES(dt, "attention_bwd", [&] {
      backward<scalar_t>(heads<scalar_t>(qc), heads<scalar_t>(kc), heads<scalar_t>(vc), heads<scalar_t>(dOc),
                         lsec.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), d, mask, flags->data(),
                         scalar_t(scale), dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
    });
  }
  if (d.H != d.Hk) {  // heads sharing a key head (multi-query) add their key gradients
    dk = dk.view({d.B, d.Hk, d.H / d.Hk, d.Lk, d.D}).sum(2);
    dv = dv.view({d.B, d.Hk, d.H / d.Hk, d.Lk, d.D}).sum(2);
  }
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type())};
}

}  // namespace fastar::cpu
