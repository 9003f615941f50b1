"""Pure-PyTorch versions of every fastar op, with the ops' signatures: the oracle of the tests and the fallback."""
from fastar.reference import attention, quantize, sampling

__all__ = ["attention", "quantize", "sampling"]
