// Tiny-sequence attention micro-kernels (see cpu/attention_tiny_isa.h), in two layouts of a sequence's score block,
// held in a few KB of scratch as whole vectors.
// The query-lane layout (Lq > W / 2, W the vector width: FractalGen's levels): Q^T (D, LQ), LQ = Lq rounded up to
// W, is transposed once per sequence, so S^T = K Q^T, O = P V and the backward's five products are all `product`
// (one scalar broadcast against whole vectors, no horizontal sums), and the softmax reduces down the columns.
// The row layout (Lq <= W / 2: PixelLoss): rows of LP key slots, LP = Lk rounded up to a power of two when Lk is
// below W (then R = W / LP query rows share one vector: PixelLoss's 4 x 4 block is two vectors), else to a multiple
// of W; S = Q K^T by `dots` (W accumulators along D, one per lane of the output vector, then one transposing sum),
// the softmax along the rows by butterflies.
//   product: C (M, N) = A (M, K) B (K, N), B's rows unit-stride, A read as scalars at any strides (K, P, dS or their
//            transposes): 2 rows x 4 vectors of accumulators, or 4 x 3, 4 x 2, 4 x 1.
// The softmax runs in base 2 (scores pre-multiplied by log2 e) on whole vectors.
// Memory (the query-lane layout, whose sequences are KBs: level 1 reads 17 KB a sequence): the next sequence's lines
// are prefetched a few at a time between the products' blocks (LinePrefetch), and outputs of 16 MB and more leave by
// streaming stores.
#include "cpu/attention_tiny_isa.h"
#include "cpu/isa_math.h"
#include "cpu/line_prefetch.h"

#include <algorithm>
#include <cstdint>

namespace fastar::cpu::FASTAR_ISA {
namespace {

using kernels::MaskParams;

constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;

// ---- compile-time widths ----

template <int N>
struct Pow2 { static constexpr int value = N; };

// f(Pow2<n>()) for a power of two n <= W known at run time.
template <class T, class F>
void with_pow2(int n, F&& f) {
  constexpr int W = kLanes<T>;
  if (n == 1) return f(Pow2<1>());
  if (n == 2) return f(Pow2<2>());
  if constexpr (W >= 4) if (n == 4) return f(Pow2<4>());
  if constexpr (W >= 8) if (n == 8) return f(Pow2<8>());
  if constexpr (W >= 16) if (n == 16) return f(Pow2<16>());
}

// Max (or sum) over each aligned run of G lanes, in every lane of the run (a butterfly).
template <class T, int G>
inline vec<T> run_max(vec<T> v) {
  if constexpr (G > 1) {
    v = run_max<T, G / 2>(v);
    const vec<T> w = __builtin_shuffle(v, pattern<T>([](int p) { return p ^ (G / 2); }));
    return v > w ? v : w;
  }
  return v;
}
template <class T, int G>
inline vec<T> run_sum(vec<T> v) {
  if constexpr (G > 1) {
    v = run_sum<T, G / 2>(v);
    return v + __builtin_shuffle(v, pattern<T>([](int p) { return p ^ (G / 2); }));
  }
  return v;
}

// ---- the score block ----

struct Block {
  int LP;    // key slots per score row: Lk rounded up to a power of two below W, else to a multiple of W
  int rows;  // query rows, Lq rounded up to the W / LP rows that share a vector
  int vecs;  // vectors in the block (rows * LP / W)
};

template <class T>
Block block_of(int Lq, int Lk) {
  constexpr int W = kLanes<T>;
  int LP = 1;
  while (LP < Lk && LP < W) LP *= 2;
  if (Lk > W) LP = (Lk + W - 1) / W * W;
  const int R = LP < W ? W / LP : 1, rows = (Lq + R - 1) / R * R;
  return {LP, rows, rows * LP / W};
}

// A score under the mask's bias (0: seen, -inf: hidden): the score, or -inf, selected rather than added, so that a
// hidden key's NaN score (a NaN in its k) stays hidden.
template <class T>
inline vec<T> masked(vec<T> score, vec<T> bias) { return bias == T(0) ? score : bias; }

// Scratch of a task: the mask as a bias (0 / -inf) of the score block, the scores (then P), dP (then dS),
// and values per query row (the softmax's max and sum), padded for vector loads.
template <class T>
struct Scratch {
  alignas(64) T bias[kTinyMaxLen * kTinyMaxLen];
  alignas(64) T s[kTinyMaxLen * kTinyMaxLen], ds[kTinyMaxLen * kTinyMaxLen];
  alignas(64) T row_a[kTinyMaxLen + 16], row_b[kTinyMaxLen + 16];
  alignas(64) T qt[kTinyMaxDim * kTinyMaxLen], dot[kTinyMaxDim * kTinyMaxLen];  // Q^T, dO^T (query-lane layout)
};

// bias <- 0 where query i of batch row b sees key j, -inf elsewhere (key slots past Lk, rows past Lq).
template <class T>
void mask_bias(const MaskParams& mask, int64_t b, int Lq, int Lk, const Block& blk, T* bias) {
  for (int i = 0; i < blk.rows; ++i)
    for (int j = 0; j < blk.LP; ++j)
      bias[i * blk.LP + j] = i < Lq && j < Lk && kernels::visible(mask, int(b), i, j, Lq, Lk) ? T(0)
                                                                                            : T(-__builtin_inf());
}

// out (blk.vecs vectors) = alpha A B^T (masked by bias): A (M, D) rows at stride lda, B (N, D) at ldb, both unit-stride
// along D; the score block's padding rows and key slots repeat row M - 1 and key N - 1 (finite, masked by bias).
// R query rows x G = W / R keys of accumulators per output vector.
template <class T, int R>
void dots(const T* A, int64_t lda, int M, const T* B, int64_t ldb, int N, int D, const Block& blk, T alpha,
          const T* bias, T* out) {
  constexpr int W = kLanes<T>, G = W / R;
  const int D0 = D / W * W;
  for (int j0 = 0; j0 < blk.LP; j0 += G) {  // keys outer: their G row pointers set once per key group
    const T* b[G];
    for (int g = 0; g < G; ++g) b[g] = B + (j0 + g < N ? j0 + g : N - 1) * ldb;
    for (int i0 = 0; i0 < blk.rows; i0 += R) {
      const T* a[R];
      for (int r = 0; r < R; ++r) a[r] = A + (i0 + r < M ? i0 + r : M - 1) * lda;
      vec<T> acc[W];
      for (int p = 0; p < W; ++p) acc[p] = splat(T(0));
      for (int d = 0; d < D0; d += W) {
        vec<T> x[R];
        for (int r = 0; r < R; ++r) x[r] = load(a[r] + d);
        for (int g = 0; g < G; ++g) {
          const vec<T> y = load(b[g] + d);
          for (int r = 0; r < R; ++r) acc[r * G + g] += x[r] * y;
        }
      }
      transposing_sum<T>(acc);
      for (int d = D0; d < D; ++d)  // head dims off the vector width
        for (int p = 0; p < W; ++p) acc[0][p] += a[p / G][d] * b[p % G][d];
      const vec<T> c = acc[0] * alpha;
      const int t = i0 * blk.LP + j0;
      store(out + t, bias != nullptr ? masked<T>(c, load(bias + t)) : c);
    }
  }
}

template <class T>
void dots(const T* A, int64_t lda, int M, const T* B, int64_t ldb, int N, int D, const Block& blk, T alpha,
          const T* bias, T* out) {
  with_pow2<T>(blk.LP < kLanes<T> ? kLanes<T> / blk.LP : 1, [&](auto R) {
    dots<T, decltype(R)::value>(A, lda, M, B, ldb, N, D, blk, alpha, bias, out);
  });
}

// Pins a loaded vector to a register: GCC otherwise folds the load into every FMA that uses it, which doubles the
// loads of a 2-row block (3.0 against 4.9 vector FMAs per ns on Zen 3).
template <class V>
inline void in_register(V& v) { asm("" : "+x"(v)); }

// C (R rows, C vectors) = A B over k < K: A[r * am + k * ak] broadcast, B's rows at stride ldb. Always inlined: as a
// call it kept its accumulators on the stack (1.8x slower).
template <class T, int R, int C, bool Stream>
__attribute__((always_inline)) inline void product_block(const T* A, int64_t am, int64_t ak, int K, const T* B,
                                                         int64_t ldb, T* Cm, int64_t ldc) {
  constexpr int W = kLanes<T>;
  vec<T> c[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) c[r][j] = splat(T(0));
  for (int k = 0; k < K; ++k) {
    vec<T> b[C];
    for (int j = 0; j < C; ++j) b[j] = load(B + k * ldb + j * W), in_register(b[j]);
    for (int r = 0; r < R; ++r) {
      const vec<T> x = splat(A[r * am + k * ak]);
      for (int j = 0; j < C; ++j) c[r][j] += x * b[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) {
      if constexpr (Stream) stream(Cm + r * ldc + j * W, c[r][j]);
      else store(Cm + r * ldc + j * W, c[r][j]);
    }
}

struct NoHook {
  void operator()() const {}
};

// C (M, C vectors at column 0) = A B, in blocks of R rows, then the last rows in blocks of R / 2, R / 4, ... (a
// single row's C accumulators wait on the FMA latency); hook() after each block (cpu/line_prefetch.h: the
// next sequence's lines, a few at a time).
template <class T, int R, int C, bool Stream, class Hook>
inline void product_columns(const T* A, int64_t am, int64_t ak, int M, int K, const T* B, int64_t ldb, T* Cm,
                            int64_t ldc, Hook& hook) {
  int m = 0;
  for (; m + R <= M; m += R) {
    product_block<T, R, C, Stream>(A + m * am, am, ak, K, B, ldb, Cm + m * ldc, ldc);
    hook();
  }
  if constexpr (R > 1)
    if (m < M) product_columns<T, R / 2, C, Stream>(A + m * am, am, ak, M - m, K, B, ldb, Cm + m * ldc, ldc, hook);
}

// C (M, N) = A (M, K) B (K, N): A[m * am + k * ak] (am, ak pick P, dS, K or a transpose), rows of B and C
// unit-stride. 8 to 12 accumulators per block: 2 rows x 4 vectors, then 4 x 3, 4 x 2 or 4 x 1 on the last columns.
// Stream: C leaves by streaming stores (N a multiple of W, C and ldc aligned to whole vectors).
template <class T, bool Stream = false, class Hook = const NoHook>
void product(const T* A, int64_t am, int64_t ak, int M, int K, const T* B, int64_t ldb, int N, T* C, int64_t ldc,
             Hook&& hook = NoHook()) {
  constexpr int W = kLanes<T>;
  int n = 0;
  for (; n + 4 * W <= N; n += 4 * W) product_columns<T, 2, 4, Stream>(A, am, ak, M, K, B + n, ldb, C + n, ldc, hook);
  if (n + 3 * W <= N) product_columns<T, 4, 3, Stream>(A, am, ak, M, K, B + n, ldb, C + n, ldc, hook), n += 3 * W;
  if (n + 2 * W <= N) product_columns<T, 4, 2, Stream>(A, am, ak, M, K, B + n, ldb, C + n, ldc, hook), n += 2 * W;
  if (n + W <= N) product_columns<T, 4, 1, Stream>(A, am, ak, M, K, B + n, ldb, C + n, ldc, hook), n += W;
  for (; n < N; ++n)  // head dims off the vector width
    for (int m = 0; m < M; ++m) {
      T c = 0;
      for (int k = 0; k < K; ++k) c += A[m * am + k * ak] * B[k * ldb + n];
      C[m * ldc + n] = c;
    }
}

// Rounds S of the in-register transpose: swap the S-lane blocks of rows i and i + S (one two-input shuffle per row
// once S spans 64 bits: shufps, vperm2f128, vshuff32x4).
template <class T, int S>
inline void swap_blocks(vec<T>* a) {
  constexpr int W = kLanes<T>;
  if constexpr (S < W) {
    for (int i = 0; i < W; ++i)
      if ((i & S) == 0) {
        const vec<T> u = a[i], v = a[i + S];
        a[i] = __builtin_shuffle(u, v, pattern<T>([](int p) { return p & S ? W + p - S : p; }));
        a[i + S] = __builtin_shuffle(u, v, pattern<T>([](int p) { return p & S ? W + p : p + S; }));
      }
    swap_blocks<T, 2 * S>(a);
  }
}

// a (W vectors: the rows of a W x W block) <- its transpose. Doubles: block swaps of 1, 2, ... lanes (the first is
// unpacklo / unpackhi). Floats: unpacklo / unpackhi of row pairs first (a single-lane block swap would take two
// instructions a row), which leaves rows 1 and 2 of each 4 exchanged once the block swaps of 2, 4, ... lanes follow.
template <class T>
inline void transpose_square(vec<T>* a) {
  constexpr int W = kLanes<T>, Q = 16 / int(sizeof(T));  // lanes per 128 bits
  if constexpr (Q == 4) {
    for (int i = 0; i < W; i += 2) {
      const vec<T> u = a[i], v = a[i + 1];
      a[i] = __builtin_shuffle(u, v, pattern<T>([](int p) { return (p % 2 ? W : 0) + p / Q * Q + p % Q / 2; }));
      a[i + 1] =
          __builtin_shuffle(u, v, pattern<T>([](int p) { return (p % 2 ? W : 0) + p / Q * Q + Q / 2 + p % Q / 2; }));
    }
    swap_blocks<T, 2>(a);
    for (int i = 0; i < W; i += 4) {
      const vec<T> t = a[i + 1];
      a[i + 1] = a[i + 2], a[i + 2] = t;
    }
  } else {
    swap_blocks<T, 1>(a);
  }
}

// out (cols, ld) = alpha A^T for A (rows, cols) at row stride lda, columns rows..ld of out 0 (ld a multiple of W):
// W x W blocks transposed in registers, the columns of A past the last whole block by scalars.
template <class T>
void transpose(const T* A, int64_t lda, int rows, int cols, T alpha, T* out, int ld) {
  constexpr int W = kLanes<T>;
  const int c0 = cols / W * W;
  for (int r0 = 0; r0 < ld; r0 += W) {
    const int n = rows - r0;  // rows of this block in A (the rest are 0)
    for (int c = 0; c < c0; c += W) {
      vec<T> a[W];
      for (int i = 0; i < W; ++i) a[i] = i < n ? load(A + (r0 + i) * lda + c) * alpha : splat(T(0));
      transpose_square<T>(a);
      for (int i = 0; i < W; ++i) store(out + (c + i) * ld + r0, a[i]);
    }
    for (int c = c0; c < cols; ++c)
      for (int i = 0; i < W; ++i) out[c * ld + r0 + i] = i < n ? alpha * A[(r0 + i) * lda + c] : T(0);
  }
}

// ---- softmax ----

// ln 2 (m + log2 l) lane by lane, -inf where l is 0 and NaN where l is (a NaN score): a row's natural-log lse from
// its base-2 max and sum.
template <class T>
inline vec<T> lse_of(vec<T> m, vec<T> l) {
  const vec<T> y = l == 0 ? splat(T(-__builtin_inf())) : m * T(kLn2) + log_vec(l > 0 ? l : splat(T(1)));
  return l == l ? y : l;
}

// s (the block's scores, base 2, masked) <- P = softmax of each row; lse (Lq,) <- each row's logsumexp (-inf where a
// row sees no key: its P is 0), unless nullptr (the backward, which makes P again). m, l: scratch for the rows' max
// and sum when rows span whole vectors.
template <class T, int G>
void softmax(T* s, const Block& blk, int Lq, T* lse, T* m, T* l) {
  constexpr int W = kLanes<T>, R = W / G;
  const T inf = __builtin_inf();
  if constexpr (G < W) {  // R rows per vector
    for (int t = 0; t < blk.vecs; ++t) {
      const vec<T> x = load(s + t * W), mx = run_max<T, G>(x);
      const vec<T> p = exp2_vec(x - (mx == -inf ? splat(T(0)) : mx)), sum = run_sum<T, G>(p);
      store(s + t * W, p * (sum == 0 ? splat(T(0)) : T(1) / sum));
      if (lse == nullptr) continue;
      const vec<T> y = lse_of<T>(mx, sum);
      for (int r = 0; r < R && t * R + r < Lq; ++r) lse[t * R + r] = y[r * G];
    }
  } else {  // LP / W vectors per row
    const int n = blk.LP / W;
    for (int i = 0; i < blk.rows; ++i) {
      T* row = s + i * blk.LP;
      vec<T> mx = load(row);
      for (int u = 1; u < n; ++u) mx = vmax<T>(mx, load(row + u * W));
      mx = run_max<T, W>(mx);
      const vec<T> sub = mx == -inf ? splat(T(0)) : mx;
      vec<T> sum = splat(T(0));
      for (int u = 0; u < n; ++u) {
        const vec<T> p = exp2_vec(load(row + u * W) - sub);
        store(row + u * W, p);
        sum += p;
      }
      sum = run_sum<T, W>(sum);
      const vec<T> inv = sum == 0 ? splat(T(0)) : T(1) / sum;
      for (int u = 0; u < n; ++u) store(row + u * W, load(row + u * W) * inv);
      m[i] = mx[0], l[i] = sum[0];
    }
    for (int i = 0; lse != nullptr && i < Lq; i += W) {  // the logs a vector of rows at a time
      const vec<T> y = lse_of<T>(load(m + i), load(l + i));
      for (int p = 0; p < W && i + p < Lq; ++p) lse[i + p] = y[p];
    }
  }
}

// ds (dP) <- dS = scale P (dP - delta), delta = rowsum(P dP) (the products of dP, so that a single key gives dS = 0
// exactly), p: P as the forward's softmax made it. Not P = exp2(s - lse log2(e)): lse, a natural log of base-2 scores,
// is rounded twice on the way back, ~2 ulps of |s| off, and every P with it (a single key's P of 1 came out
// 1 - 1e-4 at |s| ~ 700; its dS, 0 in the reference, then ~1e-4 dP: gradients tens of times past the
// tolerance).
template <class T, int G>
void softmax_grad(const T* p, T* ds, const Block& blk, T scale) {
  constexpr int W = kLanes<T>;
  if constexpr (G < W) {
    for (int t = 0; t < blk.vecs; ++t) {
      const vec<T> x = load(p + t * W), dp = load(ds + t * W);
      store(ds + t * W, scale * x * (dp - run_sum<T, G>(x * dp)));
    }
  } else {
    const int n = blk.LP / W;
    for (int i = 0; i < blk.rows; ++i) {
      const T* pr = p + i * blk.LP;
      T* dp = ds + i * blk.LP;
      vec<T> pdp = splat(T(0));
      for (int u = 0; u < n; ++u) pdp += load(pr + u * W) * load(dp + u * W);
      const vec<T> delta = run_sum<T, W>(pdp);
      for (int u = 0; u < n; ++u) store(dp + u * W, scale * load(pr + u * W) * (load(dp + u * W) - delta));
    }
  }
}

// The query-lane layout's softmax: s (Lk, LQ) holds S^T in base 2, a column per query (LQ = Lq rounded up to W),
// bias (Lk, LQ) the mask; every reduction runs down the columns, lane by lane.

// s <- P^T = the softmax of each column of s masked by bias; lse (Lq,) <- each query's logsumexp (-inf where it sees
// no key: its P is 0), unless nullptr (the backward).
template <class T>
void softmax_columns(T* s, const T* bias, int Lk, int LQ, int Lq, T* lse) {
  constexpr int W = kLanes<T>;
  const T inf = __builtin_inf();
  for (int c = 0; c < LQ; c += W) {
    vec<T> mx = splat(-inf);
    for (int j = 0; j < Lk; ++j) {
      const vec<T> x = masked<T>(load(s + j * LQ + c), load(bias + j * LQ + c));
      store(s + j * LQ + c, x);
      mx = vmax<T>(mx, x);
    }
    const vec<T> sub = mx == -inf ? splat(T(0)) : mx;
    vec<T> sum = splat(T(0));
    for (int j = 0; j < Lk; ++j) {
      const vec<T> p = exp2_vec(load(s + j * LQ + c) - sub);
      store(s + j * LQ + c, p);
      sum += p;
    }
    const vec<T> inv = sum == 0 ? splat(T(0)) : T(1) / sum;
    for (int j = 0; j < Lk; ++j) store(s + j * LQ + c, load(s + j * LQ + c) * inv);
    if (lse == nullptr) continue;
    const vec<T> y = lse_of<T>(mx, sum);
    for (int p = 0; p < W && c + p < Lq; ++p) lse[c + p] = y[p];
  }
}

// ds (dP^T) <- dS^T = scale P (dP - delta), delta = the column sums of P dP, p: P^T as softmax_columns made it
// (softmax_grad says why not from lse).
template <class T>
void softmax_grad_columns(const T* p, T* ds, int Lk, int LQ, T scale) {
  constexpr int W = kLanes<T>;
  for (int c = 0; c < LQ; c += W) {
    vec<T> pdp = splat(T(0));
    for (int j = 0; j < Lk; ++j) pdp += load(p + j * LQ + c) * load(ds + j * LQ + c);
    for (int j = 0; j < Lk; ++j) store(ds + j * LQ + c, scale * load(p + j * LQ + c) * (load(ds + j * LQ + c) - pdp));
  }
}

// ---- sequences ----

// f(bh, Q, K, V, pf) for every sequence bh in [bh0, bh1), with set_bias(b) called for its batch row b when the mask
// changes; prefetch(pf, bh, Q, K, V) adds the streams of a sequence to pf, called for the next sequence before f.
template <class T, class SetBias, class Prefetch, class F>
void each_sequence(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask,
                   int64_t bh0, int64_t bh1, SetBias&& set_bias, Prefetch&& prefetch, F&& f) {
  const int64_t group = d.H / d.Hk;
  int64_t b = bh0 / d.H, h = bh0 % d.H;  // then stepped: a division per sequence costs ~5% at PixelLoss's shape
  set_bias(b);
  LinePrefetch<> pf;
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t hn = h + 1 == d.H ? 0 : h + 1, bn = hn == 0 ? b + 1 : b;
    if (bh + 1 < bh1) prefetch(pf, bh + 1, q.at(bn, hn), k.at(bn, hn / group), v.at(bn, hn / group));
    f(bh, q.at(b, h), k.at(b, h / group), v.at(b, h / group), pf);
    pf.next();
    h = hn, b = bn;
    if (hn == 0 && bh + 1 < bh1 && mask.key_len != nullptr) set_bias(b);
  }
}

// No prefetch: the row layout's sequences are a few hundred bytes, which the hardware prefetchers follow.
struct NoPrefetch {
  template <class... A>
  void operator()(A&&...) const {}
};

// ---- the row layout (Lq <= W / 2: PixelLoss): score rows of LP key slots, R query rows per vector ----

template <class T, int G>
void forward_rows(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask,
                  T scale, int64_t bh0, int64_t bh1, T* out, T* lse, Scratch<T>& w) {
  const int D = d.D;
  const Block blk = block_of<T>(d.Lq, d.Lk);
  auto set_bias = [&](int64_t b) { mask_bias(mask, b, d.Lq, d.Lk, blk, w.bias); };
  each_sequence(q, k, v, d, mask, bh0, bh1, set_bias, NoPrefetch(), [&](int64_t bh, const T* Q, const T* K,
                                                                         const T* V, LinePrefetch<>&) {
    dots<T>(Q, q.sl, d.Lq, K, k.sl, d.Lk, D, blk, T(scale * kLog2e), w.bias, w.s);  // S = scale log2(e) Q K^T
    softmax<T, G>(w.s, blk, d.Lq, lse + bh * d.Lq, w.row_a, w.row_b);                // P, lse
    product(w.s, blk.LP, 1, d.Lq, d.Lk, V, v.sl, D, out + bh * d.Lq * D, D);  // O = P V
  });
}

template <class T, int G>
void backward_rows(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const TinyDims& d,
                   const MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv, Scratch<T>& w) {
  const int D = d.D;
  const Block blk = block_of<T>(d.Lq, d.Lk);
  auto set_bias = [&](int64_t b) { mask_bias(mask, b, d.Lq, d.Lk, blk, w.bias); };
  each_sequence(q, k, v, d, mask, bh0, bh1, set_bias, NoPrefetch(), [&](int64_t bh, const T* Q, const T* K,
                                                                         const T* V, LinePrefetch<>&) {
    const T* dO = dout + bh * d.Lq * D;
    dots<T>(Q, q.sl, d.Lq, K, k.sl, d.Lk, D, blk, T(scale * kLog2e), w.bias, w.s);  // S (base 2)
    dots<T>(dO, D, d.Lq, V, v.sl, d.Lk, D, blk, T(1), nullptr, w.ds);                // dP = dO V^T
    softmax<T, G>(w.s, blk, d.Lq, nullptr, w.row_a, w.row_b);                         // P, as the forward's
    softmax_grad<T, G>(w.s, w.ds, blk, scale);                                        // dS
    product(w.ds, blk.LP, 1, d.Lq, d.Lk, K, k.sl, D, dq + bh * d.Lq * D, D);  // dQ = dS K
    product(w.ds, 1, blk.LP, d.Lk, d.Lq, Q, q.sl, D, dk + bh * d.Lk * D, D);  // dK = dS^T Q
    product(w.s, 1, blk.LP, d.Lk, d.Lq, dO, D, D, dv + bh * d.Lk * D, D);     // dV = P^T dO
  });
}

// ---- the query-lane layout (Lq > W / 2: FractalGen's levels): a column per query ----
// Qt (D, LQ) = scale log2(e) Q^T, transposed once per sequence, LQ = Lq rounded up to W; then every product
// broadcasts one scalar against whole vectors (no horizontal sums) and the softmax reduces down the columns:
//   S^T = K Qt, P^T = softmax of its columns, O = P V (P^T read transposed).

// bias (Lk, LQ) <- 0 where query i of batch row b sees key j (and on the padding lanes i >= Lq), -inf elsewhere.
template <class T>
void mask_bias_columns(const MaskParams& mask, int64_t b, int Lq, int Lk, int LQ, T* bias) {
  for (int j = 0; j < Lk; ++j)
    for (int i = 0; i < LQ; ++i)
      bias[j * LQ + i] = i >= Lq || kernels::visible(mask, int(b), i, j, Lq, Lk) ? T(0) : T(-__builtin_inf());
}

template <class T>
int lanes_of(int Lq) { return (Lq + kLanes<T> - 1) / kLanes<T> * kLanes<T>; }

// Operands read of this size and more (q, k, v; and dO in the backward) are prefetched by LinePrefetch; smaller ones
// come from L2 / L3, where its prefetch instructions only cost (level 1 forward, 2 threads: 16 MB of operands 1.04 ->
// 1.50 ms with them; 132 MB 14.8 -> 10.3 ms; diagnostic runs).
constexpr int64_t kPrefetchBytes = int64_t(32) << 20;

template <class T>
bool past_caches(const TinyDims& d, int rows_per_sequence) {
  return d.B * d.H * rows_per_sequence * d.D * int64_t(sizeof(T)) >= kPrefetchBytes;
}

// Outputs of this size and more leave by streaming stores (smaller ones stay in cache for the op that reads them
// next): far past the caches, a plain store reads every line before writing it. bench_tiny_attention's level-1
// forward (AMD Zen 4, 2 threads): 11.7 -> 10.1 ms; forward + backward 44.2 -> 29.5 ms with both changes.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// Whether the (elements,) outputs at `outs` stream: rows of whole vectors (D), aligned, kStreamBytes together.
template <class T, int N>
bool streams(T* const (&outs)[N], int D, int64_t elements) {
  bool aligned = D % kLanes<T> == 0;
  for (T* o : outs) aligned = aligned && reinterpret_cast<uintptr_t>(o) % kVectorBytes == 0;
  return aligned && N * elements * int64_t(sizeof(T)) >= kStreamBytes;
}

template <class T>
void forward_lanes(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask,
                   T scale, int64_t bh0, int64_t bh1, T* out, T* lse, Scratch<T>& w) {
  const int D = d.D, Lq = d.Lq, Lk = d.Lk, LQ = lanes_of<T>(Lq);
  auto set_bias = [&](int64_t b) { mask_bias_columns(mask, b, Lq, Lk, LQ, w.bias); };
  const bool nt = streams<T, 1>({out}, D, d.B * d.H * Lq * D);
  const bool far = past_caches<T>(d, Lq + 2 * Lk);
  auto prefetch = [&](LinePrefetch<>& pf, int64_t bh, const T* Q, const T* K, const T* V) {
    if (!far) return;
    pf.add(Q, q.sl, Lq, D, false), pf.add(K, k.sl, Lk, D, false), pf.add(V, v.sl, Lk, D, false);
    if (!nt) pf.add(out + bh * Lq * D, D, Lq, D, true);
  };
  each_sequence(q, k, v, d, mask, bh0, bh1, set_bias, prefetch, [&](int64_t bh, const T* Q, const T* K, const T* V,
                                                                    LinePrefetch<>& pf) {
    transpose(Q, q.sl, Lq, D, T(scale * kLog2e), w.qt, LQ);  // Qt = scale log2(e) Q^T
    product(K, k.sl, 1, Lk, D, w.qt, LQ, LQ, w.s, LQ, pf);    // S^T = K Qt
    softmax_columns(w.s, w.bias, Lk, LQ, Lq, lse + bh * Lq);   // P^T, lse
    T* O = out + bh * Lq * D;                                  // O = P V
    if (nt) product<T, true>(w.s, 1, LQ, Lq, Lk, V, v.sl, D, O, D, pf);
    else product(w.s, 1, LQ, Lq, Lk, V, v.sl, D, O, D, pf);
  });
  if (nt) stream_fence();
}

template <class T>
void backward_lanes(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const TinyDims& d,
                    const MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv, Scratch<T>& w) {
  const int D = d.D, Lq = d.Lq, Lk = d.Lk, LQ = lanes_of<T>(Lq);
  auto set_bias = [&](int64_t b) { mask_bias_columns(mask, b, Lq, Lk, LQ, w.bias); };
  const bool nt = streams<T, 3>({dq, dk, dv}, D, d.B * d.H * std::max(Lq, Lk) * D);
  const bool far = past_caches<T>(d, 2 * Lq + 2 * Lk);
  auto prefetch = [&](LinePrefetch<>& pf, int64_t bh, const T* Q, const T* K, const T* V) {
    if (!far) return;
    pf.add(Q, q.sl, Lq, D, false), pf.add(dout + bh * Lq * D, D, Lq, D, false);
    pf.add(K, k.sl, Lk, D, false), pf.add(V, v.sl, Lk, D, false);
    if (!nt) {
      pf.add(dq + bh * Lq * D, D, Lq, D, true), pf.add(dk + bh * Lk * D, D, Lk, D, true);
      pf.add(dv + bh * Lk * D, D, Lk, D, true);
    }
  };
  each_sequence(q, k, v, d, mask, bh0, bh1, set_bias, prefetch, [&](int64_t bh, const T* Q, const T* K, const T* V,
                                                                    LinePrefetch<>& pf) {
    const T* dO = dout + bh * Lq * D;
    transpose(Q, q.sl, Lq, D, T(scale * kLog2e), w.qt, LQ);           // Qt
    transpose(dO, D, Lq, D, T(1), w.dot, LQ);                           // dO^T
    product(K, k.sl, 1, Lk, D, w.qt, LQ, LQ, w.s, LQ, pf);             // S^T = K Qt (base 2)
    product(V, v.sl, 1, Lk, D, w.dot, LQ, LQ, w.ds, LQ, pf);           // dP^T = V dO^T
    softmax_columns(w.s, w.bias, Lk, LQ, Lq, static_cast<T*>(nullptr));  // P^T, as the forward's
    softmax_grad_columns(w.s, w.ds, Lk, LQ, scale);                       // dS^T
    T *dQ = dq + bh * Lq * D, *dK = dk + bh * Lk * D, *dV = dv + bh * Lk * D;
    if (nt) {
      product<T, true>(w.ds, 1, LQ, Lq, Lk, K, k.sl, D, dQ, D, pf);  // dQ = dS K
      product<T, true>(w.ds, LQ, 1, Lk, Lq, Q, q.sl, D, dK, D, pf);  // dK = dS^T Q
      product<T, true>(w.s, LQ, 1, Lk, Lq, dO, D, D, dV, D, pf);     // dV = P^T dO
    } else {
      product(w.ds, 1, LQ, Lq, Lk, K, k.sl, D, dQ, D, pf);
      product(w.ds, LQ, 1, Lk, Lq, Q, q.sl, D, dK, D, pf);
      product(w.s, LQ, 1, Lk, Lq, dO, D, D, dV, D, pf);
    }
  });
  if (nt) stream_fence();
}

// The calling thread's scratch.
template <class T>
Scratch<T>& scratch() {
  static thread_local Scratch<T> w;
  return w;
}

// Whether Lq queries take the query-lane layout: more than half a vector of them (fewer would waste most lanes).
template <class T>
bool query_lanes(int Lq) { return 2 * Lq > kLanes<T>; }

template <class T>
void forward_fn(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const TinyDims& d, const MaskParams& mask, T scale,
                int64_t bh0, int64_t bh1, T* out, T* lse) {
  Scratch<T>& w = scratch<T>();
  if (query_lanes<T>(d.Lq)) return forward_lanes<T>(q, k, v, d, mask, scale, bh0, bh1, out, lse, w);
  const Block blk = block_of<T>(d.Lq, d.Lk);
  with_pow2<T>(blk.LP < kLanes<T> ? blk.LP : kLanes<T>, [&](auto G) {  // lanes of a score row's run
    forward_rows<T, decltype(G)::value>(q, k, v, d, mask, scale, bh0, bh1, out, lse, w);
  });
}

template <class T>
void backward_fn(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const T* dout, const TinyDims& d,
                 const MaskParams& mask, T scale, int64_t bh0, int64_t bh1, T* dq, T* dk, T* dv) {
  Scratch<T>& w = scratch<T>();
  if (query_lanes<T>(d.Lq)) return backward_lanes<T>(q, k, v, dout, d, mask, scale, bh0, bh1, dq, dk, dv, w);
  const Block blk = block_of<T>(d.Lq, d.Lk);
  with_pow2<T>(blk.LP < kLanes<T> ? blk.LP : kLanes<T>, [&](auto G) {
    backward_rows<T, decltype(G)::value>(q, k, v, dout, d, mask, scale, bh0, bh1, dq, dk, dv, w);
  });
}

template <class T>
constexpr AttentionTinyKernels<T> kernels() { return {forward_fn<T>, backward_fn<T>}; }

}  // namespace

extern const AttentionTinyIsa kAttentionTiny = {kernels<float>(), kernels<double>()};

}  // namespace fastar::cpu::FASTAR_ISA
