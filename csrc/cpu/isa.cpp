#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace fastar::cpu {

// One Isa per instruction set, from the family tables its *_isa.cpp files define in namespace fastar::cpu::<isa>.
#define FASTAR_ISA_TABLE(isa)                        \
  namespace isa {                                    \
  extern const VqNearestIsa kVqNearest;              \
  extern const AttentionIsa kAttention;              \
  extern const SamplingIsa kSampling;                \
  extern const AttentionTinyIsa kAttentionTiny;      \
  extern const AttentionDecodeIsa kAttentionDecode;  \
  extern const DiffusionIsa kDiffusion;              \
  extern const MultiAxisIsa kMultiAxis;              \
  const Isa kIsa{#isa, &kVqNearest, &kAttention, &kSampling, &kAttentionTiny, &kAttentionDecode, \
                 &kDiffusion, &kMultiAxis};          \
  }
FASTAR_ISA_TABLE(base)
FASTAR_ISA_TABLE(avx2)
FASTAR_ISA_TABLE(avx512)
#undef FASTAR_ISA_TABLE

// The table of instruction set `name` if this CPU supports it, else nullptr (unknown names too).
const Isa* supported_isa(const char* name) {
  __builtin_cpu_init();
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  for (const Isa* cand : {&avx512::kIsa, &avx2::kIsa, &base::kIsa}) {
    if (std::strcmp(name, cand->name) != 0) continue;
    if ((cand == &avx512::kIsa && !has_avx512) || (cand == &avx2::kIsa && !has_avx2)) return nullptr;
    return cand;
  }
  return nullptr;
}

static const Isa& pick() {
  if (const char* want = std::getenv("FASTAR_CPU_ISA")) {
    if (const Isa* cand = supported_isa(want)) return *cand;
    for (const char* known : {"avx512", "avx2", "base"})
      if (std::strcmp(want, known) == 0)
        throw std::runtime_error(std::string("FASTAR_CPU_ISA=") + want + ": this CPU does not support it");
    throw std::runtime_error(std::string("FASTAR_CPU_ISA must be base, avx2 or avx512, got ") + want);
  }
  for (const char* name : {"avx512", "avx2"})
    if (const Isa* cand = supported_isa(name)) return *cand;
  return base::kIsa;
}

const Isa& isa() {
  static const Isa& chosen = pick();
  return chosen;
}

const char* bf16_gemm_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("amx-bf16")) return "amx-bf16";
  if (__builtin_cpu_supports("avx512bf16")) return "avx512-bf16";
  return "";
}

const char* cpu_vendor() {
  __builtin_cpu_init();
  return __builtin_cpu_is("intel") ? "intel" : __builtin_cpu_is("amd") ? "amd" : "other";
}

}  // namespace fastar::cpu
