// The CPU linear's row kernel: each weight row streamed once, dotted with up to 4 rows of x in vector registers
// (decode: the weights' bytes are the cost, so the loop is a plain forward stream the prefetchers follow).
#include "cpu/linear_isa.h"

#include "cpu/isa_vec.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

constexpr int L = kLanes<float>;

inline float hsum(vec<float> v) {
  float s = 0.f;
  for (int i = 0; i < L; ++i) s += v[i];
  return s;
}

inline vec<float> load(const float* p) { return *reinterpret_cast<const vec<float>*>(p); }

// L bfloat16 values -> float32: the bits shifted into the high half (exact).
typedef uint16_t bf16_lanes __attribute__((vector_size(kVectorBytes / 2), aligned(2)));
inline vec<float> load(const uint16_t* p) {
  const vec<uint32_t> wide = __builtin_convertvector(*reinterpret_cast<const bf16_lanes*>(p), vec<uint32_t>) << 16;
  return reinterpret_cast<const vec<float>&>(wide);
}

inline float widen(float v) { return v; }
inline float widen(uint16_t v) {
  const uint32_t bits = uint32_t(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// U vectors of k per step and accumulator set: M x U independent FMA chains (4 for one row, 8 for 4 rows).
template <int M, class W, int U = (M == 1 ? 4 : 2)>
void rows_m(const float* x, int64_t ldx, const W* w, int64_t K, const float* b, float* y, int64_t ldy,
            int64_t n0, int64_t n1) {
  const int64_t Kv = K / (U * L) * (U * L);
  for (int64_t n = n0; n < n1; ++n) {
    const W* wr = w + n * K;
    vec<float> acc[M][U] = {};
    for (int64_t k = 0; k < Kv; k += U * L) {
      vec<float> wv[U];
      for (int u = 0; u < U; ++u) wv[u] = load(wr + k + u * L);
      for (int m = 0; m < M; ++m)
        for (int u = 0; u < U; ++u) acc[m][u] += load(x + m * ldx + k + u * L) * wv[u];
    }
    for (int m = 0; m < M; ++m) {
      vec<float> a = acc[m][0];
      for (int u = 1; u < U; ++u) a += acc[m][u];
      float s = hsum(a);
      for (int64_t k = Kv; k < K; ++k) s += x[m * ldx + k] * widen(wr[k]);
      y[m * ldy + n] = b ? s + b[n] : s;
    }
  }
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

extern const LinearIsa kLinear{rows<float>, rows<uint16_t>};

}  // namespace fastar::cpu::FASTAR_ISA
