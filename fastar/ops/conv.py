"""conv3x3: the stride-1, padding-1 3x3 convolution of the VQVAE / KL-16 decoders' ResnetBlocks, on the CPU by
Winograd F(2x2, 3x3) (csrc/cpu/conv.cpp, conv_isa.cpp): 4 C_in multiply-adds per output instead of 9 C_in, with the
transformed input and products of a block of output tiles kept in the thread's cache."""
import torch

from fastar.ops._checks import check_same_device, check_tensor
from fastar.ops._prepared import prepared
from fastar.ops._registry import cpu_inference_decline, kernel, op
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
    (fastar.ops._prepared: a weight changed in place through .data between calls is not seen). It has no backward
    and no CUDA kernel (cuDNN's convolutions are a GPU's fast path): under autograd, in float64 and off the CPU the
    op runs the torch formulation, with a one-time warning."""
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
    declined = cpu_inference_decline(name, x.device, x.dtype, (x, weight, bias),
                                     gpu_path="cuDNN's convolutions are a GPU's fast path", autograd_path="F.conv2d")
    if declined:
        return x.device, declined

    def run(ops):
        u = prepared("conv3x3", weight, lambda w: ops.conv3x3_weights(w.contiguous()))
        return ops.conv3x3(x.contiguous(), u, None if bias is None else bias.contiguous(), weight.shape[0])
    return x.device, run
