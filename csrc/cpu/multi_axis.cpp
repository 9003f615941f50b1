// Multi-axis blocked attention on the CPU (HiT, Zhao et al. 2021), straight from the image layout: one work item is
// one group of one axis (a b x b block for the regional heads, one offset of every block for the dilated heads) and
// one key head. Its n tokens are gathered from the image once; the query rows of every head that shares the key
// head (HiT's multi-query K/V: all the heads of the axis) are stacked, so each item is one pair of BLAS products
// (cpu/blas.h) with the softmax between them on the attention family's per-ISA micro-kernels (cpu/attention_isa.h).
// Groups hold few tokens (16 or 64 at HiT's stages), so the softmax is taken over all n keys at once.
#include "cpu/multi_axis.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"
#include "cpu/isa.h"
#include "kernels/multi_axis/geometry.h"

namespace fastar::cpu {
namespace {

using blas::gemm;
using kernels::MultiAxisGeometry;

// Score rows are whole vectors of the widest ISA (cpu/attention_isa.h); a chunk of rows holds at most this many
// scores, so a huge group (b = 1: every pixel) is taken a few query rows at a time.
constexpr int kRowAlign = 16;
constexpr int64_t kChunkScores = 1 << 15;

template <class T>
const AttentionKernels<T>& micro() {
  if constexpr (std::is_same_v<T, float>) return isa().attention->f32;
  else return isa().attention->f64;
}

// A (B, H, W, heads, D) operand with unit-stride rows: element (b, y, x, h, d) at b sb + y sy + x sx + h sh + d.
template <class T>
struct Image {
  T* data;
  int64_t sb, sy, sx, sh;
  T* at(int64_t b, int y, int x, int h) const { return data + b * sb + y * sy + x * sx + h * sh; }
};

template <class T>
Image<T> image(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The compute dtype of an input, read in place when its last dim is unit-stride (any other strides: the gather
// follows them), else a copy.
at::Tensor operand(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor r = t.to(dtype);
  return r.stride(4) == 1 || r.size(4) == 1 ? r : r.contiguous();
}

at::ScalarType compute_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Work items and the heads each one serves. Head h of q reads key head h / (heads / heads_kv); with one key
// head (multi-query) it serves both axes, else each axis has half of the key heads.
struct Plan {
  int64_t B;
  int heads, hk, D;
  MultiAxisGeometry geo;

  int kv_per_axis() const { return hk == 1 ? 1 : hk / 2; }
  int q_per_kv() const { return heads / 2 / kv_per_axis(); }
  int64_t items(int axis) const { return B * geo.groups(axis) * kv_per_axis(); }
  int64_t items() const { return items(0) + items(1); }

  struct Item {
    int axis, g, kv, n;  // axis, group, key head, tokens
    int64_t b;
    int q_head(int i, const Plan& p) const { return axis * p.heads / 2 + (p.hk == 1 ? 0 : (kv - axis * p.hk / 2)) * p.q_per_kv() + i; }
  };
  Item item(int64_t i) const {
    const int axis = i < items(0) ? 0 : 1;
    if (axis == 1) i -= items(0);
    const int slot = int(i % kv_per_axis()), g = int(i / kv_per_axis() % geo.groups(axis));
    return {axis, g, hk == 1 ? 0 : axis * hk / 2 + slot, geo.tokens(axis), i / kv_per_axis() / geo.groups(axis)};
  }
  // f(row, y, x) for the item's tokens.
  template <class F>
  void tokens(const Item& it, F f) const {
    for (int t = 0; t < it.n; ++t) {
      int y, x;
      geo.pixel(it.axis, it.g, t, y, x);
      f(t, y, x);
    }
  }
};

Plan plan(const at::Tensor& q, const at::Tensor& k, int64_t block_size) {
  return {q.size(0), int(q.size(3)), int(k.size(3)), int(q.size(4)),
          {int(q.size(1)), int(q.size(2)), int(block_size)}};
}

int row_ld(int cols) { return (cols + kRowAlign - 1) / kRowAlign * kRowAlign; }
int chunk_rows(int rows, int ld) { return int(std::clamp<int64_t>(kChunkScores / ld, 1, std::max(rows, 1))); }

// rows (n, D) <- the item's tokens of head h of x, or the reverse (scatter).
template <class T>
void gather(const Plan& p, const Plan::Item& it, const Image<T>& x, int h, T* rows) {
  p.tokens(it, [&](int t, int y, int xx) { std::copy_n(x.at(it.b, y, xx, h), p.D, rows + int64_t(t) * p.D); });
}
template <class T>
void scatter(const Plan& p, const Plan::Item& it, const T* rows, const Image<T>& x, int h) {
  p.tokens(it, [&](int t, int y, int xx) { std::copy_n(rows + int64_t(t) * p.D, p.D, x.at(it.b, y, xx, h)); });
}
// vals (n,) <- the item's tokens of head h of a (B, H, W, heads) contiguous tensor, or the reverse.
template <class T>
void gather_rows(const Plan& p, const Plan::Item& it, const T* x, int h, T* vals, bool reverse = false) {
  p.tokens(it, [&](int t, int y, int xx) {
    T& e = const_cast<T*>(x)[((it.b * p.geo.H + y) * p.geo.W + xx) * p.heads + h];
    if (reverse) e = vals[t];
    else vals[t] = e;
  });
}

// S (rows, ld) = scale Q K^T over n keys, -inf on columns [n, ld).
template <class T>
void scores(const T* Q, const T* K, int rows, int n, int D, T scale, T* S, int ld) {
  gemm<T>(false, true, rows, n, D, scale, Q, D, K, D, T(0), S, ld);
  for (int r = 0; r < rows; ++r) std::fill(S + int64_t(r) * ld + n, S + int64_t(r + 1) * ld, -std::numeric_limits<T>::infinity());
}

// Per item: Q (rows = q_per_kv * n, D) stacked by head, S = scale Q K^T, P = softmax(S), out = P V, lse.
template <class T>
void forward(const Plan& p, Image<T> q, Image<T> k, Image<T> v, T scale, T* out, T* lse) {
  const auto& kern = micro<T>();
  const Image<T> o_img{out, int64_t(p.geo.H) * p.geo.W * p.heads * p.D, int64_t(p.geo.W) * p.heads * p.D,
                       int64_t(p.heads) * p.D, p.D};
  at::parallel_for(0, p.items(), 1, [&](int64_t begin, int64_t end) {
    const blas::SerialScope serial_blas;
    std::vector<T> Q, K, V, S, O, m, l, lse_rows;
    for (int64_t i = begin; i < end; ++i) {
      const Plan::Item it = p.item(i);
      const int n = it.n, rows = p.q_per_kv() * n, ld = row_ld(n), chunk = chunk_rows(rows, ld), D = p.D;
      Q.resize(int64_t(rows) * D), K.resize(int64_t(n) * D), V.resize(K.size()), O.resize(Q.size());
      S.resize(int64_t(chunk) * ld), m.resize(rows), l.resize(rows), lse_rows.resize(rows);
      gather(p, it, k, it.kv, K.data()), gather(p, it, v, it.kv, V.data());
      for (int j = 0; j < p.q_per_kv(); ++j) gather(p, it, q, it.q_head(j, p), Q.data() + int64_t(j) * n * D);
      std::fill(O.begin(), O.end(), T(0));
      std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
      std::fill(l.begin(), l.end(), T(0));
      for (int r0 = 0; r0 < rows; r0 += chunk) {
        const int rc = std::min(chunk, rows - r0);
        T* o = O.data() + int64_t(r0) * D;
        scores<T>(Q.data() + int64_t(r0) * D, K.data(), rc, n, D, scale, S.data(), ld);
        kern.online_softmax(S.data(), rc, ld, m.data() + r0, l.data() + r0, o, D);
        gemm<T>(false, false, rc, D, n, T(1), S.data(), ld, V.data(), D, T(1), o, D);
      }
      for (int r = 0; r < rows; ++r) {
        const T inv = T(1) / l[r];  // every row sees its own token: l >= 1
        for (int c = 0; c < D; ++c) O[int64_t(r) * D + c] *= inv;
        lse_rows[r] = m[r] + std::log(l[r]);
      }
      for (int j = 0; j < p.q_per_kv(); ++j) {
        scatter(p, it, O.data() + int64_t(j) * n * D, o_img, it.q_head(j, p));
        gather_rows(p, it, lse, it.q_head(j, p), lse_rows.data() + int64_t(j) * n, true);
      }
    }
  });
}

// FlashAttention-2's backward per item, P recomputed from lse:
//   dV = P^T dO, dP = dO V^T, dS = P * (dP - delta), dQ = scale dS K, dK = scale dS^T Q.
// dk, dv are (2, B, H, W, heads_kv, D): one slice per axis, since with one key head both axes add to every pixel.
template <class T>
void backward(const Plan& p, Image<T> q, Image<T> k, Image<T> v, Image<T> dout, const T* lse, const T* delta,
              T scale, Image<T> dq, Image<T> dk, Image<T> dv) {
  const auto& kern = micro<T>();
  at::parallel_for(0, p.items(), 1, [&](int64_t begin, int64_t end) {
    const blas::SerialScope serial_blas;
    std::vector<T> Q, K, V, dO, P, dS, dQ, dK, dV, lse_rows, delta_rows;
    for (int64_t i = begin; i < end; ++i) {
      const Plan::Item it = p.item(i);
      const int n = it.n, rows = p.q_per_kv() * n, ld = row_ld(n), chunk = chunk_rows(rows, ld), D = p.D;
      Q.resize(int64_t(rows) * D), dO.resize(Q.size()), dQ.resize(Q.size());
      K.resize(int64_t(n) * D), V.resize(K.size()), dK.assign(K.size(), T(0)), dV.assign(K.size(), T(0));
      P.resize(int64_t(chunk) * ld), dS.assign(P.size(), T(0)), lse_rows.resize(rows), delta_rows.resize(rows);
      gather(p, it, k, it.kv, K.data()), gather(p, it, v, it.kv, V.data());
      for (int j = 0; j < p.q_per_kv(); ++j) {
        const int h = it.q_head(j, p);
        gather(p, it, q, h, Q.data() + int64_t(j) * n * D), gather(p, it, dout, h, dO.data() + int64_t(j) * n * D);
        gather_rows(p, it, lse, h, lse_rows.data() + int64_t(j) * n);
        gather_rows(p, it, delta, h, delta_rows.data() + int64_t(j) * n);
      }
      for (int r0 = 0; r0 < rows; r0 += chunk) {
        const int rc = std::min(chunk, rows - r0);
        const T *Qc = Q.data() + int64_t(r0) * D, *dOc = dO.data() + int64_t(r0) * D;
        scores<T>(Qc, K.data(), rc, n, D, scale, P.data(), ld);
        kern.probs(P.data(), rc, ld, lse_rows.data() + r0);
        gemm<T>(true, false, n, D, rc, T(1), P.data(), ld, dOc, D, T(1), dV.data(), D);
        gemm<T>(false, true, rc, n, D, T(1), dOc, D, V.data(), D, T(0), dS.data(), ld);
        kern.dscores(P.data(), dS.data(), rc, ld, delta_rows.data() + r0);
        gemm<T>(false, false, rc, D, n, scale, dS.data(), ld, K.data(), D, T(0), dQ.data() + int64_t(r0) * D, D);
        gemm<T>(true, false, n, D, rc, scale, dS.data(), ld, Qc, D, T(1), dK.data(), D);
      }
      for (int j = 0; j < p.q_per_kv(); ++j) scatter(p, it, dQ.data() + int64_t(j) * n * D, dq, it.q_head(j, p));
      const Image<T> dk_axis{dk.data + it.axis * p.B * dk.sb, dk.sb, dk.sy, dk.sx, dk.sh};
      const Image<T> dv_axis{dv.data + it.axis * p.B * dv.sb, dv.sb, dv.sy, dv.sx, dv.sh};
      scatter(p, it, dK.data(), dk_axis, it.kv), scatter(p, it, dV.data(), dv_axis, it.kv);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> multi_axis_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, int64_t block_size, double scale) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = operand(q, dt), kc = operand(k, dt), vc = operand(v, dt);
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(dt));           // (B, H, W, heads, D)
  at::Tensor lse = at::empty(q.sizes().slice(0, 4), q.options().dtype(dt));  // (B, H, W, heads)
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "multi_axis_attention_fwd", [&] {
      forward<scalar_t>(plan(q, k, block_size), image<scalar_t>(qc), image<scalar_t>(kc), image<scalar_t>(vc),
                        scalar_t(scale), out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    });
  }
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_axis_attention_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                                        const at::Tensor& k, const at::Tensor& v,
                                                                        const at::Tensor& out, const at::Tensor& lse,
                                                                        int64_t block_size, double scale) {
  const auto dt = compute_dtype(q);
  const at::Tensor qc = operand(q, dt), kc = operand(k, dt), vc = operand(v, dt), dOc = operand(dout, dt);
  const at::Tensor lsec = lse.to(dt).contiguous();
  const at::Tensor delta = (dOc * out.to(dt)).sum(-1).contiguous();  // (B, H, W, heads) rowsum(dout * out)
  at::Tensor dq = at::empty(q.sizes(), q.options().dtype(dt));                    // (B, H, W, heads, D)
  at::Tensor dk = at::zeros({2, k.size(0), k.size(1), k.size(2), k.size(3), k.size(4)}, dq.options());  // per axis
  at::Tensor dv = at::zeros_like(dk);
  if (dq.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "multi_axis_attention_bwd", [&] {
      auto img = [](const at::Tensor& t) { return image<scalar_t>(t.dim() == 6 ? t.select(0, 0) : t); };
      backward<scalar_t>(plan(q, k, block_size), img(qc), img(kc), img(vc), img(dOc), lsec.data_ptr<scalar_t>(),
                         delta.data_ptr<scalar_t>(), scalar_t(scale), img(dq), img(dk), img(dv));
    });
  }
  return {dq.to(q.scalar_type()), dk.sum(0).to(k.scalar_type()), dv.sum(0).to(v.scalar_type())};
}

}  // namespace fastar::cpu
