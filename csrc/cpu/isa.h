// The one registry of CPU kernels compiled once per instruction set (base: SSE2, avx2: AVX2+FMA, avx512:
// AVX-512F) and the table of the best one this CPU runs. Each kernel family declares its table type in its
// cpu/<family>_isa.h and defines one table per ISA in cpu/<family>_isa.cpp (torch-free: see CMakeLists.txt);
// a new family adds one field here and one line to cpu/isa.cpp.
#pragma once
#include "cpu/attention_decode_isa.h"
#include "cpu/attention_isa.h"
#include "cpu/attention_tiny_isa.h"
#include "cpu/conv_isa.h"
#include "cpu/diffusion_isa.h"
#include "cpu/dropout_isa.h"
#include "cpu/linear_isa.h"
#include "cpu/mlp_isa.h"
#include "cpu/multi_axis_isa.h"
#include "cpu/sampling_isa.h"
#include "cpu/vq_nearest_isa.h"

namespace fastar::cpu {

struct Isa {
  const char* name;  // base, avx2 or avx512: fastar.build_info()["cpu_isa"]
  // One table per kernel family, compiled for this ISA.
  const VqNearestIsa* vq_nearest;
  const AttentionIsa* attention;
  const SamplingIsa* sampling;
  const AttentionTinyIsa* attention_tiny;
  const AttentionDecodeIsa* attention_decode;
  const DiffusionIsa* diffusion;
  const MultiAxisIsa* multi_axis;
  const LinearIsa* linear;
  const ConvIsa* conv;
  const MlpIsa* mlp;
  const DropoutIsa* dropout;
};

// The best instruction set this CPU supports; on AMD Zen 4 (AVX-512 on 256-bit datapaths) with the AVX2 kernels of
// the families that measured faster on them (avx2_families; name still "avx512"). FASTAR_CPU_ISA=base|avx2|avx512
// picks one instruction set for every family (tests run each).
const Isa& isa();

// The families isa() runs on their AVX2 kernels although it is "avx512", comma-separated ("" elsewhere):
// fastar.build_info()["cpu_isa_avx2_families"].
const char* avx2_families();

// The bfloat16 matrix-product instructions the bf16 GEMMs of `library` ("onednn" or "mkl") run here, best first:
// "amx-bf16", "avx512-bf16", or "" when there are none (bf16 products then run emulated, slower than float32): the
// CPU's, within the library's own cap (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS; e.g. AVX2 leaves none):
// fastar.build_info()["cpu_bf16"].
const char* bf16_gemm_isa(const char* library);

// "intel", "amd" or "other" (cpuid's vendor): which GEMM library runs fastest here (blas::bf16_gemm_library,
// fastar._backend.fp32_linear_library): MKL takes its AVX2 / bf16-less paths on CPUs not made by Intel.
// fastar.build_info()["cpu_vendor"].
const char* cpu_vendor();

}  // namespace fastar::cpu
