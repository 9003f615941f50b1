"""mlp: [residual +] gelu(x w1^T + b1) w2^T + b2 (exact GELU), the MLP of a transformer block, on the CPU in one
kernel (csrc/cpu/mlp.cpp, mlp_isa.cpp) that keeps each block of rows' hidden activations in the core's cache instead
of writing them to memory and reading them back. It pays at the narrow widths of HiT's high-resolution stages (C 32
to 128, millions of pixels), where a library GEMM with K = C runs well below its peak and the 4C-wide hidden
activations are the bulk of the traffic; benchmarks/bench_mlp.py times it there. With softmax_group, a softmax over
groups of hidden units replaces the GELU: attention to a few keys with its projections folded in (HiT's
cross-attention to its 16 latents)."""
import math

import torch

from fastar.ops._checks import check_same_device, check_tensor
from fastar.ops._registry import cpu_inference_decline, kernel, op
from fastar.reference import mlp as reference
from fastar.torch import mlp as torch_impl

_DTYPES = (torch.float32, torch.float64)


@kernel("mlp")
def _mlp(x, w1, b1, w2, b2, residual, softmax_group=0):  # fake kernels, for torch.compile / opcheck
    return x.new_empty(x.shape[0], w2.shape[0])


@kernel("mlp.out")
def _mlp_out(x, w1, b1, w2, b2, residual, softmax_group=0, *, out):
    return None


@op(reference=reference.mlp, torch=torch_impl.mlp)
def mlp(x, w1, b1, w2, b2, residual=None, out=None, *, softmax_group=0):
    """F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2) [+ residual] for x (..., C), w1 (hidden, C), b1 (hidden,),
    w2 (C_out, hidden), b2 (C_out,), residual (..., C_out) or None, float32 (float64 on the reference and torch
    backends) -> (..., C_out); into out (..., C_out) when given, which may be residual itself (or x when C_out = C:
    each block of rows is read before it is written), and is returned. softmax_group g > 0 (a divisor of hidden):
    a softmax over each g consecutive hidden units instead of the GELU, i.e. heads of attention to g keys whose
    scores and outputs are folded into w1, b1 and w2 (HiT's cross-attention: fastar/models/hit/generator.py).

    The CPU kernel computes a block of rows (12 on AVX-512, 6 on AVX2) at a time: its hidden activations in register
    tiles of 2 vectors x the block's rows into a scratch of the block's rows x hidden floats (L1), the GELU (or the
    softmax groups) over that scratch, then the second product, bias and residual into the output rows. K is summed
    in partial sums of 64 (its float32 error is below torch's at HiT's widths: tests/test_mlp.py). The GELU is exact,
    by Numerical Recipes' erfc formula (relative error below 1.2e-7, none lost to cancellation in the negative tail),
    8 vectors in lockstep. It has no backward and no CUDA kernel (on a GPU cuBLASLt's GEMMs with a GELU epilogue are
    the path): under autograd, in float64 and off the CPU the op runs the torch formulation, with a one-time
    warning."""
    name = "mlp"
    check_tensor(name, "x", x, min_dim=1, dtypes=_DTYPES)
    C = x.shape[-1]
    for arg, t, dim in (("w1", w1, 2), ("b1", b1, 1), ("w2", w2, 2), ("b2", b2, 1)):
        check_tensor(name, arg, t, dim=dim, dtypes=(x.dtype,))
    if C < 1 or w1.shape[0] < 1 or w2.shape[0] < 1:
        raise ValueError(f"mlp: the widths must be at least 1, got C {C}, hidden {w1.shape[0]}, C_out {w2.shape[0]}")
    if w1.shape[1] != C:
        raise ValueError(f"mlp: w1 must be (hidden, {C}) for x of {C} columns, got {tuple(w1.shape)}")
    if tuple(b1.shape) != (w1.shape[0],):
        raise ValueError(f"mlp: b1 must be ({w1.shape[0]},), got {tuple(b1.shape)}")
    if w2.shape[1] != w1.shape[0]:
        raise ValueError(f"mlp: w2 must be (C_out, {w1.shape[0]}) for w1's {w1.shape[0]} rows, got {tuple(w2.shape)}")
    if tuple(b2.shape) != (w2.shape[0],):
        raise ValueError(f"mlp: b2 must be ({w2.shape[0]},), got {tuple(b2.shape)}")
    if not isinstance(softmax_group, int) or softmax_group < 0 or (softmax_group and w1.shape[0] % softmax_group):
        raise ValueError(f"mlp: softmax_group must be 0 (GELU) or divide the {w1.shape[0]} hidden units, got "
                         f"{softmax_group!r}")
    tensors = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2)
    if residual is not None:
        check_tensor(name, "residual", residual, dtypes=(x.dtype,))
        if tuple(residual.shape) != (*x.shape[:-1], w2.shape[0]):
            raise ValueError(f"mlp: residual must be {(*x.shape[:-1], w2.shape[0])}, got {tuple(residual.shape)}")
        tensors["residual"] = residual
    if out is not None:
        check_tensor(name, "out", out, dtypes=(x.dtype,))
        if tuple(out.shape) != (*x.shape[:-1], w2.shape[0]):
            raise ValueError(f"mlp: out must be {(*x.shape[:-1], w2.shape[0])}, got {tuple(out.shape)}")
        tensors["out"] = out
    check_same_device(name, **tensors)
    declined = cpu_inference_decline(name, x.device, x.dtype, [t for t in tensors.values() if t is not out],
                                     gpu_path="cuBLASLt's GEMMs with a GELU epilogue are a GPU's path",
                                     autograd_path="the torch ops")
    if declined:
        return x.device, declined

    def rows(t):  # (N, width) with unit column stride, a view where the layout allows
        t = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])  # -1 cannot be inferred for a width of 0
        return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()

    def run(ops):
        if x.numel() == 0:  # no rows: an empty view may keep any strides (is_contiguous() holds), which the
            return x.new_empty(*x.shape[:-1], w2.shape[0]) if out is None else out  # kernel's checks refuse
        args = (rows(x), w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(),
                None if residual is None else rows(residual), softmax_group)
        if out is None:
            return ops.mlp(*args).view(*x.shape[:-1], w2.shape[0])
        if not out.is_contiguous():  # written through a copy
            return out.copy_(ops.mlp(*args).view(out.shape))
        ops.mlp.out(*args, out=out.view(-1, w2.shape[0]))
        return out
    return x.device, run


@kernel("gelu_with_derivative")
def _gelu_with_derivative(x, approximate="none"):  # fake kernel
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device)


@op(reference=reference.gelu_with_derivative, torch=torch_impl.gelu_with_derivative)
def gelu_with_derivative(x, approximate="none"):
    """(F.gelu(x, approximate=approximate), its derivative gelu'(x)) for x float32 of any shape (float64 on the
    reference and torch backends; bfloat16 and float16 run the torch formulation), both contiguous, in one pass over
    x: the exact (erf) GELU by mlp's erfc formula (no cancellation in the negative tail, where the derivative is
    -|x| phi(x) (1 - 1 / x^2 ...)), or its tanh approximation with approximate="tanh" (from exp(-2 |u|), so neither
    tail overflows or cancels).

    For a GELU under autograd (fastar.models.layers.linear_gelu): the forward keeps d = gelu'(x) instead of x, and
    the backward is the product dy d, one pass over memory, where torch's gelu_backward computes the GELU's math
    again (HiT-128's MLP at 16384 x 512: 4.3 ms against 2.2 ms for a product, Zen 4, 2 threads). It has no backward
    itself and no CUDA kernel (on a GPU torch's gelu and gelu_backward run at memory speed): under autograd, in
    float64 and off the CPU it runs the torch formulation, with a one-time warning."""
    name = "gelu_with_derivative"
    check_tensor(name, "x", x, dtypes=(*_DTYPES, torch.bfloat16, torch.float16))
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu_with_derivative: approximate must be 'none' or 'tanh', got {approximate!r}")
    declined = cpu_inference_decline(name, x.device, x.dtype, [x],
                                     gpu_path="on a GPU torch's gelu and gelu_backward run at memory speed",
                                     autograd_path="the torch ops")
    if declined:
        return x.device, declined
    return x.device, lambda ops: ops.gelu_with_derivative(x, approximate)
