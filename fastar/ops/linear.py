"""linear for decoding: x (..., K) weight^T + bias with few rows (one token per sequence), where the cost is reading
the weight. Its kernels stream each weight row once per 4 rows of x (csrc/cpu/linear.cpp, csrc/kernels/linear/);
with many rows a GEMM library is faster (fastar.models.layers.linear routes by row count)."""
import torch

from fastar.ops._checks import check_same_device, check_tensor
from fastar.ops._registry import kernel, op
from fastar.reference import linear as reference
from fastar.torch import linear as torch_impl

DTYPES = (torch.float32, torch.float64)


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ops, ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    return (grad @ weight.to(grad.dtype) if need_x else None, (grad.t() @ x).to(weight.dtype) if need_w else None,
            grad.sum(0) if need_b and ctx.has_bias else None)


@kernel("linear", backward=_backward, setup_context=_setup_context)
def _linear(x, weight, bias):  # fake kernel, for torch.compile / opcheck
    return x.new_empty(x.shape[0], weight.shape[0])


@op(reference=reference.linear, torch=torch_impl.linear)
def linear(x, weight, bias=None):
    """x (..., K) float32 / float64, weight (N, K), bias (N,) or None, one dtype and device -> (..., N), as F.linear.
    The weight may be bfloat16 under a float32 x (and bias): widened to float32 exactly as it is read, so a decode step
    reads half the bytes; the result is F.linear(x, weight.float(), bias). Differentiable (the backward is two torch
    matrix products and a sum; d weight in the weight's dtype)."""
    name = "linear"  # a decode step calls this ~50 times per token: each shape and dtype is read once
    check_tensor(name, "x", x, min_dim=1, dtypes=DTYPES)
    check_tensor(name, "weight", weight, dim=2, dtypes=(*DTYPES, torch.bfloat16))
    xs, (N, K) = x.shape, weight.shape
    if xs[-1] != K:
        raise ValueError(f"{name}: x has {xs[-1]} features (its last dim), weight (N, K) takes {K}")
    xt, wt = x.dtype, weight.dtype
    if wt != xt and not (xt == torch.float32 and wt == torch.bfloat16):
        raise TypeError(f"{name}: weight is {wt}, x is {xt}: they must match, or float32 x with bfloat16 weights")
    if bias is not None:
        check_tensor(name, "bias", bias, dim=1, dtypes=(xt,))
        if bias.shape[0] != N:
            raise ValueError(f"{name}: bias must be ({N},), got {tuple(bias.shape)}")
        check_same_device(name, x=x, weight=weight, bias=bias)
        bias = bias.contiguous()
    else:
        check_same_device(name, x=x, weight=weight)

    def run(ops):
        if len(xs) == 2:
            return ops.linear.default(x.contiguous(), weight.contiguous(), bias)
        y = ops.linear.default(x.reshape(xs[:-1].numel(), K).contiguous(), weight.contiguous(), bias)
        return y.view(*xs[:-1], N)
    return x.device, run
