// Fused decode attention micro-kernels (see cpu/attention_decode_isa.h). A block holds up to kQueryVectors vectors
// of queries, one per lane, so that everything per query is a whole vector: scores come out transposed, S^T (keys, lanes), from
// the scaled queries transposed once per block, Qt (D, lanes), times keys broadcast from their rows; the online
// softmax (FlashAttention-2) takes its max and sum over keys lane-wise, with no horizontal reduction; the output
// accumulates transposed, Ot (D, lanes), from the probabilities times values broadcast from their rows. K and V are
// read in place, never packed. Each micro-tile keeps kAccumulators vectors in registers.
#include "cpu/attention_decode_isa.h"
#include "cpu/isa_math.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

using kernels::MaskParams;

constexpr int kChunk = 128;        // keys per online-softmax step: their (keys, lanes) scores and V rows stay in L1
// Accumulators per micro-tile, beside the operands: 12 of SSE2's and AVX2's 16 vector registers; 16 of AVX-512's 32
// (tiles of 8 keys and 8 columns then divide VAR's 680 keys and head dim 64).
constexpr int kAccumulators = kVectorBytes == 64 ? 16 : 12;

// Queries per block: vectors of lanes, QV of them per micro-tile. With 12 accumulators (16 registers) three
// vectors of queries by 4 keys or columns take 4 broadcasts and 3 loads per 12 FMAs, where 2 by 6 take 6 and 2:
// measured faster on Zen 3 (AVX2), and 64 columns divide by 4. AVX-512 keeps 2 vectors by 8.
constexpr int kQueryVectors = kVectorBytes == 64 ? 2 : 3;
template <class T>
constexpr int kBlock = kQueryVectors * kLanes<T>;

template <int N>
struct Count {
  static constexpr int value = N;
};

template <int M, class F>
void tail(int r, int j, F& f) {
  if constexpr (M > 0) {
    if (r == M) f(Count<M>{}, j);
    else tail<M - 1>(r, j, f);
  }
}

// f(Count<N>{}, j) for j = 0, N, 2N, ... while N fit in n, then f(Count<n - j>{}, j) on the rest.
template <int N, class F>
void in_tiles(int n, F&& f) {
  int j = 0;
  for (; j + N <= n; j += N) f(Count<N>{}, j);
  tail<N - 1>(n - j, j, f);
}

// finish(acc) on the scores acc[NK][QV] of NK keys (rows of K, stride ldk) against the block: Qt (D, L), L = QV
// vectors of lanes.
template <class T, int QV, int NK, class Finish>
void score_tile(const T* Qt, int D, const T* K, int64_t ldk, Finish&& finish) {
  constexpr int W = kLanes<T>, L = QV * W;
  vec<T> acc[NK][QV];
#pragma GCC unroll 16
  for (int j = 0; j < NK; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) acc[j][v] = splat(T(0));
  for (int d = 0; d < D; ++d) {
    vec<T> qd[QV];
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) qd[v] = load(Qt + d * L + v * W);
#pragma GCC unroll 16
    for (int j = 0; j < NK; ++j) {
      const vec<T> kj = splat(K[j * ldk + d]);
#pragma GCC unroll 4
      for (int v = 0; v < QV; ++v) acc[j][v] += kj * qd[v];
    }
  }
  finish(acc);
}

// Ot rows [c0, c0 + NC) (L each) = (first ? 0 : Ot) + the block's probabilities P (n, L) times columns
// [c0, c0 + NC) of n rows of V.
template <class T, int QV, int NC>
void value_tile(const T* P, int n, const T* V, int64_t ldv, int c0, bool first, T* Ot) {
  constexpr int W = kLanes<T>, L = QV * W;
  vec<T> acc[NC][QV];
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) acc[j][v] = first ? splat(T(0)) : load(Ot + (c0 + j) * L + v * W);
  for (int k = 0; k < n; ++k) {
    vec<T> p[QV];
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) p[v] = load(P + k * L + v * W);
    const T* vk = V + k * ldv + c0;
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) {
      const vec<T> x = splat(vk[j]);
#pragma GCC unroll 4
      for (int v = 0; v < QV; ++v) acc[j][v] += x * p[v];
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < QV; ++v) store(Ot + (c0 + j) * L + v * W, acc[j][v]);
}

template <class T>
struct Scratch {
  alignas(64) T qt[kDecodeMaxDim * kBlock<T>], ot[kDecodeMaxDim * kBlock<T>], st[kChunk * kBlock<T>];
};

// One block of `rows` <= QV W queries (Q, row stride ldq) seeing keys [0, keys[i]) of K and V: out (rows, D),
// lse (rows,). Lanes past `rows` compute on zero queries and are dropped.
template <class T, int QV>
void attend_block(const T* Q, int64_t ldq, int rows, const int* keys, const T* K, int64_t ldk, const T* V,
                  int64_t ldv, int D, T scale, T* out, T* lse, Scratch<T>& w) {
  constexpr int W = kLanes<T>, L = QV * W;
  const T neg_inf = -__builtin_inf();
  const T scale2 = scale * T(1.4426950408889634);  // log2 e: scores, max and softmax in base 2 (exp2_vec)
  for (int i = 0; i < rows; ++i)
    for (int d = 0; d < D; ++d) w.qt[d * L + i] = scale2 * Q[i * ldq + d];
  for (int i = rows; i < L; ++i)
    for (int d = 0; d < D; ++d) w.qt[d * L + i] = T(0);
  int n_min = keys[0], n_max = keys[0];  // over the real rows: keys past n_min are masked lane-wise
  vec<T> limit[QV];
  for (int i = 0; i < L; ++i) {
    const int n = keys[i < rows ? i : 0];
    n_min = n < n_min ? n : n_min, n_max = n > n_max ? n : n_max;
    limit[i / W][i % W] = T(n);
  }
  // Online softmax (FlashAttention-2), lane-wise, a chunk at a time: the score tiles store S into St and take the
  // chunk's max; m, the running max less at most kLag (so P <= 2^kLag), moves to the max only when the chunk passes
  // it by more, rescaling l and the accumulator by 2^(m_old - m_new) (the first chunk does, the others rarely);
  // then one streaming pass turns St into P = 2^(S - m) and sums l. (Doing the exponentials inside the score tiles,
  // beside their 12 accumulators, cost a fifth of the time on AVX2's 16 registers.) A lane that has seen only
  // -inf keeps m = -inf and subtracts 0: P = 0, l and Ot stay 0.
  constexpr T kLag = 8;
  vec<T> m[QV], l[QV], sub[QV];
  for (int v = 0; v < QV; ++v) m[v] = splat(neg_inf), sub[v] = l[v] = splat(T(0));
  for (int k0 = 0; k0 < n_max; k0 += kChunk) {
    const int n = n_max - k0 < kChunk ? n_max - k0 : kChunk;
    vec<T> chunk_max[QV];
    for (int v = 0; v < QV; ++v) chunk_max[v] = splat(neg_inf);
    in_tiles<kAccumulators / QV>(n, [&](auto nk, int j) {
      constexpr int NK = decltype(nk)::value;
      score_tile<T, QV, NK>(w.qt, D, K + (k0 + j) * ldk, ldk, [&](vec<T> (&acc)[NK][QV]) {
        if (k0 + j + NK > n_min)  // keys some rows of the block do not see
          for (int r = 0; r < NK; ++r)
            for (int v = 0; v < QV; ++v) acc[r][v] = splat(T(k0 + j + r)) < limit[v] ? acc[r][v] : splat(neg_inf);
#pragma GCC unroll 16
        for (int r = 0; r < NK; ++r)
#pragma GCC unroll 4
          for (int v = 0; v < QV; ++v) {
            chunk_max[v] = vmax<T>(chunk_max[v], acc[r][v]);
            store(w.st + (j + r) * L + v * W, acc[r][v]);
          }
      });
    });
    bool raised = false;
    for (int v = 0; v < QV; ++v) raised |= any(chunk_max[v] > m[v] + kLag);
    if (raised) {
      vec<T> alpha[QV];
      for (int v = 0; v < QV; ++v) {
        const vec<T> m_new = vmax<T>(m[v], chunk_max[v]);
        sub[v] = m_new == neg_inf ? splat(T(0)) : m_new;
        alpha[v] = exp2_vec(m[v] - sub[v]);  // 0 while m = -inf
        m[v] = m_new, l[v] *= alpha[v];
      }
      if (k0 > 0)
        for (int c = 0; c < D; ++c)
          for (int v = 0; v < QV; ++v) store(w.ot + c * L + v * W, load(w.ot + c * L + v * W) * alpha[v]);
    }
    for (int r = 0; r < n; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < QV; ++v) {
        const vec<T> p = exp2_vec(load(w.st + r * L + v * W) - sub[v]);
        store(w.st + r * L + v * W, p);
        l[v] += p;
      }
    in_tiles<kAccumulators / QV>(D, [&](auto nc, int c0) {
      value_tile<T, QV, decltype(nc)::value>(w.st, n, V + k0 * ldv, ldv, c0, k0 == 0, w.ot);
    });
  }
  for (int i = 0; i < rows; ++i) {  // a query that saw no key: out 0, lse -inf (a NaN query stays NaN)
    const T li = l[i / W][i % W], mi = m[i / W][i % W], inv = li == T(0) ? T(0) : T(1) / li;
    for (int c = 0; c < D; ++c) out[i * D + c] = n_max > 0 ? w.ot[c * L + i] * inv : T(0);  // Ot unwritten at 0
    lse[i] = li == T(0) ? neg_inf : (mi + __builtin_log2(li)) * T(0.6931471805599453);  // ln 2: back to base e
  }
}

template <class T>
void forward(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const DecodeDims& d, const MaskParams& mask, T scale,
             int64_t item0, int64_t item1, T* out, T* lse) {
  static thread_local Scratch<T> w;
  const int blocks = (d.rows + kBlock<T> - 1) / kBlock<T>;
  const int64_t group = d.H / d.Hk;
  int keys[kBlock<T>];
  for (int64_t item = item0; item < item1; ++item) {
    const int64_t bh = item / blocks, b = bh / d.H, h = bh % d.H;
    const int r0 = int(item % blocks) * kBlock<T>, rows = d.rows - r0 < kBlock<T> ? d.rows - r0 : kBlock<T>;
    for (int i = 0; i < rows; ++i) keys[i] = prefix_keys(mask, int(b), r0 + i, d.Lq, d.Lk);
    const T* Q = q.at(b, h) + r0 * q.sl;
    T *o = out + (bh * d.Lq + r0) * d.D, *ls = lse + bh * d.Lq + r0;
    const T *K = k.at(b, h / group), *V = v.at(b, h / group);
    if (rows <= kLanes<T>)
      attend_block<T, 1>(Q, q.sl, rows, keys, K, k.sl, V, v.sl, d.D, scale, o, ls, w);
    else if (kQueryVectors == 2 || rows <= 2 * kLanes<T>)
      attend_block<T, 2>(Q, q.sl, rows, keys, K, k.sl, V, v.sl, d.D, scale, o, ls, w);
    else
      attend_block<T, kQueryVectors>(Q, q.sl, rows, keys, K, k.sl, V, v.sl, d.D, scale, o, ls, w);
  }
}

// ---- one query against spans of keys (DALL-E's masks) ----
// K and V are read in their storage S: T itself, or (T float) bfloat16 / float16, widened as they are loaded.

constexpr int kAheadRows = 16;  // rows of K prefetched ahead of the scores: 4 KB at DALL-E's head dim 64 in float32

// The rows of K of a query's spans in the order they are scored, prefetched a distance ahead: the hardware
// prefetchers stop at each 4 KB page (16 rows here) and at each span's start (a conv layer's are a few keys long).
// bench_dalle_decode's calls (12 layers' caches in turn), interleaved in one process on an AMD Zen 5, 2 threads:
// row layer at row 20 0.163 -> 0.151 ms, conv layer's last token 0.192 -> 0.156 ms (16 rows; 32 and 64 no better).
// V is left to the hardware prefetchers in the values pass: prefetching its rows beside the scores' (as it was)
// measured 3-10% slower there, in 600 calls interleaved per variant (same CPU, the kernel alone).
template <class S>
struct KeysAhead {
  const Span* spans;
  int count, i = 0, j = 0, lines;
  const S* K;
  int64_t ldk;
  KeysAhead(const Span* spans_, int count_, const S* K_, int64_t ldk_, int D)
      : spans(spans_), count(count_), lines((D * int(sizeof(S)) + 63) / 64), K(K_), ldk(ldk_) {
    next(kAheadRows);
  }
  void next(int rows) {  // prefetch the next `rows` rows not yet asked for
    for (; rows > 0 && i < count; --rows) {
      const char* p = reinterpret_cast<const char*>(K + (spans[i].k0 + int64_t(j) * spans[i].stride) * ldk);
      for (int c = 0; c < lines; ++c) __builtin_prefetch(p + 64 * c, 0, 3);
      if (++j == spans[i].n) ++i, j = 0;
    }
  }
};

// s[j] = scale q . K[j * ldk, + D) for j < n: W keys at a time, one accumulator each along D folded by one transposing
// sum into a vector of W scores (a last group of more than W / 2 keys repeats key n - 1 past n, those lanes dropped;
// fewer keys go one by one, each folded by a horizontal sum: VAR's first scale has 1 key, its second 5). The rows of
// K `ahead` names, kAheadRows keys past those being scored, are prefetched across the spans.
template <class T, class S>
void span_scores(const T* q, const S* K, int64_t ldk, int n, int D, T scale, T* s, KeysAhead<S>& ahead) {
  constexpr int W = kLanes<T>;
  const int Dv = D / W * W;
  const int grouped = n % W > W / 2 ? n : n / W * W;
  for (int j = grouped; j < n; ++j) {
    const S* row = K + int64_t(j) * ldk;
    ahead.next(1);
    vec<T> acc = splat(T(0));
    for (int d = 0; d < Dv; d += W) acc += load(q + d) * load_widened(row + d);
    T r = hsum<T>(acc);
    for (int d = Dv; d < D; ++d) r += q[d] * widened(row[d]);
    s[j] = r * scale;
  }
  for (int j = 0; j < grouped; j += W) {
    const S* rows[W];
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) rows[i] = K + int64_t(j + i < grouped ? j + i : grouped - 1) * ldk;
    ahead.next(W);
    vec<T> acc[W];
#pragma GCC unroll 16
    for (int i = 0; i < W; ++i) acc[i] = splat(T(0));
    for (int d = 0; d < Dv; d += W) {
      const vec<T> qd = load(q + d);
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) acc[i] += qd * load_widened(rows[i] + d);
    }
    transposing_sum<T>(acc);
    vec<T> r = acc[0];
    for (int i = 0; Dv < D && i < W; ++i)  // head dims that are not a multiple of W: the last columns
      for (int d = Dv; d < D; ++d) r[i] += q[d] * widened(rows[i][d]);
    r *= scale;
    if (grouped - j >= W) store(s + j, r);
    else
      for (int i = 0; i < grouped - j; ++i) s[j + i] = r[i];
  }
}

// o[c0 + NC W vectors) = (first ? 0 : o) + sum over j < n of p[j] V[j * ldv + c0, ...).
template <class T, int NC, class S>
void span_values(const T* p, const S* V, int64_t ldv, int n, int c0, bool first, T* o) {
  constexpr int W = kLanes<T>;
  vec<T> acc[NC];
#pragma GCC unroll 16
  for (int c = 0; c < NC; ++c) acc[c] = first ? splat(T(0)) : load(o + c0 + c * W);
  for (int j = 0; j < n; ++j) {
    const vec<T> pj = splat(p[j]);
    const S* v = V + j * ldv + c0;
#pragma GCC unroll 16
    for (int c = 0; c < NC; ++c) acc[c] += pj * load_widened(v + c * W);
  }
#pragma GCC unroll 16
  for (int c = 0; c < NC; ++c) store(o + c0 + c * W, acc[c]);
}

// Scores of every span into one row (base 2), one softmax over it, then out = P V span by span.
template <class T, class S>
void attend_spans(const T* q, const Span* spans, int count, const S* K, int64_t ldk, const S* V, int64_t ldv, int D,
                  T scale, T* out, T* lse, T* s) {
  constexpr int W = kLanes<T>;
  const T neg_inf = -__builtin_inf();
  int n = 0;
  KeysAhead<S> ahead(spans, count, K, ldk, D);
  for (int i = 0; i < count; ++i) {
    span_scores(q, K + spans[i].k0 * ldk, spans[i].stride * ldk, spans[i].n, D, scale * T(1.4426950408889634),
                s + n, ahead);
    n += spans[i].n;
  }
  if (n == 0) {
    for (int c = 0; c < D; ++c) out[c] = T(0);
    *lse = neg_inf;
    return;
  }
  const int nv = (n + W - 1) / W * W;
  for (int j = n; j < nv; ++j) s[j] = neg_inf;  // whole vectors below: 2^-inf = 0
  vec<T> mv = load(s);
  for (int j = W; j < nv; j += W) mv = vmax<T>(mv, load(s + j));
  const T m = hmax<T>(mv);
  vec<T> lv = splat(T(0));
  for (int j = 0; j < nv; j += W) {
    const vec<T> p = exp2_vec(load(s + j) - m);
    store(s + j, p);
    lv += p;
  }
  const T l = hsum<T>(lv), inv = T(1) / l;
  const int Dv = D / W;
  for (int c = Dv * W; c < D; ++c) out[c] = T(0);
  int off = 0;
  for (int i = 0; i < count; ++i) {
    const Span& sp = spans[i];
    const S* Vs = V + sp.k0 * ldv;
    const int64_t ld = sp.stride * ldv;
    in_tiles<kAccumulators>(Dv, [&](auto nc, int c) {
      span_values<T, decltype(nc)::value>(s + off, Vs, ld, sp.n, c * W, i == 0, out);
    });
    for (int c = Dv * W; c < D; ++c)
      for (int j = 0; j < sp.n; ++j) out[c] += s[off + j] * widened(Vs[j * ld + c]);
    off += sp.n;
  }
  for (int c = 0; c < D; ++c) out[c] *= inv;
  *lse = (m + __builtin_log2(l)) * T(0.6931471805599453);  // ln 2: back to base e
}

template <class T>
constexpr AttentionDecodeKernels<T> kernels() { return {kBlock<T>, forward<T>, attend_spans<T, T>}; }

}  // namespace

extern const AttentionDecodeIsa kAttentionDecode = {kernels<float>(), kernels<double>(), attend_spans<float, Bf16>,
                                                    attend_spans<float, F16>};

}  // namespace fastar::cpu::FASTAR_ISA
