// Multi-axis attention micro-kernels (see cpu/multi_axis_isa.h). Per item: K (and in the backward V) transposed into
// scratch, zero-padded to whole vectors, so that every product is C (+)= alpha A B with unit-stride rows of B and C,
// reached through row pointers into the image layout or scratch; the scores of a chunk of query rows stay in a few KB
// between the products, where the softmax runs on whole vectors, in base 2. The output rows, written once, leave
// through streaming stores.
#include "cpu/multi_axis_isa.h"

#include "cpu/isa_math.h"
#include "cpu/line_prefetch.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace fastar::cpu::FASTAR_ISA {
namespace {

// The next item's lines, into L2 (cpu/line_prefetch.h), a few after each product tile of this item. Asked for at
// once into L1 as before, they came no sooner than the item's gathers then fetched them (switched off: the same
// time); spread into L1, no faster either. Spread into L2 (diagnostic runs, Zen 4, HiT-256's stages at B 8, builds
// before and after in turn): the 64 x 64 forward 20.0-23.4 -> 17.6-20.5 ms on one thread, ~10% on two; forward +
// backward 33.6-37.5 -> 30.2-31.8 ms at 64 x 64, 10.9-12.4 -> 9.5-10.1 ms at 32 x 32, two threads.
using ItemPrefetch = LinePrefetch<2>;

// Accumulator registers of a product tile: AVX-512 has 32 vector registers, SSE2 and AVX2 16 (one tile of R rows x
// NV vectors also holds NV vectors of B and a broadcast).
constexpr int kAcc = kVectorBytes == 64 ? 24 : 12;
// Scores of one chunk of query rows (elements): small enough to stay in L1 beside the rows it multiplies.
constexpr int kChunkScores = 4096;

template <class T>
int padded(int n) { return (n + kLanes<T> - 1) / kLanes<T> * kLanes<T>; }

// Rows m0 .. m0 + R - 1 of C[m][n0, n0 + NV W) (+)= alpha_m sum_k A(m, k) B[k][n0, ...), A(m, k) = a[m][k ak],
// alpha_m = alpha (times row_scale[m] when given): R x NV accumulators in registers, one broadcast of A per row and
// one load of B per vector and k.
template <class T, int R, int NV>
void tile(const T* const* a, int64_t ak, int K, const T* const* b, int n0, T alpha, const T* row_scale, T* const* c,
          bool acc) {
  constexpr int W = kLanes<T>;
  const T* ar[R];
  for (int r = 0; r < R; ++r) ar[r] = a[r];
  vec<T> s[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) s[r][j] = splat(T(0));
  int64_t kk = 0;
  for (int k = 0; k < K; ++k, kk += ak) {
    const T* bk = b[k] + n0;
    vec<T> bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = load(bk + j * W);
    for (int r = 0; r < R; ++r) {
      const vec<T> x = splat(ar[r][kk]);
      for (int j = 0; j < NV; ++j) s[r][j] += x * bv[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    const vec<T> al = splat(row_scale ? alpha * row_scale[r] : alpha);
    T* cr = c[r] + n0;
    for (int j = 0; j < NV; ++j) store(cr + j * W, acc ? load(cr + j * W) + s[r][j] * al : s[r][j] * al);
  }
}

// The last rows (fewer than R) of a column band, by the tile of exactly that many rows.
template <class T, int R, int NV>
void tile_rows(int rows, const T* const* a, int64_t ak, int K, const T* const* b, int n0, T alpha,
               const T* row_scale, T* const* c, bool acc) {
  if constexpr (R > 1) {
    if (rows < R) return tile_rows<T, R - 1, NV>(rows, a, ak, K, b, n0, alpha, row_scale, c, acc);
  }
  tile<T, R, NV>(a, ak, K, b, n0, alpha, row_scale, c, acc);
}

// Rows of a full tile of the widest band.
template <class T>
constexpr int kTileRows = kAcc / 2;

// One band of NV W columns over all M rows.
template <class T, int NV>
void band(const T* const* a, int64_t ak, int M, int K, const T* const* b, int n0, T alpha, const T* row_scale,
          T* const* c, bool acc, ItemPrefetch& pf) {
  constexpr int R = kAcc / NV;
  int m = 0;
  for (; m + R <= M; m += R) {
    tile<T, R, NV>(a + m, ak, K, b, n0, alpha, row_scale ? row_scale + m : nullptr, c + m, acc);
    pf();
  }
  if (m < M)
    tile_rows<T, R - 1, NV>(M - m, a + m, ak, K, b, n0, alpha, row_scale ? row_scale + m : nullptr, c + m, acc);
}

// C (M, N) (+)= alpha A (M, K) B (K, N), row m scaled by row_scale[m] when given: every product of the kernel. Row m
// of A at a[m] with column stride ak (1, or a score row stride to read A transposed); row k of B at b[k], row m of C
// at c[m], both unit-stride. pf: a few of the next item's lines after each full tile.
template <class T>
void product(const T* const* a, int64_t ak, int M, int K, const T* const* b, int N, T alpha, T* const* c, bool acc,
             ItemPrefetch& pf, const T* row_scale = nullptr) {
  constexpr int W = kLanes<T>;
  int n0 = 0;
  for (; n0 + 2 * W <= N; n0 += 2 * W) band<T, 2>(a, ak, M, K, b, n0, alpha, row_scale, c, acc, pf);
  for (; n0 + W <= N; n0 += W) band<T, 1>(a, ak, M, K, b, n0, alpha, row_scale, c, acc, pf);
  for (; n0 < N; ++n0) {  // head dims that are no multiple of the vector width
    for (int m = 0; m < M; ++m) {
      T sum = 0;
      for (int k = 0; k < K; ++k) sum += a[m][k * ak] * b[k][n0];
      const T al = row_scale ? alpha * row_scale[m] : alpha;
      c[m][n0] = acc ? c[m][n0] + al * sum : al * sum;
    }
  }
}

// dst (rows, D) contiguous = the rows src[r] (D,).
template <class T>
void gather(const T* const* src, int rows, int D, T* dst) {
  constexpr int W = kLanes<T>;
  for (int r = 0; r < rows; ++r, dst += D) {
    const T* s = src[r];
    int d = 0;
    for (; d + W <= D; d += W) store(dst + d, load(s + d));
    for (; d < D; ++d) dst[d] = s[d];
  }
}

// The rows dst[r] (D,) = src (rows, D) contiguous, or += when acc.
template <class T>
void scatter(const T* src, int rows, int D, T* const* dst, bool acc) {
  constexpr int W = kLanes<T>;
  for (int r = 0; r < rows; ++r, src += D) {
    T* o = dst[r];
    int d = 0;
    for (; d + W <= D; d += W) store(o + d, acc ? load(o + d) + load(src + d) : load(src + d));
    for (; d < D; ++d) o[d] = acc ? o[d] + src[d] : src[d];
  }
}

// The rows dst[r] (D,) = src (rows, D) contiguous, written once: rows of whole aligned vectors by streaming stores,
// which skip the read of every destination line that a plain store makes first (the output of HiT-256's 32 x 32
// stage is 8 MB, far past L2) and do not hold up the products behind stores to cold lines; other rows as scatter.
template <class T>
void stream_rows(const T* src, int rows, int D, T* const* dst) {
  constexpr int W = kLanes<T>;
  for (int r = 0; r < rows; ++r, src += D) {
    T* o = dst[r];
    if (D % W != 0 || reinterpret_cast<uintptr_t>(o) % kVectorBytes != 0) {
      scatter(src, 1, D, dst + r, false);
      continue;
    }
    for (int d = 0; d < D; d += W) stream(o + d, load(src + d));
  }
}

// dst (D, LP) = the n rows src[t] (D,) transposed, zero past n; 8 x 8 blocks in registers where AVX has them.
template <class T>
void transpose(const T* const* src, int n, int D, int LP, T* dst) {
  int t0 = 0;
#if defined(__AVX__)
  if constexpr (sizeof(T) == 4) {
    for (; t0 + 8 <= n; t0 += 8) {
      int d0 = 0;
      for (; d0 + 8 <= D; d0 += 8) {
        __m256 r[8], u[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src[t0 + i] + d0);
        for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved by element
          u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
          u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {  // quads of rows by pairs of elements
          r[i] = _mm256_shuffle_ps(u[i], u[i + 2], 0x44);
          r[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], 0xEE);
          r[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0x44);
          r[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0xEE);
        }
        for (int i = 0; i < 4; ++i) {  // the two 128-bit halves: columns i and i + 4
          _mm256_storeu_ps(dst + int64_t(d0 + i) * LP + t0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
          _mm256_storeu_ps(dst + int64_t(d0 + i + 4) * LP + t0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
        }
      }
      for (; d0 < D; ++d0)
        for (int i = 0; i < 8; ++i) dst[int64_t(d0) * LP + t0 + i] = src[t0 + i][d0];
    }
  }
#endif
  for (int t = t0; t < n; ++t)
    for (int d = 0; d < D; ++d) dst[int64_t(d) * LP + t] = src[t][d];
  for (int d = 0; d < D; ++d)
    for (int t = n; t < LP; ++t) dst[int64_t(d) * LP + t] = T(0);
}

// row (LP,) = 2^(row - sub) with the padding past n at 0; returns the sum. (Softmax in base 2: the scores come
// multiplied by log2 e.)
template <class T>
T exp2_row(T* row, int n, int LP, T sub) {
  constexpr int W = kLanes<T>;
  for (int j = n; j < LP; ++j) row[j] = -__builtin_inf();
  vec<T> sum = splat(T(0));
  for (int j = 0; j < LP; j += W) {
    const vec<T> p = exp2_vec(load(row + j) - sub);
    store(row + j, p);
    sum += p;
  }
  return hsum<T>(sum);
}

// row (LP,) of base-2 scores, n of them real -> the unnormalised softmax 2^(row - max) in place; returns its sum l
// and sets m to the max. Every query sees its own token: a finite maximum, l >= 1.
template <class T>
T softmax_row(T* row, int n, int LP, T& m) {
  constexpr int W = kLanes<T>;
  m = row[0];
  int j = 1;
  if (n == LP) {
    vec<T> mx = load(row);
    for (j = W; j < LP; j += W) mx = vmax<T>(mx, load(row + j));
    m = hmax<T>(mx);
  }
  for (; j < n; ++j) m = row[j] > m ? row[j] : m;
  return exp2_row(row, n, LP, m);
}

// Bump allocation of a thread's scratch, 64-byte aligned pieces; with a null base it only counts the bytes.
struct Carver {
  char* base;
  int64_t used = 0;
  template <class U>
  U* take(int64_t count) {
    used = (used + 63) / 64 * 64;
    U* p = base ? reinterpret_cast<U*>(base + used) : nullptr;
    used += count * int64_t(sizeof(U));
    return p;
  }
};

// One thread's scratch for the items of one axis. The operands that the products read more than once are gathered
// into contiguous rows (a dilated group's pixels lie a power-of-two stride apart: read in place, they would fight
// over a few cache sets); the outputs written once go straight to the image.
template <class T>
struct Work {
  int n, D, LP, rows, C;
  T *kt, *vt;            // K^T, V^T (D, LP)
  T *qg, *dog, *kg, *vg;  // gathered Q, dO (rows, D); K, V (n, D)
  T *dkg, *dvg;          // dK, dV (n, D) of the item
  T *s, *ds;             // scores and score gradients of a chunk (C, LP)
  T* og;                 // the forward's output rows of a chunk (C, D), before they stream to the image
  T *mx, *l;             // per row of a chunk (C rounded up to whole vectors): max of its base-2 scores, 1 / l
  const T **kr, **vr, **qr, **dor;  // image rows of K, V (n,); of Q, dO (rows,): row r = head r / n, token r % n
  T **outr, **lser;                 // image rows of out (or dq), lse (rows,) written by the forward
  T **dkr, **dvr;                   // image rows of dk, dv (n,)
  const T **qgr, **dogr, **kgr, **vgr, **ktr, **vtr;  // rows of qg, dog (rows,), kg, vg (n,), kt, vt (D,)
  T **sr, **dsr, **ogr, **dkgr, **dvgr;              // rows of s, ds, og (C,), dkg, dvg (n,)
  const T **pt, **dst;  // columns of s, ds (n,): P^T and dS^T with column stride LP
  int64_t bytes;

  Work(const MultiAxisItems& it, void* scratch) : n(it.n), D(it.D), LP(padded<T>(it.n)), rows(it.q_per_kv * it.n) {
    // Chunks of whole tiles of query rows whose scores stay in L1.
    const int R = kTileRows<T>, fit = kChunkScores / LP / R * R;
    C = fit > R ? fit : R;
    C = C < rows ? C : rows;
    Carver cv{static_cast<char*>(scratch)};
    const int64_t nD = int64_t(n) * D, rD = int64_t(rows) * D;
    kt = cv.take<T>(int64_t(D) * LP), vt = cv.take<T>(int64_t(D) * LP);
    qg = cv.take<T>(rD), dog = cv.take<T>(rD), kg = cv.take<T>(nD), vg = cv.take<T>(nD);
    dkg = cv.take<T>(nD), dvg = cv.take<T>(nD);
    s = cv.take<T>(int64_t(C) * LP), ds = cv.take<T>(int64_t(C) * LP), og = cv.take<T>(int64_t(C) * D);
    mx = cv.take<T>(padded<T>(C)), l = cv.take<T>(padded<T>(C));
    kr = cv.take<const T*>(n), vr = cv.take<const T*>(n), qr = cv.take<const T*>(rows);
    dor = cv.take<const T*>(rows), outr = cv.take<T*>(rows), lser = cv.take<T*>(rows);
    dkr = cv.take<T*>(n), dvr = cv.take<T*>(n);
    qgr = cv.take<const T*>(rows), dogr = cv.take<const T*>(rows), kgr = cv.take<const T*>(n);
    vgr = cv.take<const T*>(n), ktr = cv.take<const T*>(D), vtr = cv.take<const T*>(D);
    sr = cv.take<T*>(C), dsr = cv.take<T*>(C), ogr = cv.take<T*>(C), dkgr = cv.take<T*>(n), dvgr = cv.take<T*>(n);
    pt = cv.take<const T*>(n), dst = cv.take<const T*>(n);
    bytes = cv.used;
    if (!scratch) return;
    for (int r = 0; r < rows; ++r) qgr[r] = qg + int64_t(r) * D, dogr[r] = dog + int64_t(r) * D;
    for (int t = 0; t < n; ++t) {
      kgr[t] = kg + int64_t(t) * D, vgr[t] = vg + int64_t(t) * D;
      dkgr[t] = dkg + int64_t(t) * D, dvgr[t] = dvg + int64_t(t) * D;
      pt[t] = s + t, dst[t] = ds + t;
    }
    for (int d = 0; d < D; ++d) ktr[d] = kt + int64_t(d) * LP, vtr[d] = vt + int64_t(d) * LP;
    for (int i = 0; i < C; ++i) {
      sr[i] = s + int64_t(i) * LP, dsr[i] = ds + int64_t(i) * LP;
      ogr[i] = og + int64_t(i) * D;
    }
  }
};

// Item i's batch row, key head, first query head and group origin.
struct ItemPixels {
  int64_t b;
  int kv, h0, gy, gx;
};
inline ItemPixels item_pixels(const MultiAxisItems& it, int64_t i) {
  const int slot = int(i % it.kv_heads), g = int(i / it.kv_heads % it.groups);
  return {i / it.kv_heads / it.groups, it.kv0 + slot, it.q0 + slot * it.q_per_kv, it.group_y[g], it.group_x[g]};
}

// An operand whose rows an item touches: query-shaped (every query head of the item) or key-shaped (its key head),
// read or written.
template <class T>
struct Touch {
  const T* data;
  int64_t sb, sy, sx, sh;
  bool key, write;
};
template <class T, class U>
Touch<T> touch(MultiAxisImage<U> x, bool key, bool write) {
  return {x.data, x.sb, x.sy, x.sx, x.sh, key, write};
}

// Adds the rows item i touches to pf (when it.prefetch), for the cache to fetch while the item before it computes:
// the image is far bigger than the cache, and the rows of a group lie apart, where the hardware prefetchers do not
// follow; rows to be written are fetched for writing, so that the products' stores into the image do not wait for
// them. A query-shaped operand's rows: its heads, then the token grid's columns and rows; a key-shaped one's: the
// grid's.
template <class T, int N>
void prefetch_item(const MultiAxisItems& it, int64_t i, const Touch<T> (&ops)[N], ItemPrefetch& pf) {
  if (!it.prefetch) return;
  const ItemPixels p = item_pixels(it, i);
  const int step = it.token_step, rows = it.token_rows, cols = it.token_cols;
  for (const Touch<T>& o : ops) {
    const T* first = o.data + p.b * o.sb + p.gy * o.sy + p.gx * o.sx + (o.key ? p.kv : p.h0) * o.sh;
    if (o.key) pf.add(first, step * o.sx, cols, it.D, o.write, rows, step * o.sy);
    else pf.add(first, o.sh, it.q_per_kv, it.D, o.write, cols, step * o.sx, rows, step * o.sy);
  }
}

template <class T>
int64_t scratch_bytes(const MultiAxisItems& it) {
  return Work<T>(it, nullptr).bytes;
}

constexpr double kLog2e = 1.44269504088896340736, kLn2 = 0.69314718055994530942;

template <class T>
void forward(const MultiAxisItems& it, MultiAxisImage<const T> q, MultiAxisImage<const T> k,
             MultiAxisImage<const T> v, T scale, int64_t i0, int64_t i1, MultiAxisImage<T> out, MultiAxisImage<T> lse,
             void* scratch) {
  constexpr int W = kLanes<T>;
  Work<T> w(it, scratch);
  const int n = w.n, D = w.D, LP = w.LP;
  ItemPrefetch pf;
  for (int64_t i = i0; i < i1; ++i) {
    if (i + 1 < i1)  // out streams past the caches: not fetched
      prefetch_item<T>(it, i + 1, {touch<T>(q, false, false), touch<T>(k, true, false), touch<T>(v, true, false)},
                       pf);
    const ItemPixels p = item_pixels(it, i);
    for (int t = 0; t < n; ++t) {
      const int y = p.gy + it.token_y[t], x = p.gx + it.token_x[t];
      w.kr[t] = k.at(p.b, y, x, p.kv), w.vr[t] = v.at(p.b, y, x, p.kv);
      for (int j = 0; j < it.q_per_kv; ++j) {
        w.qr[j * n + t] = q.at(p.b, y, x, p.h0 + j);
        w.outr[j * n + t] = out.at(p.b, y, x, p.h0 + j), w.lser[j * n + t] = lse.at(p.b, y, x, p.h0 + j);
      }
    }
    transpose(w.kr, n, D, LP, w.kt);
    gather(w.vr, n, D, w.vg);
    // The scores of one band of keys read each query row once: in place; more bands read it again: gathered.
    const bool one_band = LP <= 2 * W;
    if (!one_band) gather(w.qr, w.rows, D, w.qg);
    for (int r0 = 0; r0 < w.rows; r0 += w.C) {
      const int rc = w.rows - r0 < w.C ? w.rows - r0 : w.C;
      const T* const* qa = (one_band ? w.qr : w.qgr) + r0;
      product<T>(qa, 1, rc, D, w.ktr, LP, T(scale * kLog2e), w.sr, false, pf);  // S = scale log2(e) Q K^T
      for (int r = 0; r < rc; ++r) w.l[r] = softmax_row(w.sr[r], n, LP, w.mx[r]);
      for (int r = 0; r < rc; r += W) {  // lse = m ln 2 + ln l; then l <- 1 / l
        const vec<T> l = load(w.l + r), lse = load(w.mx + r) * T(kLn2) + log_vec(l);
        store(w.l + r, T(1) / l);
        for (int j = 0; j < W && r + j < rc; ++j) *w.lser[r0 + r + j] = lse[j];
      }
      product<T>(w.sr, 1, rc, n, w.vgr, D, T(1), w.ogr, false, pf, w.l);  // O = P V / l
      stream_rows(w.og, rc, D, w.outr + r0);
    }
    pf.next();
  }
  stream_fence();
}

template <class T>
void backward(const MultiAxisItems& it, MultiAxisImage<const T> q, MultiAxisImage<const T> k,
              MultiAxisImage<const T> v, MultiAxisImage<const T> dout, T scale, int64_t i0, int64_t i1,
              MultiAxisImage<T> dq, MultiAxisImage<T> dk, MultiAxisImage<T> dv, bool accumulate_kv, void* scratch) {
  constexpr int W = kLanes<T>;
  Work<T> w(it, scratch);
  const int n = w.n, D = w.D, LP = w.LP;
  ItemPrefetch pf;
  for (int64_t i = i0; i < i1; ++i) {
    if (i + 1 < i1)
      prefetch_item<T>(it, i + 1, {touch<T>(q, false, false), touch<T>(k, true, false), touch<T>(v, true, false),
                                   touch<T>(dout, false, false), touch<T>(dq, false, true), touch<T>(dk, true, true),
                                   touch<T>(dv, true, true)}, pf);
    const ItemPixels p = item_pixels(it, i);
    for (int t = 0; t < n; ++t) {
      const int y = p.gy + it.token_y[t], x = p.gx + it.token_x[t];
      w.kr[t] = k.at(p.b, y, x, p.kv), w.vr[t] = v.at(p.b, y, x, p.kv);
      w.dkr[t] = dk.at(p.b, y, x, p.kv), w.dvr[t] = dv.at(p.b, y, x, p.kv);
      for (int j = 0; j < it.q_per_kv; ++j) {
        const int r = j * n + t, h = p.h0 + j;
        w.qr[r] = q.at(p.b, y, x, h), w.dor[r] = dout.at(p.b, y, x, h);
        w.outr[r] = dq.at(p.b, y, x, h);
      }
    }
    transpose(w.kr, n, D, LP, w.kt);
    transpose(w.vr, n, D, LP, w.vt);
    gather(w.qr, w.rows, D, w.qg);
    gather(w.dor, w.rows, D, w.dog);
    gather(w.kr, n, D, w.kg);
    for (int r0 = 0; r0 < w.rows; r0 += w.C) {
      const int rc = w.rows - r0 < w.C ? w.rows - r0 : w.C;
      product<T>(w.qgr + r0, 1, rc, D, w.ktr, LP, T(scale * kLog2e), w.sr, false, pf);  // S = scale log2(e) Q K^T
      product<T>(w.dogr + r0, 1, rc, D, w.vtr, LP, T(1), w.dsr, false, pf);             // dP = dO V^T
      for (int r = 0; r < rc; ++r) {
        // P as the forward makes it (the same scores, max and sum), not exp(S - lse): lse, a natural log of base-2
        // scores, rounds twice on the way back, ~2 ulps of |S| in P (a one-hot row's gradients went to 1e6 at
        // |S| ~ 1e6, inf past 1e19, where the reference's are 0); delta = rowsum(dO * out) = sum_j P dP;
        // dS = P (dP - delta)
        T *pr = w.sr[r], *dr = w.dsr[r], m;
        const vec<T> inv_l = splat(T(1) / softmax_row(pr, n, LP, m));
        vec<T> pdp = splat(T(0));
        for (int j = 0; j < LP; j += W) {
          const vec<T> pj = load(pr + j) * inv_l;
          store(pr + j, pj);
          pdp += pj * load(dr + j);
        }
        const vec<T> delta = splat(hsum<T>(pdp));
        for (int j = 0; j < LP; j += W) store(dr + j, load(pr + j) * (load(dr + j) - delta));
      }
      product<T>(w.pt, LP, n, rc, w.dogr + r0, D, T(1), w.dvgr, r0 > 0, pf);   // dV (+)= P^T dO
      product<T>(w.dst, LP, n, rc, w.qgr + r0, D, scale, w.dkgr, r0 > 0, pf);  // dK (+)= scale dS^T Q
      product<T>(w.dsr, 1, rc, n, w.kgr, D, scale, w.outr + r0, false, pf);    // dQ = scale dS K
    }
    pf.next();
    scatter(w.dkg, n, D, w.dkr, accumulate_kv);
    scatter(w.dvg, n, D, w.dvr, accumulate_kv);
  }
}

template <class T>
constexpr MultiAxisKernels<T> kernels() { return {scratch_bytes<T>, forward<T>, backward<T>}; }

}  // namespace

extern const MultiAxisIsa kMultiAxis = {kernels<float>(), kernels<double>()};

}  // namespace fastar::cpu::FASTAR_ISA
