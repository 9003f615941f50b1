// Fused distance + argmin for vq_nearest (torch-free; compiled per ISA, see cpu/isa.h).
//
// score(q, k) = ||e_k||^2 - 2 x_q . e_k  (||x_q||^2 is the same for every k, added at the end)
// A micro-tile of MR queries x NR vectors of codes keeps MR*NR score vectors in registers through the
// D loop (one code-vector load per d and NR, one broadcast per query), then folds them into a per-lane
// running minimum. Each lane visits its codes in increasing order and replaces only on a strictly smaller
// score, so the lowest index wins ties, as torch.argmin. A NaN score never replaces: a row of x with a
// NaN keeps index 0 and gets distance NaN. No N x K buffer exists; extra memory is O(K D) for the pack.
#include <cstdint>
#include <cstring>

#include "cpu/isa_vec.h"
#include "cpu/vq_nearest_isa.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int LANES = kLanes<float>;
constexpr int MR = kVectorBytes == 64 ? 12 : 6;  // query rows per micro-tile: MR * NR accumulators in registers
constexpr int NR = 2;                            // code vectors per micro-tile

using vf = avec<float>;
using vi = avec<int32_t>;

inline vf splat(float v) { return vf{} + v; }
inline vi splat_i(int32_t v) { return vi{} + v; }
inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }  // p is 64-byte aligned

inline vi iota() {
  vi r;
  for (int l = 0; l < LANES; ++l) r[l] = l;
  return r;
}

void vq_pack(const float* codes, int64_t K, int64_t D, float* out_codes, float* out_norms) {
  const int64_t blocks = (K + LANES - 1) / LANES;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int l = 0; l < LANES; ++l) {
      const int64_t k = b * LANES + l;
      float norm = __builtin_inff();
      if (k < K) {
        norm = 0.f;
        for (int64_t d = 0; d < D; ++d) norm += codes[k * D + d] * codes[k * D + d];
      }
      out_norms[k] = norm;
      for (int64_t d = 0; d < D; ++d) out_codes[(b * D + d) * LANES + l] = k < K ? -2.f * codes[k * D + d] : 0.f;
    }
  }
}

// Folds NB score vectors (code blocks b..b+NB) of M queries into the running per-lane minimum.
template <int M, int NB>
inline void tile(const float* x, int64_t D, const float* codes, const float* norms, int64_t b, vf* best,
                 vi* arg) {
  vf acc[M][NB];
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
  for (int n = 0; n < NB; ++n) {
    const vi code = iota() + splat_i(static_cast<int32_t>((b + n) * LANES));
    for (int m = 0; m < M; ++m) {
      const vi lt = acc[m][n] < best[m];
      best[m] = lt ? acc[m][n] : best[m];
      arg[m] = lt ? code : arg[m];
    }
  }
}

template <int M>
void search_rows(const VqPacked& cb, const float* x, int64_t* idx, float* dist) {
  const int64_t D = cb.D, blocks = (cb.K + LANES - 1) / LANES;
  vf best[M];
  vi arg[M];
  for (int m = 0; m < M; ++m) best[m] = splat(__builtin_inff()), arg[m] = splat_i(0);
  int64_t b = 0;
  for (; b + NR <= blocks; b += NR) tile<M, NR>(x, D, cb.codes, cb.norms, b, best, arg);
  for (; b < blocks; ++b) tile<M, 1>(x, D, cb.codes, cb.norms, b, best, arg);
  for (int m = 0; m < M; ++m) {
    float v = best[m][0];
    int32_t a = arg[m][0];
    for (int l = 1; l < LANES; ++l)
      if (best[m][l] < v || (best[m][l] == v && arg[m][l] < a)) v = best[m][l], a = arg[m][l];
    float xn = 0.f;
    for (int64_t d = 0; d < D; ++d) xn += x[m * D + d] * x[m * D + d];
    idx[m] = a;
    dist[m] = xn + v;
  }
}

template <int M>
void search_tail(const VqPacked& cb, const VqRows& rows, int64_t r, int64_t n) {
  if constexpr (M > 1) {
    if (n < M) return search_tail<M - 1>(cb, rows, r, n);
  }
  search_rows<M>(cb, rows.x + r * cb.D, rows.idx + r, rows.dist + r);
}

void vq_search(const VqPacked& cb, const VqRows& rows, int64_t begin, int64_t end) {
  int64_t r = begin;
  for (; r + MR <= end; r += MR) search_rows<MR>(cb, rows.x + r * cb.D, rows.idx + r, rows.dist + r);
  if (r < end) search_tail<MR>(cb, rows, r, end - r);
}

}  // namespace

extern const VqNearestIsa kVqNearest = {LANES, vq_pack, vq_search};

}  // namespace fastar::cpu::FASTAR_ISA
