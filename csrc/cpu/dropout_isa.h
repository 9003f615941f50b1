// Dropout's mask and scale over blocks of Philox counters (torch-free; compiled per ISA, cpu/isa.h's table).
#pragma once
#include <cstdint>

namespace fastar::cpu {

struct DropoutIsa {
  // out[e] = x[e] * scale where element e is kept, else 0 (kernels/dropout/philox.h: word e % 4 of counter e / 4),
  // for the elements of counters [c0, c1) of x (n,): Philox run on a vector of counters at once, bit for bit the
  // scalar generator's words.
  void (*f32)(const float* x, float* out, int64_t n, int64_t c0, int64_t c1, uint64_t seed, uint32_t threshold,
              float scale);
};

}  // namespace fastar::cpu
