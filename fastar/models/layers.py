"""Layers the five models share."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastar import _backend


def linear(x, weight, bias=None):
    """F.linear, whose float32 CPU inference runs on the library fastar._backend.fp32_linear_library() names:
    oneDNN (torch.ops.mkldnn._linear_pointwise) on CPUs not made by Intel, where MKL's sgemm takes its AVX2 path:
    on an AMD Zen 4 (AVX-512), 1 thread, oneDNN ran d16's layers 1.2-1.8x faster and VAR-d16 sampling 1.13x. Under
    autograd, in other dtypes or devices, and on the torch and reference backends (the official formulation the
    benchmarks compare against) it is F.linear."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and _backend.fp32_linear_library() == "onednn"
            and _backend.active(x.device) not in _backend.PYTHON_BACKENDS):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state-dict keys) through `linear` above."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)
