// The attention masks of fastar, as one predicate shared by the CPU kernel, the CUDA kernels and the
// simt emulator (no torch types). fastar/reference/attention.py builds the same masks densely.
//
// Queries are aligned bottom-right on the keys, as flash-attn: query q sits at key position
// p = q + Lk - Lq, so causal with Lq < Lk is the last Lq rows of the square causal mask.
//   kFull         every key
//   kCausal       k <= p
//   kBlockCausal  k < kv_end[q]: VAR, each token sees its own scale and every earlier one
//   kDalle*       text prefix causal; an image query sees every text key plus its pattern over the
//                 image grid (raster order, causal), OpenAI semantics (reference/hit-dalle.md):
//                 row: the previous `grid` image tokens and itself; column: the same column in every
//                 earlier row; conv: the conv_kernel x conv_kernel window centred on it, clamped at the
//                 borders, that precedes it in raster order.
// key_len (padded batches) hides keys k >= key_len[b] on top of any kind.
#pragma once
#include <cstdint>

#include "kernels/host_device.h"

namespace fastar::kernels {

enum MaskKind : int32_t { kFull = 0, kCausal = 1, kBlockCausal = 2, kDalleRow = 3, kDalleColumn = 4, kDalleConv = 5 };
constexpr int kMaskKinds = 6;
// The Python name of each MaskKind (fastar.ops.AttentionMask.kind), exported by the bindings' capabilities().
constexpr const char* kMaskKindNames[kMaskKinds] = {"full", "causal", "block_causal", "row", "column", "conv"};

struct MaskParams {      // everything a kernel needs to decide visible(q, k)
  int32_t kind;          // a MaskKind
  int32_t text_len;      // DALL-E: text prefix length
  int32_t grid;          // DALL-E: image grid side (32)
  int32_t conv_kernel;   // DALL-E conv: window side, odd (11)
  const int32_t* kv_end;   // (Lq,) block-causal: exclusive end of the keys query q sees; else nullptr
  const int32_t* key_len;  // (B,) valid keys per batch row, or nullptr for all Lk
};

// Whether query q of batch row b sees key k, for Lq queries and Lk keys.
FASTAR_HOST_DEVICE inline bool visible(const MaskParams& m, int b, int q, int k, int Lq, int Lk) {
  if (m.key_len != nullptr && k >= m.key_len[b]) return false;
  const int p = q + Lk - Lq;
  switch (m.kind) {
    case kFull: return true;
    case kCausal: return k <= p;
    case kBlockCausal: return k < m.kv_end[q];
    default: break;
  }
  if (k > p) return false;
  if (k < m.text_len || p < m.text_len) return true;  // text keys, and text queries (causal)
  const int i = p - m.text_len, j = k - m.text_len;   // raster indices on the grid, j <= i
  switch (m.kind) {
    case kDalleRow: return i - j <= m.grid;
    case kDalleColumn: return (i - j) % m.grid == 0;
    case kDalleConv: {
      const int half = m.conv_kernel / 2, dc = j % m.grid - i % m.grid;
      return i / m.grid - j / m.grid <= half && dc <= half && dc >= -half;
    }
    default: return false;
  }
}

// What a (query tile, key tile) pair holds: nothing visible (never read its keys), everything
// visible (no per-element mask), or a mix (mask every element).
enum TileKind : uint8_t { kTileSkip = 0, kTileFull = 1, kTilePartial = 2 };

// flags (ceil(Lq / tile_q), ceil(Lk / tile_k)) row-major <- the kind of every tile pair, key_len
// ignored (it varies per batch row: apply it with tile_with_key_len). Host side, once per mask.
inline void classify_tiles(MaskParams m, int Lq, int Lk, int tile_q, int tile_k, uint8_t* flags) {
  m.key_len = nullptr;
  const int n_q = (Lq + tile_q - 1) / tile_q, n_k = (Lk + tile_k - 1) / tile_k;
  for (int tq = 0; tq < n_q; ++tq) {
    for (int tk = 0; tk < n_k; ++tk) {
      bool any = false, all = true;
      for (int q = tq * tile_q; q < Lq && q < (tq + 1) * tile_q && (all || !any); ++q) {
        for (int k = tk * tile_k; k < Lk && k < (tk + 1) * tile_k; ++k) {
          const bool v = visible(m, 0, q, k, Lq, Lk);
          any |= v, all &= v;
        }
      }
      flags[tq * n_k + tk] = all ? kTileFull : any ? kTilePartial : kTileSkip;
    }
  }
}

// The kind the tile flags give key tile [k0, k0 + tile_k) under the full mask (key_len ignored), without the
// tile-flags kernel: decode runs the full mask at every step.
FASTAR_HOST_DEVICE inline uint8_t full_mask_tile(int k0, int tile_k, int Lk) {
  return k0 + tile_k <= Lk ? uint8_t(kTileFull) : uint8_t(kTilePartial);
}

// A tile's kind for batch row b once key_len hides keys [key_len[b], Lk): keys [k0, k1) of the tile.
FASTAR_HOST_DEVICE inline uint8_t tile_with_key_len(uint8_t kind, const MaskParams& m, int b, int k0, int k1) {
  if (m.key_len == nullptr || kind == kTileSkip) return kind;
  if (k0 >= m.key_len[b]) return kTileSkip;
  return k1 > m.key_len[b] ? uint8_t(kTilePartial) : kind;
}

}  // namespace fastar::kernels
