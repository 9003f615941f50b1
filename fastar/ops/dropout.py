"""dropout: the mask made from a Philox4x32-10 counter stream inside the kernel (csrc/cpu/dropout.cpp,
csrc/kernels/dropout/dropout.cu), one seed per call, never stored: the backward regenerates it."""
import torch

from fastar.ops._checks import FLOATS, check_tensor
from fastar.ops._registry import kernel, op
from fastar.reference import dropout as reference
from fastar.torch import dropout as torch_impl


def _setup_context(ctx, inputs, output):
    _, ctx.seed, ctx.p = inputs


def _backward(ops, ctx, grad):
    return ops.dropout(grad.contiguous(), ctx.seed, ctx.p), None, None


@kernel("dropout", backward=_backward, setup_context=_setup_context)
def _dropout(x, seed, p):  # fake kernel, for torch.compile / opcheck
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@op(reference=reference.dropout, torch=torch_impl.dropout)
def dropout(x, p=0.5, *, training=True, generator=None):
    """x (any shape) float32 / bfloat16 / float16 / float64 -> x with each element zeroed with probability p and the
    others scaled by 1 / (1 - p); x itself when not training or p = 0.

    The mask is Philox4x32-10's (fastar/reference/dropout.py) under a seed drawn from `generator`, a CPU
    torch.Generator (the global one when None, as torch.manual_seed sets it): one seed gives one mask on the CPU and
    on CUDA, with no device synchronisation for the draw. Differentiable: the backward is the same mask on the
    gradient. The torch backend runs nn.Dropout's F.dropout (the same distribution, torch's own draws)."""
    name = "dropout"
    check_tensor(name, "x", x, dtypes=(*FLOATS, torch.float64))
    if not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"{name}: p must be in [0, 1], got {p!r}")
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise ValueError(f"{name}: generator must be a CPU torch.Generator (the seed is drawn on the host), got "
                         f"{generator!r}")
    if not training or p == 0:
        return x.device, lambda ops: x
    return x.device, lambda ops: ops.dropout(x.contiguous(), reference.draw_seed(generator), float(p))
