// Tiny-sequence attention micro-kernels (see cpu/attention_tiny_isa.h). A query row's scores are whole vectors over
// the keys (the keys transposed once per sequence, zero-padded to the vector width), its softmax runs on them in
// registers, and the products with V, dO, Q and K are vectors over the head dim with the probability broadcast.
#include "cpu/attention_tiny_isa.h"
#include "cpu/isa_math.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

using kernels::MaskParams;

template <class T>
constexpr int kKeyVecs = kTinyMaxLen / kLanes<T>;  // score vectors of the longest row

int padded(int Lk, int W) { return (Lk + W - 1) / W * W; }

// Visible keys of each query of batch row b as bitmasks (bit j: key j); the mask depends on b only through key_len.
void visibility(const MaskParams& mask, int64_t b, int Lq, int Lk, uint32_t* vis) {
  for (int i = 0; i < Lq; ++i) {
    vis[i] = 0;
    for (int j = 0; j < Lk; ++j) vis[i] |= uint32_t(kernels::visible(mask, int(b), i, j, Lq, Lk)) << j;
  }
}

// dst (D, LP) = src (Lk, D)^T, zero past Lk.
template <class T>
void transpose(const T* src, int64_t ld, int Lk, int D, int LP, T* dst) {
  for (int c = 0; c < D; ++c) {
    for (int j = 0; j < Lk; ++j) dst[c * LP + j] = src[j * ld + c];
    for (int j = Lk; j < LP; ++j) dst[c * LP + j] = T(0);
  }
}

// row (LP,) = scale * x (D,) . Kt (D, LP), -inf on keys the query does not see.
template <class T>
void scores(const T* x, const T* Kt, int D, int LP, T scale, uint32_t vis, T* row) {
  constexpr int W = kLanes<T>;
  vec<T> s[kKeyVecs<T>];
  for (int t = 0; t < LP / W; ++t) s[t] = splat(T(0));
  for (int c = 0; c < D; ++c) {
    const vec<T> xc = splat(x[c] * scale);
    for (int t = 0; t < LP / W; ++t) s[t] += xc * load(Kt + c * LP + t * W);
  }
  for (int t = 0; t < LP / W; ++t) store(row + t * W, s[t]);
  for (int j = 0; j < LP; ++j)
    if (!(vis >> j & 1u)) row[j] = -__builtin_inf();
}

// acc (D,) (+)= sum_j w[j] rows[j] (D,) over j < n, rows of stride ld.
template <class T>
void weighted_rows(const T* w, const T* rows, int64_t ld, int n, int D, T* acc, bool add) {
  constexpr int W = kLanes<T>;
  int c = 0;
  for (; c + W <= D; c += W) {
    vec<T> a = add ? load(acc + c) : splat(T(0));
    for (int j = 0; j < n; ++j) a += splat(w[j]) * load(rows + j * ld + c);
    store(acc + c, a);
  }
  for (; c < D; ++c) {
    T a = add ? acc[c] : T(0);
    for (int j = 0; j < n; ++j) a += w[j] * rows[j * ld + c];
    acc[c] = a;
  }
}

// y (D,) += a x (D,).
template <class T>
void axpy(T a, const T* x, int D, T* y) {
  constexpr int W = kLanes<T>;
  int c = 0;
  for (; c + W <= D; c += W) store(y + c, load(y + c) + splat(a) * load(x + c));
  for (; c < D; ++c) y[c] += a * x[c];
}

template <class T>
T dot(const T* x, const T* y, int D) {
  T s = 0;
  for (int c = 0; c < D; ++c) s += x[c] * y[c];
  return s;
}

// exp(row - sub) in place over LP entries (-inf -> 0); returns their sum.
template <class T>
T exp_row(T* row, int LP, T sub) {
  constexpr int W = kLanes<T>;
  vec<T> sum = splat(T(0));
  for (int t = 0; t < LP; t += W) {
    const vec<T> p = exp_vec(load(row + t) - sub);
    store(row + t, p);
    sum += p;
  }
  return hsum<T>(sum);
}

template <class T>
void forward(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask, T scale,
             int64_t bh0, int64_t bh1, T* out, T* lse, T* scratch) {
  const int LP = padded(d.Lk, kLanes<T>), D = d.D;
  const int64_t group = d.H / d.Hk;
  T* Kt = scratch;                                  // (D, LP)
  alignas(64) T row[kTinyMaxLen];
  uint32_t vis[kTinyMaxLen];
  int64_t vis_b = -1;
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t b = bh / d.H, h = bh % d.H;
    if (vis_b < 0 || (mask.key_len != nullptr && b != vis_b)) visibility(mask, b, d.Lq, d.Lk, vis), vis_b = b;
    const T *Q = q.at(b, h), *K = k.at(b, h / group), *V = v.at(b, h / group);
    transpose(K, k.sl, d.Lk, D, LP, Kt);
    for (int i = 0; i < d.Lq; ++i) {
      T* o = out + (bh * d.Lq + i) * D;
      scores(Q + i * q.sl, Kt, D, LP, scale, vis[i], row);
      T m = row[0];
      for (int j = 1; j < d.Lk; ++j) m = row[j] > m ? row[j] : m;
      if (m == -__builtin_inf()) {  // sees no key: out 0, lse -inf
        for (int c = 0; c < D; ++c) o[c] = T(0);
        lse[bh * d.Lq + i] = m;
        continue;
      }
      const T l = exp_row(row, LP, m);
      for (int j = 0; j < d.Lk; ++j) row[j] /= l;
      weighted_rows(row, V, v.sl, d.Lk, D, o, false);
      lse[bh * d.Lq + i] = m + __builtin_log(l);
    }
  }
}

template <class T>
void backward(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const T* lse, const TinyDims& d, const MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv,
              T* scratch) {
  constexpr int W = kLanes<T>;
  const int LP = padded(d.Lk, W), D = d.D;
  const int64_t group = d.H / d.Hk;
  T *Kt = scratch, *Vt = scratch + kTinyMaxDim * kTinyMaxLen;  // (D, LP) each
  alignas(64) T p[kTinyMaxLen], ds[kTinyMaxLen];
  uint32_t vis[kTinyMaxLen];
  int64_t vis_b = -1;
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t b = bh / d.H, h = bh % d.H;
    if (vis_b < 0 || (mask.key_len != nullptr && b != vis_b)) visibility(mask, b, d.Lq, d.Lk, vis), vis_b = b;
    const T *Q = q.at(b, h), *K = k.at(b, h / group), *V = v.at(b, h / group);
    T *dK = dk + bh * d.Lk * D, *dV = dv + bh * d.Lk * D;
    for (int64_t e = 0; e < int64_t(d.Lk) * D; ++e) dK[e] = T(0), dV[e] = T(0);
    transpose(K, k.sl, d.Lk, D, LP, Kt);
    transpose(V, v.sl, d.Lk, D, LP, Vt);
    for (int i = 0; i < d.Lq; ++i) {
      const int64_t r = bh * d.Lq + i;
      const T *Qi = Q + i * q.sl, *dOi = dout + r * D;
      T* dQi = dq + r * D;
      if (lse[r] == -__builtin_inf()) {  // saw no key: no gradient
        for (int c = 0; c < D; ++c) dQi[c] = T(0);
        continue;
      }
      scores(Qi, Kt, D, LP, scale, vis[i], p);
      exp_row(p, LP, lse[r]);                         // P = exp(S - lse)
      scores(dOi, Vt, D, LP, T(1), ~0u, ds);          // dP = dO V^T
      vec<T> pdp = splat(T(0));                       // delta = rowsum(dO * out) = sum_j P dP: the same products
      for (int t = 0; t < LP; t += W) pdp += load(p + t) * load(ds + t);  // as dP, so one key gives dS = 0 exactly
      const T delta = hsum<T>(pdp);
      for (int t = 0; t < LP; t += W)                 // dS = scale P (dP - delta)
        store(ds + t, splat(scale) * load(p + t) * (load(ds + t) - delta));
      weighted_rows(ds, K, k.sl, d.Lk, D, dQi, false);
      for (int j = 0; j < d.Lk; ++j) {
        axpy(p[j], dOi, D, dV + j * D);
        axpy(ds[j], Qi, D, dK + j * D);
      }
    }
  }
}

template <class T>
void forward_fn(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask, T scale,
                int64_t bh0, int64_t bh1, T* out, T* lse) {
  alignas(64) T scratch[kTinyMaxDim * kTinyMaxLen];
  forward(q, k, v, d, mask, scale, bh0, bh1, out, lse, scratch);
}

template <class T>
void backward_fn(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const T* lse, const TinyDims& d, const MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv) {
  alignas(64) T scratch[2 * kTinyMaxDim * kTinyMaxLen];
  backward(q, k, v, dout, lse, d, mask, scale, bh0, bh1, dq, dk, dv, scratch);
}

template <class T>
constexpr AttentionTinyKernels<T> kernels() { return {forward_fn<T>, backward_fn<T>}; }

}  // namespace

extern const AttentionTinyIsa kAttentionTiny = {kernels<float>(), kernels<double>()};

}  // namespace fastar::cpu::FASTAR_ISA
