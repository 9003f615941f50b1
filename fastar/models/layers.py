"""Layers the five models share."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastar import _backend


def onednn_declines(x, weight, bias=None):
    """Why `linear` runs F.linear rather than oneDNN for these arguments, or None when oneDNN runs."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return f"not float32 on the CPU ({x.dtype}, {weight.dtype} on {x.device})"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return "autograd (a gradient is asked for: F.linear's backward)"
    if _backend.fp32_linear_library() != "onednn":
        return f"the float32 GEMM library here is {_backend.fp32_linear_library()} (F.linear)"
    if _backend.active(x.device) in _backend.PYTHON_BACKENDS:
        return f"the {_backend.active(x.device)} backend is active (the official formulation)"
    return None


def linear(x, weight, bias=None):
    """F.linear, whose float32 CPU inference runs on the library fastar._backend.fp32_linear_library() names:
    oneDNN (torch.ops.mkldnn._linear_pointwise) on CPUs not made by Intel, where MKL's sgemm takes its AVX2 path:
    on an AMD Zen 4 (AVX-512), 2 threads, oneDNN ran VAR-d16 sampling's layer shapes 1.25x faster in all. Under
    autograd, in other dtypes or devices, and on the torch and reference backends (the official formulation the
    benchmarks compare against) it is F.linear (onednn_declines says which)."""
    if onednn_declines(x, weight, bias) is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_gelu(x, weight, bias=None, approximate="none"):
    """F.gelu(F.linear(x, weight, bias), approximate=approximate) (an MLP's first layer): on linear's oneDNN path
    one GEMM with the GELU in its epilogue, no second pass over the hidden activations (VAR-d16's fc1 at 5440 x 1024
    -> 4096: 245 ms against 272 ms for the two, AMD Zen 4, 2 threads); elsewhere the two ops, as linear decides."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"linear_gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if onednn_declines(x, weight, bias) is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], approximate)
    return F.gelu(F.linear(x, weight, bias), approximate=approximate)


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state-dict keys) through `linear` above."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
