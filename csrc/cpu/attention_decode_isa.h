// The fused CPU attention of decode (VAR's scales against the KV cache, one token against a prefix): query blocks
// of a few vectors of lanes, one query per lane, scores, online softmax and the product with V in one pass over the
// keys, no BLAS call and no score row per query. Torch-free; compiled per ISA (cpu/isa.h's table);
// cpu/attention.cpp routes here when every query sees a key prefix and the blocks alone give every thread work; and a
// few queries under a DALL-E mask, or too few to fill a block's lanes, one query against its spans of keys at a time.
#pragma once
#include <cstdint>

#include "cpu/attention_tiny_isa.h"
#include "cpu/half_bits.h"
#include "kernels/attention/mask.h"

namespace fastar::cpu {

constexpr int kDecodeMaxDim = 256;  // head dim: the transposed queries and the accumulators fit the scratch

struct DecodeDims {
  int64_t B, H, Hk;  // batch, query heads, key heads (H % Hk == 0)
  int Lq, Lk, D;     // queries (the last Lq of the Lk keys), keys, head dim <= kDecodeMaxDim
  int rows;          // the first `rows` queries of each head go block by block (forward); the rest are not touched
};

// Keys k0, k0 + stride, ..., n of them: what a DALL-E query sees is a few spans (its text, row window, column or conv
// window rows), read in place from the cache.
struct Span {
  int k0, n, stride;
};

// Whether every query of a mask kind sees a prefix of the keys (full, causal, block-causal; key_len on top).
inline bool decode_prefix_mask(int32_t kind) {
  return kind == kernels::kFull || kind == kernels::kCausal || kind == kernels::kBlockCausal;
}

// The keys [0, n) query r of Lq (the last Lq of Lk keys) of batch row b sees under a prefix mask (mask.h's
// visible() as a count).
inline int prefix_keys(const kernels::MaskParams& m, int b, int r, int Lq, int Lk) {
  int n = m.kind == kernels::kCausal ? r + Lk - Lq + 1 : m.kind == kernels::kBlockCausal ? m.kv_end[r] : Lk;
  if (m.key_len != nullptr && m.key_len[b] < n) n = m.key_len[b];
  return n < 0 ? 0 : n > Lk ? Lk : n;
}

template <class T>
struct AttentionDecodeKernels {
  int block;  // queries per block (vectors of T: three on SSE2 and AVX2, two on AVX-512)
  // Items [item0, item1) of (B, H, ceil(Lq / block)), query block fastest: out (B, H, Lq, D) and lse (B, H, Lq)
  // contiguous (-inf, out 0 where a query sees no key). The mask is a decode_prefix_mask kind.
  void (*forward)(TinyHeads<T> q, TinyHeads<T> k, TinyHeads<T> v, const DecodeDims& d,
                  const kernels::MaskParams& mask, T scale, int64_t item0, int64_t item1, T* out, T* lse);
  // One query q (D) against the keys of spans[0, count) (rows of K ldk apart, of V ldv apart): out (D), *lse (-inf,
  // out 0 when the spans hold no key). scores: scratch for the spans' keys rounded up to a multiple of `block`.
  void (*spans)(const T* q, const Span* spans, int count, const T* K, int64_t ldk, const T* V, int64_t ldv, int D,
                T scale, T* out, T* lse, T* scores);
};

// AttentionDecodeKernels::spans of float32 queries against caches of storage S (bfloat16 or float16: their bits),
// read in place and widened to float32 as they are loaded: half the bytes of a float32 cache.
template <class S>
using SpansOf = void (*)(const float* q, const Span* spans, int count, const S* K, int64_t ldk, const S* V,
                         int64_t ldv, int D, float scale, float* out, float* lse, float* scores);

struct AttentionDecodeIsa {
  AttentionDecodeKernels<float> f32;
  AttentionDecodeKernels<double> f64;  // float64 inputs (gradcheck); exact exp
  SpansOf<Bf16> bf16_spans;
  SpansOf<F16> f16_spans;
};

}  // namespace fastar::cpu
