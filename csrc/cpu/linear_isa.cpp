// The CPU linear's row kernel: each weight row streamed once, dotted with up to 4 rows of x in vector registers
// (decode: the weights' bytes are the cost, so the loop is a plain forward stream the prefetchers follow).
#include "cpu/linear_isa.h"

#include "cpu/isa_math.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int L = kLanes<float>;

// The lanes' sum by halving (log2 L dependent adds, not L - 1 in a chain: at K 512 with two rows of x the chained
// sum of AVX-512's 16 lanes cost about as much as the row's products).
inline float hsum(vec<float> v) {
  float a[L];
  __builtin_memcpy(a, &v, sizeof(a));
  for (int w = L / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  return a[0];
}

// y[m, n + r] for the M rows of x and R weight rows from wr (= w + n K), U vectors of k per step: M x R x U
// independent FMA chains; each weight vector feeds M products and each x vector R. Every output sums its k in the
// same order whatever R, so the float32 and bfloat16 paths of bfloat16-exact weights agree bit for bit.
template <int M, int R, int U, class W>
inline void dot_rows(const float* x, int64_t ldx, const W* wr, int64_t K, const float* b, float* y, int64_t ldy,
                     int64_t n) {
  const int64_t Kv = K / (U * L) * (U * L);
  vec<float> acc[M][R][U] = {};
  for (int64_t k = 0; k < Kv; k += U * L) {
    vec<float> wv[R][U];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) wv[r][u] = load_widened(wr + r * K + k + u * L);
    for (int m = 0; m < M; ++m)
      for (int u = 0; u < U; ++u) {
        const vec<float> xv = load(x + m * ldx + k + u * L);
        for (int r = 0; r < R; ++r) acc[m][r][u] += xv * wv[r][u];
      }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      vec<float> a = acc[m][r][0];
      for (int u = 1; u < U; ++u) a += acc[m][r][u];
      float s = hsum(a);
      for (int64_t k = Kv; k < K; ++k) s += x[m * ldx + k] * widened(wr[r * K + k]);
      y[m * ldy + n + r] = b ? s + b[n + r] : s;
    }
}

// One weight row at a time, with U vectors of k per step (4 chains along k for one row of x, 2 for more), while the M
// rows of x stay in L1; past kL1Bytes two weight rows at a time, so that each x vector loaded serves both (4 rows,
// Zen 4: at K 2048, where x is 32 KB, 1.3x faster than one at a time; at K 512 about 1.4x slower).
constexpr int64_t kL1Bytes = 16 << 10;

template <int M, class W>
void rows_m(const float* x, int64_t ldx, const W* w, int64_t K, const float* b, float* y, int64_t ldy, int64_t n0,
            int64_t n1) {
  constexpr int U = M == 1 ? 4 : 2;
  int64_t n = n0;
  if (M > 1 && M * K * int64_t(sizeof(float)) > kL1Bytes) {
    for (; n + 2 <= n1; n += 2) dot_rows<M, 2, 1>(x, ldx, w + n * K, K, b, y, ldy, n);
    if (n < n1) dot_rows<M, 1, 1>(x, ldx, w + n * K, K, b, y, ldy, n);
    return;
  }
  for (; n < n1; ++n) dot_rows<M, 1, U>(x, ldx, w + n * K, K, b, y, ldy, n);
}

template <class W>
void rows(const float* x, int64_t ldx, int M, const W* w, int64_t K, const float* b, float* y, int64_t ldy,
          int64_t n0, int64_t n1) {
  switch (M) {
    case 1: return rows_m<1>(x, ldx, w, K, b, y, ldy, n0, n1);
    case 2: return rows_m<2>(x, ldx, w, K, b, y, ldy, n0, n1);
    case 3: return rows_m<3>(x, ldx, w, K, b, y, ldy, n0, n1);
    default: return rows_m<4>(x, ldx, w, K, b, y, ldy, n0, n1);
  }
}

}  // namespace

extern const LinearIsa kLinear{rows<float>, rows<Bf16>};

}  // namespace fastar::cpu::FASTAR_ISA
