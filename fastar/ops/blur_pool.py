"""blur_pool: BlurPool2D, the [1, 3, 3, 1] binomial blur at stride 2 of StyleGAN2's and HiT's discriminators
(csrc/cpu/blur_pool.cpp, csrc/kernels/blur_pool/blur_pool.cu). Linear with a fixed filter, so its backward is one
kernel (the transposed blur) whose own backward is blur_pool: R1's double backward runs two small kernels per blur,
where autograd's depthwise convolution also computes, channel by channel, a gradient of the filter nobody asked for."""
import torch

from fastar.ops._checks import check_tensor
from fastar.ops._registry import kernel, op
from fastar.reference import blur_pool as reference
from fastar.torch import blur_pool as torch_impl

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _setup_forward(ctx, inputs, output):
    ctx.size = tuple(inputs[0].shape[-2:])


def _forward_backward(ops, ctx, grad):
    return ops.blur_pool_backward(grad.contiguous(), *ctx.size)


def _backward_backward(ops, ctx, grad):
    return ops.blur_pool(grad.contiguous()), None, None


@kernel("blur_pool", backward=_forward_backward, setup_context=_setup_forward)
def _blur_pool(x):  # fake kernels, for torch.compile / opcheck
    return x.new_empty(*x.shape[:-2], x.shape[-2] // 2, x.shape[-1] // 2)


@kernel("blur_pool_backward", backward=_backward_backward, setup_context=lambda ctx, inputs, output: None)
def _blur_pool_backward(grad, height, width):
    return grad.new_empty(*grad.shape[:-2], height, width)


@op(reference=reference.blur_pool, torch=torch_impl.blur_pool)
def blur_pool(x):
    """x (B, C, H, W), H and W >= 2, float32 / bfloat16 / float16 / float64 -> (B, C, H // 2, W // 2) contiguous:
    F.pad(x, (1, 1, 1, 1)) then the 4x4 filter f f^T, f = [1, 3, 3, 1] / 8, per channel at stride 2
    (fastar/reference/blur_pool.py). The kernels sum columns then rows of taps in float32 (float64 for float64).
    Differentiable to any order. The torch backend runs the official depthwise F.conv2d."""
    name = "blur_pool"
    check_tensor(name, "x", x, dim=4, dtypes=_DTYPES)
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"{name}: x must be at least 2 x 2, got {tuple(x.shape[-2:])}")
    return x.device, lambda ops: ops.blur_pool(x.contiguous())
