// Tiny-sequence attention micro-kernels (see cpu/attention_tiny_isa.h). Per sequence, the whole (Lq, Lk) score block
// sits in a few KB of scratch: the keys are transposed once (zero-padded to the vector width) so that every product,
// scores included, is one register-blocked routine over rows of unit stride, and the softmax runs on whole vectors.
#include "cpu/attention_tiny_isa.h"
#include "cpu/isa_math.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

using kernels::MaskParams;

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

// C (M, N) = alpha A (M, K) B (K, N), every product of the tiny attention: A[m * am + k * ak] (am, ak pick A or its
// transpose), rows of B and C unit-stride. Blocks of 4 rows x 2 vectors of columns hold 8 accumulators in registers;
// the last row block repeats row M - 1 rather than reading past A.
template <class T>
void product(const T* A, int64_t am, int64_t ak, int M, int K, const T* B, int64_t ldb, int N, T alpha, T* C,
             int64_t ldc) {
  constexpr int W = kLanes<T>, R = 4;
  for (int m0 = 0; m0 < M; m0 += R) {
    const T* a[R];
    for (int r = 0; r < R; ++r) a[r] = A + (m0 + r < M ? m0 + r : M - 1) * am;
    const int rows = M - m0 < R ? M - m0 : R;
    int n = 0;
    for (; n + 2 * W <= N; n += 2 * W) {
      vec<T> c0[R], c1[R];
      for (int r = 0; r < R; ++r) c0[r] = c1[r] = splat(T(0));
      for (int k = 0; k < K; ++k) {
        const vec<T> b0 = load(B + k * ldb + n), b1 = load(B + k * ldb + n + W);
        for (int r = 0; r < R; ++r) {
          const vec<T> x = splat(a[r][k * ak]);
          c0[r] += x * b0, c1[r] += x * b1;
        }
      }
      for (int r = 0; r < rows; ++r) {
        store(C + (m0 + r) * ldc + n, c0[r] * alpha);
        store(C + (m0 + r) * ldc + n + W, c1[r] * alpha);
      }
    }
    for (; n + W <= N; n += W) {
      vec<T> c0[R];
      for (int r = 0; r < R; ++r) c0[r] = splat(T(0));
      for (int k = 0; k < K; ++k) {
        const vec<T> b0 = load(B + k * ldb + n);
        for (int r = 0; r < R; ++r) c0[r] += splat(a[r][k * ak]) * b0;
      }
      for (int r = 0; r < rows; ++r) store(C + (m0 + r) * ldc + n, c0[r] * alpha);
    }
    for (; n < N; ++n) {
      for (int r = 0; r < rows; ++r) {
        T c = 0;
        for (int k = 0; k < K; ++k) c += a[r][k * ak] * B[k * ldb + n];
        C[(m0 + r) * ldc + n] = c * alpha;
      }
    }
  }
}

// Scores (LP,) of a query row: -inf on the keys it does not see (and the padding past Lk).
template <class T>
void mask_row(T* row, int LP, uint32_t vis) {
  for (int j = 0; j < LP; ++j)
    if (!(vis >> j & 1u)) row[j] = -__builtin_inf();
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

// Scratch of a task: Kt and Vt (D, LP), then two (Lq, LP) score blocks.
template <class T>
struct Scratch {
  alignas(64) T kt[kTinyMaxDim * kTinyMaxLen], vt[kTinyMaxDim * kTinyMaxLen];
  alignas(64) T s[kTinyMaxLen * kTinyMaxLen], ds[kTinyMaxLen * kTinyMaxLen];
};

// f(bh, Q, K, V, vis) for every sequence bh in [bh0, bh1): its head's rows and its queries' visible keys.
template <class T, class F>
void each_sequence(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask,
                   int64_t bh0, int64_t bh1, F&& f) {
  const int64_t group = d.H / d.Hk;
  uint32_t vis[kTinyMaxLen];
  int64_t vis_b = -1;
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t b = bh / d.H, h = bh % d.H;
    if (vis_b < 0 || (mask.key_len != nullptr && b != vis_b)) visibility(mask, b, d.Lq, d.Lk, vis), vis_b = b;
    f(bh, q.at(b, h), k.at(b, h / group), v.at(b, h / group), static_cast<const uint32_t*>(vis));
  }
}

template <class T>
void forward(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask, T scale,
             int64_t bh0, int64_t bh1, T* out, T* lse, Scratch<T>& w) {
  const int LP = padded(d.Lk, kLanes<T>), D = d.D;
  each_sequence(q, k, v, d, mask, bh0, bh1, [&](int64_t bh, const T* Q, const T* K, const T* V, const uint32_t* vis) {
    transpose(K, k.sl, d.Lk, D, LP, w.kt);
    product(Q, q.sl, 1, d.Lq, D, w.kt, LP, LP, scale, w.s, LP);  // S (Lq, LP) = scale Q K^T
    for (int i = 0; i < d.Lq; ++i) {  // P = softmax(S) in place
      T* row = w.s + i * LP;
      mask_row(row, LP, vis[i]);
      T m = row[0];
      for (int j = 1; j < d.Lk; ++j) m = row[j] > m ? row[j] : m;
      const T l = m == -__builtin_inf() ? T(0) : exp_row(row, LP, m);  // sees no key: P 0, out 0, lse -inf
      const vec<T> inv = splat(l > 0 ? T(1) / l : T(0));
      for (int t = 0; t < LP; t += kLanes<T>) store(row + t, l > 0 ? load(row + t) * inv : splat(T(0)));
      lse[bh * d.Lq + i] = l > 0 ? m + __builtin_log(l) : m;
    }
    product(w.s, LP, 1, d.Lq, d.Lk, V, v.sl, D, T(1), out + bh * d.Lq * D, D);  // O = P V
  });
}

template <class T>
void backward(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const T* lse, const TinyDims& d,
              const MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv, Scratch<T>& w) {
  constexpr int W = kLanes<T>;
  const int LP = padded(d.Lk, W), D = d.D;
  each_sequence(q, k, v, d, mask, bh0, bh1, [&](int64_t bh, const T* Q, const T* K, const T* V, const uint32_t* vis) {
    const T* dO = dout + bh * d.Lq * D;
    transpose(K, k.sl, d.Lk, D, LP, w.kt);
    transpose(V, v.sl, d.Lk, D, LP, w.vt);
    product(Q, q.sl, 1, d.Lq, D, w.kt, LP, LP, scale, w.s, LP);  // S = scale Q K^T
    product(dO, D, 1, d.Lq, D, w.vt, LP, LP, T(1), w.ds, LP);    // dP = dO V^T
    for (int i = 0; i < d.Lq; ++i) {
      T *p = w.s + i * LP, *ds = w.ds + i * LP;
      const T l = lse[bh * d.Lq + i];
      mask_row(p, LP, l == -__builtin_inf() ? 0u : vis[i]);  // saw no key: P 0, no gradient
      exp_row(p, LP, l == -__builtin_inf() ? T(0) : l);       // P = exp(S - lse)
      // delta = rowsum(dO * out) = sum_j P dP: the products of dP, so a single key gives dS = 0 exactly.
      vec<T> pdp = splat(T(0));
      for (int t = 0; t < LP; t += W) pdp += load(p + t) * load(ds + t);
      const vec<T> delta = splat(hsum<T>(pdp));
      for (int t = 0; t < LP; t += W) store(ds + t, splat(scale) * load(p + t) * (load(ds + t) - delta));
    }
    product(w.ds, LP, 1, d.Lq, d.Lk, K, k.sl, D, T(1), dq + bh * d.Lq * D, D);  // dQ = dS K
    product(w.ds, 1, LP, d.Lk, d.Lq, Q, q.sl, D, T(1), dk + bh * d.Lk * D, D);  // dK = dS^T Q
    product(w.s, 1, LP, d.Lk, d.Lq, dO, D, D, T(1), dv + bh * d.Lk * D, D);     // dV = P^T dO
  });
}

template <class T>
void forward_fn(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask, T scale,
                int64_t bh0, int64_t bh1, T* out, T* lse) {
  static thread_local Scratch<T> w;
  forward(q, k, v, d, mask, scale, bh0, bh1, out, lse, w);
}

template <class T>
void backward_fn(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const T* lse, const TinyDims& d,
                 const MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv) {
  static thread_local Scratch<T> w;
  backward(q, k, v, dout, lse, d, mask, scale, bh0, bh1, dq, dk, dv, w);
}

template <class T>
constexpr AttentionTinyKernels<T> kernels() { return {forward_fn<T>, backward_fn<T>}; }

}  // namespace

extern const AttentionTinyIsa kAttentionTiny = {kernels<float>(), kernels<double>()};

}  // namespace fastar::cpu::FASTAR_ISA
