"""conv3x3: the stride-1, padding-1 3x3 convolution of the VQVAE / KL-16 decoders' ResnetBlocks and of StyleGAN2's
discriminator, on the CPU by Winograd F(2x2, 3x3) (csrc/cpu/conv.cpp, conv_isa.cpp): 4 C_in multiply-adds per output
instead of 9 C_in, with the transformed input and products of a block of output tiles kept in the thread's cache.
Under autograd the input gradient is the same kernel on the adjoint weight (transposed, flipped: again a stride-1,
padding-1 3x3 convolution), the weight gradient autograd's convolution_backward, to any order (R1's double
backward)."""
import torch

from fastar.ops._checks import check_same_device, check_tensor
from fastar.ops._prepared import prepared
from fastar.ops._registry import cpu_kernel_decline, kernel, op, wants_grad, weight_grad_needed
from fastar.reference import conv as reference
from fastar.torch import conv as torch_impl

_DTYPES = (torch.float32, torch.float64)
PACK = 12  # u's block of output channels (cpu/conv_isa.h kConvPack)


@kernel("conv3x3_weights")
def _conv3x3_weights(weight):  # fake kernels, for torch.compile / opcheck
    return weight.new_empty(16, -(-weight.shape[0] // PACK), weight.shape[1], PACK)


@kernel("conv3x3")
def _conv3x3(x, u, bias, c_out):
    return x.new_empty(x.shape[0], c_out, x.shape[2], x.shape[3])


@op(reference=reference.conv3x3, torch=torch_impl.conv3x3)
def conv3x3(x, weight, bias=None):
    """F.conv2d(x, weight, bias, padding=1) for x (B, C_in, H, W) and weight (C_out, C_in, 3, 3), float32 (float64 on
    the reference and torch backends), bias (C_out,) or None -> (B, C_out, H, W) contiguous.

    The CPU kernel is Winograd F(2x2, 3x3): 2.25x fewer multiply-adds than a direct convolution and float32 rounding
    of the same order (tests/test_conv.py bounds it by the tolerance rule against float64; benchmarks/bench_conv.py
    times it). A work item is 2 vector registers of 2x2 output tiles (32 on AVX-512) along a tile row, or across
    rows on maps narrower than that. The weight's transform (16 C_out C_in floats) is made once per version of it
    (fastar.ops._prepared: a weight changed in place through .data between calls is not seen). Differentiable to any
    order: the input gradient runs the kernel on the adjoint weight, the weight gradient autograd's
    convolution_backward (oneDNN). There is no CUDA kernel (cuDNN's convolutions are a GPU's fast path): in float64
    and off the CPU the op runs the torch formulation, with a one-time warning. An inf in x gives NaN around it (the
    transform's differences, inf - inf) where a direct convolution gives inf."""
    name = "conv3x3"
    check_tensor(name, "x", x, dim=4, dtypes=_DTYPES)
    check_tensor(name, "weight", weight, dim=4, dtypes=(x.dtype,))
    if tuple(weight.shape[1:]) != (x.shape[1], 3, 3):
        raise ValueError(f"{name}: weight must be (C_out, {x.shape[1]}, 3, 3) for x of {x.shape[1]} channels, got "
                         f"{tuple(weight.shape)}")
    if bias is not None:
        check_tensor(name, "bias", bias, dim=1, dtypes=(x.dtype,))
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{name}: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
        check_same_device(name, x=x, weight=weight, bias=bias)
    else:
        check_same_device(name, x=x, weight=weight)
    declined = cpu_kernel_decline(name, x.device, x.dtype, gpu_path="cuDNN's convolutions are a GPU's fast path")
    if declined:
        return x.device, declined

    def run(ops):
        if wants_grad(x, weight, bias):
            return _Conv3x3.apply(x, weight, bias, ops, False)
        return _forward(ops, x, weight, bias, False)
    return x.device, run


def adjoint(weight):
    """The weight of the convolution's adjoint (C_in, C_out, 3, 3): transposed and flipped; an involution."""
    return weight.transpose(0, 1).flip(2, 3)


def _forward(ops, x, weight, bias, adjoint_of):
    """The kernel on weight, or on adjoint(weight) when adjoint_of; its transform made once per weight version."""
    if adjoint_of:
        u = prepared("conv3x3_adjoint", weight, lambda w: ops.conv3x3_weights(adjoint(w).contiguous()))
    else:
        u = prepared("conv3x3", weight, lambda w: ops.conv3x3_weights(w.contiguous()))
    c_out = weight.shape[1] if adjoint_of else weight.shape[0]
    return ops.conv3x3(x.contiguous(), u, None if bias is None else bias.contiguous(), c_out)


class _Conv3x3(torch.autograd.Function):
    """y = conv(x, W) (or conv(x, adjoint(W))) on the kernel; the backward is built of differentiable ops (this
    function on the adjoint weight, convolution_backward, a sum), so autograd differentiates it again."""

    @staticmethod
    def forward(ctx, x, weight, bias, ops, adjoint_of):
        ctx.save_for_backward(x, weight)
        ctx.ops, ctx.adjoint_of = ops, adjoint_of
        return _forward(ops, x, weight, bias, adjoint_of)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _Conv3x3.apply(grad, weight, None, ctx.ops, not ctx.adjoint_of)
        if weight_grad_needed(ctx, 1):
            w = adjoint(weight) if ctx.adjoint_of else weight
            dw = torch.ops.aten.convolution_backward(grad, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                                                     [False, True, False])[1]
            dw = adjoint(dw) if ctx.adjoint_of else dw
        if weight_grad_needed(ctx, 2):
            db = grad.sum((0, 2, 3))
        return dx, dw, db, None, None
