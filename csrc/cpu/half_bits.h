// bfloat16 and float16 storage as their bits, for the torch-free kernels' signatures (at::BFloat16 and at::Half
// have the same layout): cpu/isa_math.h widens them to float32, exactly.
#pragma once
#include <cstdint>

namespace fastar::cpu {

struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

}  // namespace fastar::cpu
