"""Pure-PyTorch versions of every fastar op, with the ops' signatures: the oracle of the tests and the fallback."""
from fastar.reference import quantize

__all__ = ["quantize"]
