"""fastar's public ops: argument checks, dtype policy, dispatch to torch.ops.fastar.* (see fastar._backend)."""
from fastar.ops import _fake  # noqa: F401  (fake kernels for torch.compile / opcheck)
from fastar.ops.attention import AttentionMask, attention, attention_decode
from fastar.ops.quantize import vq_nearest

__all__ = ["AttentionMask", "attention", "attention_decode", "vq_nearest"]
