"""fastar's public ops: argument checks, dtype policy, dispatch to torch.ops.fastar.* (see fastar._backend)."""
from fastar.ops import _fake  # noqa: F401  (fake kernels for torch.compile / opcheck)
from fastar.ops.quantize import vq_nearest

__all__ = ["vq_nearest"]
