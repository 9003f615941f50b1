// fastar._C: importing it registers torch.ops.fastar.*; its Python functions report what was built and what its
// kernels take.
#include <pybind11/pybind11.h>

#include "cpu/blas.h"
#include "cpu/huge_blocks.h"
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
    info["cpu_bf16"] = fastar::cpu::bf16_gemm_isa(fastar::cpu::blas::bf16_gemm_library());
    info["cpu_vendor"] = fastar::cpu::cpu_vendor();
    info["cpu_bf16_gemm"] = fastar::cpu::blas::bf16_gemm_library();
    info["cpu_fp32_gemm"] = fastar::cpu::blas::fp32_gemm_library();
    info["compiler"] = __VERSION__;
    return info;
  });
  m.def("cpu_cache_info", [] {
    const auto s = fastar::cpu::huge_block_stats();
    pybind11::dict info;
    info["blocks"] = s.cached_blocks;
    info["bytes"] = s.cached_bytes;
    info["limit_bytes"] = s.limit_bytes;
    info["hits"] = s.hits;
    info["misses"] = s.misses;
    info["live_bytes"] = s.live_bytes;
    info["peak_bytes"] = s.peak_bytes;
    return info;
  });
  m.def("empty_cpu_cache", &fastar::cpu::empty_huge_block_cache);
  m.def("set_cpu_cache_limit", &fastar::cpu::set_huge_block_limit);
  m.def("cpu_cache_all_tensors", &fastar::cpu::huge_blocks_for_all_tensors, pybind11::arg("on"),
        pybind11::arg("keep_peak") = false, pybind11::arg("keep_peak_min_bytes") = fastar::cpu::kKeepPeakMinBytes);
  m.def("capabilities", [] {
    return fastar::capabilities({{"cpu", fastar::kernels::kAttentionCpuMaxHeadDim},
                                 {"cuda", fastar::kernels::kAttentionCudaMaxHeadDim}});
  });
}
