// fastar._C: importing it registers torch.ops.fastar.*; its Python functions report what was built and what its
// kernels take.
#include <pybind11/pybind11.h>

#include "cpu/blas.h"
#include "cpu/isa.h"
#include "torch/capabilities.h"

#ifndef FASTAR_CUDA_ARCHS
#define FASTAR_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C, m) {
  m.def("build_info", [] {
    pybind11::dict info;
    info["version"] = FASTAR_VERSION;
#ifdef FASTAR_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = FASTAR_CUDA_ARCHS;
    info["cpu_isa"] = fastar::cpu::isa().name;
    info["cpu_isa_avx2_families"] = fastar::cpu::avx2_families();
    info["cpu_bf16"] = fastar::cpu::bf16_gemm_isa();
    info["cpu_vendor"] = fastar::cpu::cpu_vendor();
    info["cpu_bf16_gemm"] = fastar::cpu::blas::bf16_gemm_library();
    info["cpu_fp32_gemm"] = fastar::cpu::blas::fp32_gemm_library();
    info["compiler"] = __VERSION__;
    return info;
  });
  m.def("capabilities", [] {
    return fastar::capabilities({{"cpu", fastar::kernels::kAttentionCpuMaxHeadDim},
                                 {"cuda", fastar::kernels::kAttentionCudaMaxHeadDim}});
  });
}
