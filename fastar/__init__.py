"""fastar: hand-written CPU and CUDA kernels for autoregressive image generation, and the models that use them.

    import fastar
    fastar.backends()                      # {'cpu': True, 'cuda': False, 'simt': False}
    idx = fastar.ops.vq_nearest(x, codebook)
"""
from fastar._version import __version__
from fastar._backend import (backends, build_info, check_bf16_gemm, cpu_cache_all_tensors, cpu_cache_info,
                             cpu_cache_step, empty_cpu_cache, last_backend, set_cpu_cache_limit, use_backend)
from fastar import ops, reference

__all__ = ["__version__", "backends", "build_info", "check_bf16_gemm", "cpu_cache_all_tensors", "cpu_cache_info",
           "cpu_cache_step", "empty_cpu_cache", "last_backend", "set_cpu_cache_limit", "use_backend", "ops", "reference"]
