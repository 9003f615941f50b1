// Dropout on vectors of Philox counters (see cpu/dropout_isa.h): the ten rounds on kBlock counters at once, each
// 32 x 32 -> 64-bit product a vector multiply (pmuludq) of counters held in 64-bit lanes, where the scalar generator
// spent ~10 ns per counter.
#include "cpu/dropout_isa.h"

#include <immintrin.h>

#include "cpu/isa_vec.h"
#include "kernels/dropout/philox.h"

namespace fastar::cpu::FASTAR_ISA {
namespace {

using u64 = avec<uint64_t>;  // 32-bit values in 64-bit lanes
constexpr int kLanes64 = kLanes<uint64_t>;
constexpr int kVecs = 16 / kLanes64;  // vectors per block
constexpr int kBlock = 16;           // counters per block: 64 elements

// The low 32 bits of a times those of b, as 64-bit products (pmuludq).
inline u64 mul32(u64 a, u64 b) {
#if defined(__AVX512F__)
  return u64(_mm512_mul_epu32(__m512i(a), __m512i(b)));
#elif defined(__AVX2__)
  return u64(_mm256_mul_epu32(__m256i(a), __m256i(b)));
#else
  return u64(_mm_mul_epu32(__m128i(a), __m128i(b)));
#endif
}

// The 4 words of counters c .. c + kBlock - 1 (kernels::philox4x32), word j of counter c + l at w[4 l + j].
inline void philox_block(uint64_t c, uint64_t seed, uint32_t* __restrict__ w) {
  const u64 m0 = u64{} + 0xD2511F53u, m1 = u64{} + 0xCD9E8D57u, low = u64{} + 0xFFFFFFFFu;
  u64 a0[kVecs], a1[kVecs], a2[kVecs], a3[kVecs];
  for (int v = 0; v < kVecs; ++v) {
    u64 i;
    for (int l = 0; l < kLanes64; ++l) i[l] = c + uint64_t(v * kLanes64 + l);
    a0[v] = i & low, a1[v] = i >> 32, a2[v] = a3[v] = u64{};
  }
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const u64 key0 = u64{} + k0, key1 = u64{} + k1;
    for (int v = 0; v < kVecs; ++v) {
      const u64 p0 = mul32(a0[v], m0), p1 = mul32(a2[v], m1);
      const u64 n0 = (p1 >> 32) ^ a1[v] ^ key0, n2 = (p0 >> 32) ^ a3[v] ^ key1;
      a0[v] = n0, a1[v] = p1 & low, a2[v] = n2, a3[v] = p0 & low;
    }
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
  for (int v = 0; v < kVecs; ++v)
    for (int l = 0; l < kLanes64; ++l) {
      uint32_t* o = w + 4 * (v * kLanes64 + l);
      o[0] = uint32_t(a0[v][l]), o[1] = uint32_t(a1[v][l]), o[2] = uint32_t(a2[v][l]), o[3] = uint32_t(a3[v][l]);
    }
}

void f32(const float* x, float* out, int64_t n, int64_t c0, int64_t c1, uint64_t seed, uint32_t threshold,
         float scale) {
  int64_t c = c0;
  alignas(64) uint32_t w[4 * kBlock];
  for (; c + kBlock <= c1 && 4 * (c + kBlock) <= n; c += kBlock) {
    philox_block(uint64_t(c), seed, w);
    const float* xb = x + 4 * c;
    float* ob = out + 4 * c;
    for (int e = 0; e < 4 * kBlock; ++e) ob[e] = xb[e] * ((w[e] >> 8) >= threshold ? scale : 0.f);
  }
  for (; c < c1; ++c) {  // the tail: the scalar generator
    uint32_t t[4];
    kernels::philox4x32(uint64_t(c), seed, t);
    for (int j = 0; j < 4 && 4 * c + j < n; ++j)
      out[4 * c + j] = x[4 * c + j] * ((t[j] >> 8) >= threshold ? scale : 0.f);
  }
}

}  // namespace

extern const DropoutIsa kDropout = {f32};

}  // namespace fastar::cpu::FASTAR_ISA
