// Fused distance + argmin for vq_nearest (torch-free; compiled per ISA, see cpu/isa.h).
//
// score(q, k) = ||e_k||^2 - 2 x_q . e_k  (||x_q||^2 is the same for every k, added at the end)
// A micro-tile of MR queries x NR vectors of codes keeps MR*NR score vectors in registers through the
// D loop (one code-vector load per d and NR, one broadcast per query), then folds them into a per-lane
// minimum of the chunk (one min per score vector: at D = 8 the old compare + two blends per vector cost a
// third of the FMAs). After each chunk of CHUNK blocks, a strictly smaller chunk minimum replaces the
// lane's best and records the chunk; at the end each lane recomputes its chunk's scores (the same
// operations, so bit-identical) to find the first block that reached the minimum. Lanes visit codes in
// increasing order and replace only on a strictly smaller score, so the lowest index wins ties, as
// torch.argmin. A NaN score never replaces: a row of x with a NaN keeps index 0 and gets distance NaN.
// No N x K buffer exists; extra memory is O(K D) for the pack.
#include <cstdint>
#include <cstring>

#include "cpu/isa_vec.h"
#include "cpu/vq_nearest_isa.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int LANES = kLanes<float>;
// MR * NR score vectors + NR code vectors + one broadcast fit the register file (16 or 32); the MR chunk
// minima live in L1 (one folded load and a store per row and tile). At D = 8 on 16 registers, 4 x 3 (7 loads
// per 12 FMAs) measured faster than 6 x 2 (8 loads) on Zen 3; larger D keeps 6 x 2. A chunk of 8 NR blocks
// halves the argmin updates of 4 NR at D = 8; the final recompute stays one chunk per row.
template <int DC>
constexpr int MR = kVectorBytes == 64 ? 12 : DC == 8 ? 4 : 6;  // query rows per micro-tile
template <int DC>
constexpr int NR = kVectorBytes == 64 || DC != 8 ? 2 : 3;  // code vectors per micro-tile
template <int DC>
constexpr int CHUNK = 8 * NR<DC>;  // code blocks between two argmin updates (a slice holds whole chunks)

using vf = avec<float>;
using vi = avec<int32_t>;

inline vf splat(float v) { return vf{} + v; }
inline vi splat_i(int32_t v) { return vi{} + v; }
inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }  // p is 64-byte aligned
inline vf vmin(vf a, vf m) { return a < m ? a : m; }                         // a NaN keeps m

void vq_pack(const float* codes, int64_t K, int64_t D, const int32_t* order, int64_t positions, float* out_codes,
             float* out_norms) {
  const int64_t blocks = (positions + LANES - 1) / LANES;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int l = 0; l < LANES; ++l) {
      const int64_t p = b * LANES + l;
      const int64_t k = p >= positions ? -1 : order ? order[p] : p < K ? p : -1;
      float norm = __builtin_inff();
      if (k >= 0) {
        norm = 0.f;
        for (int64_t d = 0; d < D; ++d) norm += codes[k * D + d] * codes[k * D + d];
      }
      out_norms[p] = norm;
      for (int64_t d = 0; d < D; ++d) out_codes[(b * D + d) * LANES + l] = k >= 0 ? -2.f * codes[k * D + d] : 0.f;
    }
  }
}

// The score vectors acc[m][n] of M queries against code blocks b..b+NB: every search's one formula for a score (the
// sweep's tiles, its final recompute and the tree's leaves), so that each code's score is the same bits in all.
// DC: D known at compile time (0: D at run time), so the small-D loops unroll.
template <int M, int NB, int DC>
inline void scores(const float* x, int64_t D_run, const float* codes, const float* norms, int64_t b,
                   vf (&acc)[M][NB]) {
  const int64_t D = DC ? DC : D_run;
  for (int n = 0; n < NB; ++n)
    for (int m = 0; m < M; ++m) acc[m][n] = load(norms + (b + n) * LANES);
  const float* p = codes + b * D * LANES;
  for (int64_t d = 0; d < D; ++d) {
    vf e[NB];
    for (int n = 0; n < NB; ++n) e[n] = load(p + (n * D + d) * LANES);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const float xs = x[m * D + d];
      for (int n = 0; n < NB; ++n) acc[m][n] += xs * e[n];
    }
  }
}

// Folds NB score vectors (code blocks b..b+NB) of M queries into the chunk minima cmin.
template <int M, int NB, int DC>
inline void tile(const float* x, int64_t D_run, const float* codes, const float* norms, int64_t b, vf* cmin) {
  vf acc[M][NB];
  scores<M, NB, DC>(x, D_run, codes, norms, b, acc);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < NB; ++n) cmin[m] = vmin(acc[m][n], cmin[m]);
}

// The first code of lane `lane` in blocks [b, end) whose score equals `target` (tile<1, 1>'s operations).
template <int DC>
inline int64_t first_equal(const float* x, int64_t D, const float* codes, const float* norms, int64_t b,
                           int64_t end, int lane, float target) {
  for (; b < end; ++b) {
    vf s = splat(__builtin_inff());
    tile<1, 1, DC>(x, D, codes, norms, b, &s);
    if (s[lane] == target) return b * LANES + lane;
  }
  return -1;  // unreachable: the chunk's minimum came from one of its blocks
}

// Per-row search state across codebook slices: each lane's best score and the first block of the chunk
// that gave it.
struct Best {
  vf value;
  vi chunk;
};

// Sweeps code blocks [b0, b1) (chunk-aligned b0) for M rows, updating their state.
template <int M, int DC>
void sweep(const VqPacked& cb, const float* x, int64_t b0, int64_t b1, Best* st) {
  const int64_t D = DC ? DC : cb.D;
  vf best[M];
  vi where[M];
  for (int m = 0; m < M; ++m) best[m] = st[m].value, where[m] = st[m].chunk;
  for (int64_t c = b0; c < b1; c += CHUNK<DC>) {
    const int64_t end = c + CHUNK<DC> < b1 ? c + CHUNK<DC> : b1;
    vf cmin[M];
    for (int m = 0; m < M; ++m) cmin[m] = splat(__builtin_inff());
    int64_t b = c;
    for (; b + NR<DC> <= end; b += NR<DC>) tile<M, NR<DC>, DC>(x, D, cb.codes, cb.norms, b, cmin);
    for (; b < end; ++b) tile<M, 1, DC>(x, D, cb.codes, cb.norms, b, cmin);
    for (int m = 0; m < M; ++m) {
      const vi lt = cmin[m] < best[m];
      best[m] = lt ? cmin[m] : best[m];
      where[m] = lt ? splat_i(static_cast<int32_t>(c)) : where[m];
    }
  }
  for (int m = 0; m < M; ++m) st[m].value = best[m], st[m].chunk = where[m];
}

// A row's index and distance ||x||^2 + score; a row with an infinite or NaN ||x||^2 (an inf or NaN in x: its scores
// are inf - inf) gets index 0 and distance ||x||^2, as the reference's distances, all inf or NaN, give.
inline void answer(int64_t a, float xn, float score, int64_t* idx, float* dist) {
  const bool finite = xn <= __FLT_MAX__;
  *idx = finite ? a : 0;
  *dist = finite ? xn + score : xn;
}

// The answer of one row from its final state: the lowest code reaching the minimum over the lanes.
template <int DC>
void finish(const VqPacked& cb, const float* x, const Best& st, int64_t* idx, float* dist) {
  const int64_t D = DC ? DC : cb.D, blocks = (cb.K + LANES - 1) / LANES;
  float v = __builtin_inff();
  for (int l = 0; l < LANES; ++l) v = st.value[l] < v ? st.value[l] : v;
  int64_t a = 0;  // also the answer when no score is finite (a NaN row)
  if (v < __builtin_inff()) {
    a = cb.K;
    for (int l = 0; l < LANES; ++l) {  // only the lanes that reached the minimum (one, unless ties)
      if (st.value[l] != v) continue;
      const int64_t c = st.chunk[l], end = c + CHUNK<DC> < blocks ? c + CHUNK<DC> : blocks;
      const int64_t k = first_equal<DC>(x, D, cb.codes, cb.norms, c, end, l, v);
      a = k < a ? k : a;
    }
  }
  float xn = 0.f;
  for (int64_t d = 0; d < D; ++d) xn += x[d] * x[d];
  answer(a, xn, v, idx, dist);
}

// The last n < MR rows of a group: one micro-tile of n rows.
template <int M, int DC>
void sweep_tail(const VqPacked& cb, const float* x, int64_t n, int64_t b0, int64_t b1, Best* st) {
  if constexpr (M > 1) {
    if (n < M) return sweep_tail<M - 1, DC>(cb, x, n, b0, b1, st);
  }
  sweep<M, DC>(cb, x, b0, b1, st);
}

// Cache blocking: rows in groups of GROUP_TILES micro-tiles, the codebook in slices of whole chunks, about
// SLICE_BYTES of packed codes (L2-resident: a Zen 3 core's 512 KB L2 holds LlamaGen's whole 16384 x 8 codebook
// and nothing else), unless slice_codes asks for another size; each micro-tile of the group sweeps one slice
// before the next, so the codebook streams from L3 once per group instead of once per micro-tile. Each lane
// still meets its codes in increasing order, so results are bit for bit those of one sweep.
constexpr int64_t GROUP_TILES = 32;
constexpr int64_t SLICE_BYTES = 96 << 10;

template <int DC>
void search(const VqPacked& cb, const VqRows& rows, int64_t begin, int64_t end, int64_t slice_codes) {
  constexpr int M = MR<DC>, C = CHUNK<DC>;
  const int64_t D = DC ? DC : cb.D, blocks = (cb.K + LANES - 1) / LANES;
  const int64_t block_bytes = (D + 1) * LANES * int64_t(sizeof(float));
  const int64_t want = slice_codes > 0 ? (slice_codes + LANES - 1) / LANES : SLICE_BYTES / block_bytes;
  const int64_t slice = want > C ? (want + C - 1) / C * C : C;
  Best st[GROUP_TILES * M];
  for (int64_t g = begin; g < end; g += GROUP_TILES * M) {
    const int64_t n = end - g < GROUP_TILES * M ? end - g : GROUP_TILES * M;
    for (int64_t i = 0; i < n; ++i) st[i].value = splat(__builtin_inff()), st[i].chunk = splat_i(0);
    for (int64_t s = 0; s < blocks; s += slice) {
      const int64_t se = s + slice < blocks ? s + slice : blocks;
      int64_t i = 0;
      for (; i + M <= n; i += M) sweep<M, DC>(cb, rows.x + (g + i) * D, s, se, st + i);
      if (i < n) sweep_tail<M, DC>(cb, rows.x + (g + i) * D, n - i, s, se, st + i);
    }
    for (int64_t i = 0; i < n; ++i) finish<DC>(cb, rows.x + (g + i) * D, st[i], rows.idx + g + i, rows.dist + g + i);
  }
}

// Codebook widths of the tokenizers fastar serves (LlamaGen 8, VAR 32) unrolled; others at run time.
void vq_search(const VqPacked& cb, const VqRows& rows, int64_t begin, int64_t end, int64_t slice_codes) {
  switch (cb.D) {
    case 8: return search<8>(cb, rows, begin, end, slice_codes);
    case 16: return search<16>(cb, rows, begin, end, slice_codes);
    case 32: return search<32>(cb, rows, begin, end, slice_codes);
    default: return search<0>(cb, rows, begin, end, slice_codes);
  }
}

// ---- The k-d tree search (VqTree in vq_nearest_isa.h) ----

constexpr int TREE_NB = 8;  // code blocks per step in a leaf: independent FMA chains

// The scores of code blocks [b, b + NB) of one query into out.
template <int NB, int DC>
inline void block_scores(const float* x, int64_t D, const float* codes, const float* norms, int64_t b, vf* out) {
  vf acc[1][NB];
  scores<1, NB, DC>(x, D, codes, norms, b, acc);
  for (int n = 0; n < NB; ++n) out[n] = acc[0][n];
}

// One row. A skipped leaf's every code provably scores above the best so far: with u = 2^-24, a score, ||x||^2 and
// the box bound each err by at most (D + 3) u relative to (||x|| + ||e||)^2, ||x||^2 or the bound, and the test
// widens all three by (D + 4) 2^-20, 16x that. A row whose ||x||^2 or codebook radius is not finite visits every
// leaf (its bound test is never true): NaN scores never win, and no finite score gives index 0, as the sweep.
template <int DC>
void tree_row(const VqPacked& cb, const VqTree& t, const float* x, float* lbs, int32_t* near, vf* scores,
              int64_t* idx, float* dist) {
  const int64_t D = DC ? DC : cb.D, nb = t.leaf_blocks;
  float xn = 0.f;
  for (int64_t d = 0; d < D; ++d) xn += x[d] * x[d];
  for (int64_t j = 0; j < t.leaves; j += LANES) {  // squared distance from x to each leaf's box
    vf acc = splat(0.f);
    for (int64_t d = 0; d < D; ++d) {
      const vf xd = splat(x[d]);
      const vf a = load(t.lo + d * t.box_stride + j) - xd, b = xd - load(t.hi + d * t.box_stride + j);
      vf g = a > b ? a : b;
      g = g > splat(0.f) ? g : splat(0.f);
      acc += g * g;
    }
    *reinterpret_cast<vf*>(lbs + j) = acc;
  }
  float best = __builtin_inff();
  int64_t arg = 0;
  const auto visit = [&](int64_t j) {
    const int64_t b0 = j * nb;
    int64_t n = 0;
    for (; n + TREE_NB <= nb; n += TREE_NB) block_scores<TREE_NB, DC>(x, D, cb.codes, cb.norms, b0 + n, scores + n);
    for (; n < nb; ++n) block_scores<1, DC>(x, D, cb.codes, cb.norms, b0 + n, scores + n);
    vf m = splat(__builtin_inff());
    for (n = 0; n < nb; ++n) m = vmin(scores[n], m);
    float v = __builtin_inff();
    for (int l = 0; l < LANES; ++l) v = m[l] < v ? m[l] : v;
    if (!(v <= best) || !(v < __builtin_inff())) return;
    if (v < best) best = v, arg = INT64_MAX;
    for (n = 0; n < nb; ++n) {  // the lowest code index reaching v (padding scores +inf or NaN)
      const vi hit = scores[n] == v;
      for (int l = 0; l < LANES; ++l) {
        const int64_t k = t.order[(b0 + n) * LANES + l];
        if (hit[l] && k < arg) arg = k;
      }
    }
  };
  int64_t home = 0;
  for (int64_t j = 1; j < t.leaves; ++j) home = lbs[j] < lbs[home] ? j : home;
  visit(home);
  const float widen = float(D + 4) * (1.f / (1 << 20)), r = __builtin_sqrtf(xn) + t.radius;
  const float shrink = 1.f - widen, slack = widen * r * r;
  const auto beyond = [&](int64_t j) { return lbs[j] * shrink > best + xn + slack; };
  // The other leaves the bound lets in, in two passes: first those within a quarter of the home leaf's best squared
  // distance, which lower the best the most, then the rest against the lowered bound.
  int64_t count = 0;
  for (int64_t j = 0; j < t.leaves; ++j)
    if (j != home && !beyond(j)) near[count++] = int32_t(j);
  const float close = 0.25f * (best + xn);
  for (int64_t i = 0; i < count; ++i)
    if (lbs[near[i]] <= close) visit(near[i]), near[i] = -1;
  for (int64_t i = 0; i < count; ++i)
    if (near[i] >= 0 && !beyond(near[i])) visit(near[i]);
  answer(arg, xn, best, idx, dist);
}

template <int DC>
void search_tree(const VqPacked& cb, const VqTree& t, const VqRows& rows, int64_t begin, int64_t end) {
  const int64_t D = DC ? DC : cb.D;
  alignas(64) float lbs[kVqTreeMaxLeaves];
  int32_t near[kVqTreeMaxLeaves];
  vf* scores = new vf[t.leaf_blocks];
  for (int64_t i = begin; i < end; ++i)
    tree_row<DC>(cb, t, rows.x + i * D, lbs, near, scores, rows.idx + i, rows.dist + i);
  delete[] scores;
}

void vq_search_tree(const VqPacked& cb, const VqTree& t, const VqRows& rows, int64_t begin, int64_t end) {
  switch (cb.D) {
    case 8: return search_tree<8>(cb, t, rows, begin, end);  // the sweep's widths: the same instantiated scores
    case 16: return search_tree<16>(cb, t, rows, begin, end);
    case 32: return search_tree<32>(cb, t, rows, begin, end);
    default: return search_tree<0>(cb, t, rows, begin, end);
  }
}

}  // namespace

extern const VqNearestIsa kVqNearest = {LANES, vq_pack, vq_search, vq_search_tree};

}  // namespace fastar::cpu::FASTAR_ISA
