"""Pure-PyTorch versions of every fastar op, with the ops' signatures: the oracle of the tests and the fallback."""
from fastar.reference import attention, multi_axis, quantize, sampling

__all__ = ["attention", "multi_axis", "quantize", "sampling"]
