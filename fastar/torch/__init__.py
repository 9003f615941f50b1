"""The `torch` backend (fastar.use_backend("torch")): every fastar op as the best plain-PyTorch formulation a
user would otherwise write, i.e. what the official codebases run. It is the baseline of the benchmarks;
fastar.reference stays the float64 oracle of the tests. Same signatures as fastar.ops."""
from fastar.torch import attention, multi_axis, quantize, sampling

__all__ = ["attention", "multi_axis", "quantize", "sampling"]
