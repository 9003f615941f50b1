"""VAR's quantizer as the official code runs it (FoundationVision/VAR models/quant.py): per scale, area-down,
distances by addmm then argmin, embedding, bicubic-up, the Phi conv; in float32, since VAR runs its quantizer
with autocast off. fastar.reference.quantize is written as that loop, so these are its functions, which run
lower-precision tensors in float32 (float64 stays float64, as in fastar.ops)."""
import functools

import torch

from fastar.reference import quantize as reference

LOW = (torch.bfloat16, torch.float16)


def _float32(a):
    if isinstance(a, (list, tuple)):
        return type(a)(_float32(t) for t in a)
    return a.float() if isinstance(a, torch.Tensor) and a.dtype in LOW else a


def _in_float32(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return fn(*(_float32(a) for a in args), **kwargs)
    return run


vq_nearest = reference.vq_nearest  # computes distances in float32 itself: VAR's addmm + argmin
# these widen bfloat16 / float16 to float32 themselves (reference._wide; the inference step's to f_hat's dtype)
f_to_idxBl_or_fhat = reference.f_to_idxBl_or_fhat
idxBl_to_fhat = reference.idxBl_to_fhat
embed_to_fhat = reference.embed_to_fhat
idxBl_to_var_input = reference.idxBl_to_var_input
get_next_autoregressive_input = reference.get_next_autoregressive_input
msq_forward = _in_float32(reference.msq_forward)  # the gradient reaches a bfloat16 f through its float32 copy
