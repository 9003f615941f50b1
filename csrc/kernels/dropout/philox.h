// Philox4x32-10 (Salmon et al., SC'11): the counter-based generator behind dropout's masks, one function for the
// CPU kernel, the CUDA kernel and the simt emulator (fastar/reference/dropout.py writes it in torch int64 ops), so
// one seed gives one mask on every device. Torch-free.
#pragma once
#include <cstdint>

#include "kernels/host_device.h"

namespace fastar::kernels {

// The 4 words of counter (i, 0, 0, 0)... as (lo(i), hi(i), 0, 0) under key (lo(seed), hi(seed)): 10 rounds, the key
// bumped after each.
FASTAR_HOST_DEVICE inline void philox4x32(uint64_t counter, uint64_t seed, uint32_t out[4]) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c0 = n0, c1 = uint32_t(p1), c2 = n2, c3 = uint32_t(p0);
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// Dropout's integer threshold: element e is kept when (word >> 8) >= round(p 2^24), the word being word e % 4 of
// counter e / 4 (p = 0: all kept; p = 1: none).
FASTAR_HOST_DEVICE inline uint32_t dropout_threshold(double p) { return uint32_t(p * 16777216.0 + 0.5); }

// The factor of the kept elements: 1 / (1 - p), 0 when p = 1 (nothing is kept).
FASTAR_HOST_DEVICE inline double dropout_scale(double p) { return p < 1 ? 1.0 / (1.0 - p) : 0.0; }

}  // namespace fastar::kernels
