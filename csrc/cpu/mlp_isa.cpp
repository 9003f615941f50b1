// The MLP kernel (cpu/mlp_isa.h): per block of R rows, the hidden activations act(x w1^T + b1) of all Hd units in
// register tiles of R rows x 2 vectors (each weight vector feeds R FMAs, each broadcast of x 2), written to the
// thread's scratch (R hd_pad floats: L1), then y = [residual +] h w2^T + b2 in the same tiles. The hidden
// activations never reach memory, and each weight panel is read once per R rows from L1 / L2.
#include "cpu/mlp_isa.h"

#include <cstring>

#include "cpu/isa_math.h"
#include "cpu/isa_vec.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int L = kLanes<float>;
constexpr int V = 2;                             // vectors per row of a register block
constexpr int NR = V * L;                        // its columns
constexpr int R = kVectorBytes == 64 ? 12 : 6;  // its rows: R V accumulators

// gelu(v) = v Phi(v) = v erfc(-v / sqrt 2) / 2. With z = |v| / sqrt 2 and e = erfc(z) by Numerical Recipes' erfcc
// (Chebyshev-fitted: t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), relative error below 1.2e-7 at every z): v (1 - e / 2)
// for v >= 0, v e / 2 below, so the negative tail takes no cancellation (torch's float32 GELU, 1 + erf, loses its
// relative accuracy there: in a diagnostic sweep ~1e5 half-ulps at v in [-5, -3], this formula ~30).
//
// N vectors in lockstep. Each vector's chain is ~40 dependent operations (a division, two polynomials, the
// exponent's bits), so one at a time leaves the FMA units waiting on latency (in a diagnostic run, applied per
// register tile it took 30% of a HiT MLP's time); 8 in flight hide it.
//
// half_erfc: h = erfc(|v| / sqrt 2) / 2 and z2 = v^2 / 2 of N vectors.
template <int N>
inline void half_erfc(const vec<float> (&v)[N], vec<float> (&h)[N], vec<float> (&z2)[N]) {
  vec<float> t[N], p[N];
#pragma GCC unroll 8
  for (int u = 0; u < N; ++u) {
    const vec<float> z = (v[u] < 0.f ? -v[u] : v[u]) * 0.70710678118654752f;
    t[u] = 1.f / (z * 0.5f + 1.f);
    p[u] = t[u] * 0.17087277f - 0.82215223f;
    z2[u] = z * z;
  }
  constexpr float kP[8] = {1.48851587f, -1.13520398f, 0.27886807f, -0.18628806f, 0.09678418f, 0.37409196f,
                           1.00002368f, -1.26551223f};  // P(t)'s lower coefficients, highest first
  for (int c = 0; c < 8; ++c)
#pragma GCC unroll 8
    for (int u = 0; u < N; ++u) p[u] = p[u] * t[u] + kP[c];
#pragma GCC unroll 8
  for (int u = 0; u < N; ++u) h[u] = t[u] * exp_vec(p[u] - z2[u]) * 0.5f;
}

// gelu_vectors: N vectors in place.
template <int N>
inline void gelu_vectors(float* h) {
  vec<float> v[N], e[N], z2[N];
#pragma GCC unroll 8
  for (int u = 0; u < N; ++u) v[u] = load(h + u * L);
  half_erfc<N>(v, e, z2);
#pragma GCC unroll 8
  for (int u = 0; u < N; ++u) store(h + u * L, v[u] * (v[u] < 0.f ? e[u] : 1.f - e[u]));  // v Phi(v): inf at +inf
}

// n a multiple of L.
void gelu(float* h, int64_t n) {
  constexpr int U = 8;
  int64_t i = 0;
  for (; i + U * L <= n; i += U * L) gelu_vectors<U>(h + i);
  for (; i < n; i += L) gelu_vectors<1>(h + i);
}

// gelu_with_derivative_vectors: y = gelu(v) and d = gelu'(v) of N vectors, for autograd (the backward's product
// dy d needs no second pass of the GELU's math). Exact: Phi(v) = 1 - e / 2 (v >= 0) or e / 2 (v < 0), e =
// erfc(|v| / sqrt 2) as gelu_vectors computes it, and d = Phi(v) + v phi(v), phi(v) = exp(-v^2 / 2) / sqrt(2 pi).
// Tanh (GELU's tanh approximation): y = v s, s = sigmoid(2 u) = (1 + tanh u) / 2, u = sqrt(2 / pi) (v + 0.044715
// v^3), from w = exp(-2 |u|) <= 1 (no overflow, no cancellation in either tail): s = 1 / (1 + w) for u >= 0,
// w / (1 + w) below, s (1 - s) = w / (1 + w)^2, and d = s + 2 v s (1 - s) u'(v).
template <int N, bool kTanh>
inline void gelu_with_derivative_vectors(const float* x, float* y, float* d) {
  vec<float> v[N], a[N], b[N];
#pragma GCC unroll 8
  for (int u = 0; u < N; ++u) v[u] = load(x + u * L);
  if constexpr (kTanh) {
    constexpr float k0 = 0.7978845608028654f, k1 = 0.044715f;
    vec<float> w[N];
#pragma GCC unroll 8
    for (int u = 0; u < N; ++u) {
      a[u] = v[u] * v[u];
      b[u] = k0 * v[u] * (a[u] * k1 + 1.f);  // u
      w[u] = exp_vec((b[u] < 0.f ? b[u] : -b[u]) * 2.f);
    }
#pragma GCC unroll 8
    for (int u = 0; u < N; ++u) {
      const vec<float> r = 1.f / (w[u] + 1.f), s = b[u] < 0.f ? w[u] * r : r;
      store(y + u * L, v[u] * s);
      // w = 0 where |u| is past exp's range: there the term is 0 (v 0: NaN for an infinite v, as torch's), not
      // v's overflowed polynomial times 0 (NaN from |v| ~ 1e13)
      const vec<float> t = (2.f * k0) * v[u] * (a[u] * (3.f * k1) + 1.f) * (w[u] * r * r);
      store(d + u * L, s + (w[u] > 0.f ? t : v[u] * 0.f));
    }
  } else {
    half_erfc<N>(v, a, b);  // a: erfc(z) / 2, b: v^2 / 2
#pragma GCC unroll 8
    for (int u = 0; u < N; ++u) {
      const vec<float> cdf = v[u] < 0.f ? a[u] : 1.f - a[u];  // Phi(v)
      store(y + u * L, v[u] * cdf);
      store(d + u * L, cdf + v[u] * exp_vec(-b[u]) * 0.3989422804014327f);
    }
  }
}

template <bool kTanh>
void gelu_with_derivative_n(const float* x, float* y, float* d, int64_t n) {
  constexpr int U = 8;
  int64_t i = 0;
  for (; i + U * L <= n; i += U * L) gelu_with_derivative_vectors<U, kTanh>(x + i, y + i, d + i);
  for (; i + L <= n; i += L) gelu_with_derivative_vectors<1, kTanh>(x + i, y + i, d + i);
  if (i == n) return;
  alignas(64) float xs[L] = {}, ys[L], ds[L];  // the last n - i < L through a padded vector
  std::memcpy(xs, x + i, sizeof(float) * (n - i));
  gelu_with_derivative_vectors<1, kTanh>(xs, ys, ds);
  std::memcpy(y + i, ys, sizeof(float) * (n - i));
  std::memcpy(d + i, ds, sizeof(float) * (n - i));
}

void gelu_with_derivative(const float* x, float* y, float* d, int64_t n, bool tanh) {
  (tanh ? gelu_with_derivative_n<true> : gelu_with_derivative_n<false>)(x, y, d, n);
}

constexpr int64_t kChunk = 64;  // k per partial sum: two-level summation over K

// acc[r][.] = bias + sum_k a[r lda + k] b[k NR + .] for k < K over the panel b (K, NR), in R x V FMA chains; K is
// summed in kChunk-long partial sums (one running sum over K = 512 had ~2x torch's float32 error against float64).
inline void tile(const float* a, int64_t lda, const float* b, int64_t K, const float* bias, vec<float> (&acc)[R][V]) {
  alignas(64) float total[R][NR];
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = k0 + kChunk < K ? k0 + kChunk : K;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = vec<float>{};
    for (int64_t k = k0; k < k1; ++k) {
      vec<float> w[V];
      for (int v = 0; v < V; ++v) w[v] = load(b + k * NR + v * L);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        const float s = a[r * lda + k];
        for (int v = 0; v < V; ++v) acc[r][v] += s * w[v];
      }
    }
    if (k1 == K) break;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) store(&total[r][v * L], k0 ? load(&total[r][v * L]) + acc[r][v] : acc[r][v]);
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v)
      acc[r][v] += K > kChunk ? load(&total[r][v * L]) + load(bias + v * L) : load(bias + v * L);
}

// Each g-long group of the hidden row h[0, Hd) -> its softmax (scores already scaled): vectors when L divides g.
void softmax_groups(float* h, int64_t Hd, int64_t g) {
  for (int64_t g0 = 0; g0 < Hd; g0 += g) {
    float* s = h + g0;
    if (g % L == 0) {
      vec<float> mv = load(s);
      for (int64_t j = L; j < g; j += L) mv = vmax<float>(mv, load(s + j));
      const float m = hmax<float>(mv);
      vec<float> sum{};
      for (int64_t j = 0; j < g; j += L) {
        const vec<float> e = exp_vec(load(s + j) - m);
        store(s + j, e);
        sum += e;
      }
      const float inv = 1.f / hsum<float>(sum);
      for (int64_t j = 0; j < g; j += L) store(s + j, load(s + j) * inv);
      continue;
    }
    float m = s[0], sum = 0.f;
    for (int64_t j = 1; j < g; ++j) m = s[j] > m ? s[j] : m;
    for (int64_t j = 0; j < g; ++j) sum += (s[j] = exp_scalar(s[j] - m));
    const float inv = 1.f / sum;
    for (int64_t j = 0; j < g; ++j) s[j] *= inv;
  }
}

// R rows: x (ldx) -> y (ldy), residual (ldr, nullable); h: scratch of R hd_pad.
void block(const Mlp& m, const float* x, int64_t ldx, const float* res, int64_t ldr, float* y, int64_t ldy,
           float* h) {
  vec<float> acc[R][V];
  for (int64_t j = 0; j < m.hd_pad; j += NR) {
    tile(x, ldx, m.w1p + j * m.C, m.C, m.b1p + j, acc);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) store(h + r * m.hd_pad + j + v * L, acc[r][v]);
  }
  if (m.softmax_group)
    for (int r = 0; r < R; ++r) softmax_groups(h + r * m.hd_pad, m.Hd, m.softmax_group);
  else
    gelu(h, R * m.hd_pad);
  for (int64_t j = 0; j < m.co_pad; j += NR) {
    tile(h, m.hd_pad, m.w2p + j * m.hd_pad, m.hd_pad, m.b2p + j, acc);
    if (j + NR <= m.Co) {
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v)
          store(y + r * ldy + j + v * L, res ? acc[r][v] + load(res + r * ldr + j + v * L) : acc[r][v]);
    } else {  // the last panel, past Co
      for (int r = 0; r < R; ++r) {
        float o[NR];
        for (int v = 0; v < V; ++v) store(o + v * L, acc[r][v]);
        for (int64_t c = j; c < m.Co; ++c) y[r * ldy + c] = o[c - j] + (res ? res[r * ldr + c] : 0.f);
      }
    }
  }
}

void forward(const Mlp& m, int64_t begin, int64_t end, float* scratch) {
  int64_t r0 = begin;
  for (; r0 + R <= end; r0 += R)
    block(m, m.x + r0 * m.ldx, m.ldx, m.residual ? m.residual + r0 * m.ldr : nullptr, m.ldr, m.y + r0 * m.ldy, m.ldy,
          scratch);
  if (r0 == end) return;
  // The last rows (fewer than R): through zero-padded copies.
  const int64_t n = end - r0;
  float* xs = scratch + R * m.hd_pad;  // R C, then R co_pad for the result, then R co_pad for the residual
  float* ys = xs + R * m.C;
  float* rs = ys + R * m.co_pad;
  std::memset(xs, 0, sizeof(float) * R * m.C);
  for (int64_t r = 0; r < n; ++r) std::memcpy(xs + r * m.C, m.x + (r0 + r) * m.ldx, sizeof(float) * m.C);
  if (m.residual) {
    std::memset(rs, 0, sizeof(float) * R * m.co_pad);
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(rs + r * m.co_pad, m.residual + (r0 + r) * m.ldr, sizeof(float) * m.Co);
  }
  block(m, xs, m.C, m.residual ? rs : nullptr, m.co_pad, ys, m.co_pad, scratch);
  for (int64_t r = 0; r < n; ++r) std::memcpy(m.y + (r0 + r) * m.ldy, ys + r * m.co_pad, sizeof(float) * m.Co);
}

}  // namespace

extern const MlpIsa kMlp{R, NR, &forward, &gelu_with_derivative};

}  // namespace fastar::cpu::FASTAR_ISA
