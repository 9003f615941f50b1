"""linear for decoding: x (..., K) weight^T + bias with few rows (one token per sequence), where the cost is reading
the weight. Its kernels stream each weight row once per 4 rows of x (csrc/cpu/linear.cpp, csrc/kernels/linear/);
with many rows a GEMM library is faster (fastar.models.layers.linear routes by row count)."""
import math

import torch

from fastar.ops._checks import check_same_device, check_tensor
from fastar.ops._registry import cpu_inference_decline, kernel, op
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


@kernel("linear_weight_grad")
def _linear_weight_grad(grad, x):  # fake kernel
    return x.new_empty(grad.shape[1], x.shape[1])


@op(reference=reference.linear_weight_grad, torch=torch_impl.linear_weight_grad)
def linear_weight_grad(grad, x):
    """grad (..., N), x (..., K) -> grad^T x (N, K) over all leading dims: the weight gradient of a Linear layer whose
    input was x and whose output's gradient is grad, float32 (float64 on the reference and torch backends).

    On the CPU the product runs on the float32 GEMM library of fastar.build_info()["cpu_fp32_gemm"]: oneDNN's matmul
    (reading grad transposed in place) on CPUs not made by Intel that have AVX-512 (torch's oneDNN matmul refuses
    float32 on AVX2-only CPUs: MKL there), where torch.mm (what F.linear's autograd runs) takes MKL's AVX2 path: on an
    AMD Zen 4, 2 threads, 1.02-1.23x torch.mm at HiT's, VAR's and DALL-E's training
    shapes (benchmarks/bench_linear.py). fastar.models.layers.linear's backward uses it. It has no backward and no CUDA
    kernel (cuBLAS is a GPU's path): under autograd, in float64 and off the CPU the op runs torch.mm, with a one-time
    warning."""
    name = "linear_weight_grad"
    check_tensor(name, "grad", grad, min_dim=1, dtypes=DTYPES)
    check_tensor(name, "x", x, min_dim=1, dtypes=(grad.dtype,))
    if grad.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"{name}: grad {tuple(grad.shape)} and x {tuple(x.shape)} must share their leading dims")
    check_same_device(name, grad=grad, x=x)
    declined = cpu_inference_decline(name, x.device, x.dtype, (grad, x), gpu_path="cuBLAS's GEMMs are a GPU's path",
                                     autograd_path="torch.mm")
    if declined:
        return x.device, declined

    def rows(t):  # (M, width) with a unit stride, a view where the layout allows
        t = t.reshape(math.prod(t.shape[:-1]), t.shape[-1])  # -1 cannot be inferred for a width of 0
        return t if t.stride(-1) == 1 or t.stride(0) == 1 else t.contiguous()
    return x.device, lambda ops: ops.linear_weight_grad(rows(grad), rows(x))
