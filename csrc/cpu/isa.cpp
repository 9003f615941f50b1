#include "cpu/isa.h"

#include <cpuid.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

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
  extern const LinearIsa kLinear;                    \
  extern const ConvIsa kConv;                        \
  extern const MlpIsa kMlp;                          \
  extern const DropoutIsa kDropout;                  \
  const Isa kIsa{#isa, &kVqNearest, &kAttention, &kSampling, &kAttentionTiny, &kAttentionDecode, \
                 &kDiffusion, &kMultiAxis, &kLinear, &kConv, &kMlp, &kDropout};  \
  }
FASTAR_ISA_TABLE(base)
FASTAR_ISA_TABLE(avx2)
FASTAR_ISA_TABLE(avx512)
#undef FASTAR_ISA_TABLE

// The table of instruction set `name` if this CPU supports it, else nullptr (unknown names too).
static const Isa* supported_isa(const char* name) {
  __builtin_cpu_init();
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c");  // every AVX2 CPU has F16C (the build's -mf16c)
  for (const Isa* cand : {&avx512::kIsa, &avx2::kIsa, &base::kIsa}) {
    if (std::strcmp(name, cand->name) != 0) continue;
    if ((cand == &avx512::kIsa && !has_avx512) || (cand == &avx2::kIsa && !has_avx2)) return nullptr;
    return cand;
  }
  return nullptr;
}

// AMD family 25 CPUs with AVX-512 (Zen 4) execute each 512-bit operation as two 256-bit halves. On one (EPYC, model
// 17), 1 thread, pinned, min of two passes of the kernel benchmarks, these families' AVX2 kernels were faster than
// their AVX-512 ones, so they run there: vq_nearest 4-11% (LlamaGen D = 8, VAR D = 32, the quantizer's encode),
// attention_decode 14-34% on DALL-E's masked decode (VAR's prefix decode within 3.5% over its ten scales),
// attention_tiny 5-19% (FractalGen), multi_axis 1-11% (HiT). The attention tiles (AVX-512 2-3% faster), sampling
// (equal) and diffusion's row passes (GEMM-bound) keep AVX-512.
static bool avx512_on_256_bit_datapaths() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  unsigned family = (eax >> 8) & 0xf;
  if (family == 0xf) family += (eax >> 20) & 0xff;
  return std::strcmp(cpu_vendor(), "amd") == 0 && family == 0x19;
}

static const char* const kZen4Avx2Families = "vq_nearest,attention_decode,attention_tiny,multi_axis";

static const Isa& zen4() {
  // in the order of Isa's fields: name, vq_nearest, attention, sampling, attention_tiny, attention_decode,
  // diffusion, multi_axis, linear, conv, mlp, dropout
  static const Isa table{avx512::kIsa.name,      avx2::kIsa.vq_nearest,     avx512::kIsa.attention,
                         avx512::kIsa.sampling,  avx2::kIsa.attention_tiny, avx2::kIsa.attention_decode,
                         avx512::kIsa.diffusion, avx2::kIsa.multi_axis,     avx512::kIsa.linear,
                         avx512::kIsa.conv,      avx512::kIsa.mlp,          avx512::kIsa.dropout};
  return table;
}

static const Isa& pick() {
  if (const char* want = std::getenv("FASTAR_CPU_ISA")) {
    if (const Isa* cand = supported_isa(want)) return *cand;
    for (const char* known : {"avx512", "avx2", "base"})
      if (std::strcmp(want, known) == 0)
        throw std::runtime_error(std::string("FASTAR_CPU_ISA=") + want + ": this CPU does not support it");
    throw std::runtime_error(std::string("FASTAR_CPU_ISA must be base, avx2 or avx512, got ") + want);
  }
  if (supported_isa("avx512")) return avx512_on_256_bit_datapaths() ? zen4() : avx512::kIsa;
  if (supported_isa("avx2")) return avx2::kIsa;
  return base::kIsa;
}

const Isa& isa() {
  static const Isa& chosen = pick();
  return chosen;
}

const char* avx2_families() { return &isa() == &zen4() ? kZen4Avx2Families : ""; }

const char* bf16_gemm_isa(const char* library) {
  __builtin_cpu_init();
  bool amx = __builtin_cpu_supports("amx-bf16"), avx512 = __builtin_cpu_supports("avx512bf16");
  // the library's cap, as its documentation names the levels: below these, its bf16 products are emulated
  const bool onednn = std::strcmp(library, "onednn") == 0;
  const char* cap = std::getenv(onednn ? "ONEDNN_MAX_CPU_ISA" : "MKL_ENABLE_INSTRUCTIONS");
  if (onednn && cap == nullptr) cap = std::getenv("DNNL_MAX_CPU_ISA");
  if (cap != nullptr) {
    std::string c(cap);
    for (char& ch : c) ch = char(std::toupper(static_cast<unsigned char>(ch)));
    const bool all = c.empty() || c == "ALL" || c == "DEFAULT";
    using Names = std::vector<std::string>;
    const Names no_bf16 = onednn ? Names{"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                         "AVX512_CORE_VNNI"}
                                 : Names{"SSE4_2", "AVX", "AVX2", "AVX2_E1", "AVX512", "AVX512_E1", "AVX512_E2"};
    amx = amx && (all || c.find(onednn ? "AMX" : "AVX512_E4") != std::string::npos);
    avx512 = avx512 && std::find(no_bf16.begin(), no_bf16.end(), c) == no_bf16.end();
  }
  if (amx) return "amx-bf16";
  if (avx512) return "avx512-bf16";
  return "";
}

const char* cpu_vendor() {
  __builtin_cpu_init();
  return __builtin_cpu_is("intel") ? "intel" : __builtin_cpu_is("amd") ? "amd" : "other";
}

}  // namespace fastar::cpu
