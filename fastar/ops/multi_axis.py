"""HiT's multi-axis blocked attention (Zhao et al. 2021): the first half of the heads attends inside each
b x b block (regional), the second half among the pixels at one offset of every block (dilated), read and written
in the image layout the projections produce, with autograd. One kernel family (csrc/cpu/multi_axis.cpp,
csrc/kernels/multi_axis/)."""
import math

import torch

from fastar import _backend
from fastar.ops._checks import FLOATS, check_int, check_same_device, check_tensor
from fastar.ops._registry import Decline, first_order_only, kernel, lse_grads, op
from fastar.reference import multi_axis as reference
from fastar.torch import multi_axis as torch_impl

DTYPES = FLOATS + (torch.float64,)  # float64: the CPU kernels' gradcheck dtype
# Head dims of the CUDA kernels (csrc/kernels/multi_axis/capabilities.h), as the built extensions export them.
DEVICE_HEAD_DIMS = next((tuple(ext.capabilities()["multi_axis"]["device_head_dims"])
                         for ext in (_backend._C, _backend._simt) if ext is not None), ())


def _image_layout(op, q, k, v, image_size):
    """q, k, v as (B, H, W, heads, D) views: 4-D (B, H*W, heads, D) inputs unflattened by image_size (H, W)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t, dtypes=DTYPES)
        if t.dim() != q.dim() or t.dim() not in (4, 5):
            raise ValueError(f"{op}: {name} must be (B, H, W, heads, D) or (B, H*W, heads, D) like q, got shape "
                             f"{tuple(t.shape)} (q {tuple(q.shape)})")
    check_same_device(op, q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() == 5:
        if image_size is not None and tuple(image_size) != tuple(q.shape[1:3]):
            raise ValueError(f"{op}: image_size {tuple(image_size)} disagrees with q's {tuple(q.shape[1:3])}")
        return q, k, v
    if image_size is None or len(image_size) != 2 or image_size[0] * image_size[1] != q.shape[1]:
        raise ValueError(f"{op}: 4-D q (B, H*W, heads, D) needs image_size=(H, W) with H * W = {q.shape[1]}, got "
                         f"{image_size}")
    for name, t in (("k", k), ("v", v)):
        if t.shape[1] != q.shape[1]:
            raise ValueError(f"{op}: {name} has {t.shape[1]} pixels but q has {q.shape[1]}")
    return tuple(t.unflatten(1, tuple(image_size)) for t in (q, k, v))


def _check(op, q, k, v, block_size):
    """Raises an error naming what is wrong with q, k, v (B, H, W, heads, D) or block_size; returns block_size as an
    int."""
    B, H, W, heads, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{op}: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if (k.shape[0], k.shape[1], k.shape[2], k.shape[4]) != (B, H, W, D):
        raise ValueError(f"{op}: k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, image and head dim")
    hk = k.shape[3]
    if heads < 2 or heads % 2:
        raise ValueError(f"{op}: q needs an even number of heads (half regional, half dilated), got {heads}")
    if not (hk == 1 or hk % 2 == 0 and heads % hk == 0):
        raise ValueError(f"{op}: k needs 1 head (multi-query) or an even divisor of q's {heads} heads, got {hk}")
    if D < 1:
        raise ValueError(f"{op}: head dim (last dim) must be at least 1, got {D}")
    block_size = check_int(op, "block_size", block_size, low=1)  # a bool (True: 1) is refused, not taken
    if H < 1 or W < 1 or H % block_size or W % block_size:
        raise ValueError(f"{op}: the image {H} x {W} must be a nonzero multiple of block_size, got {block_size!r}")
    return block_size


@op(reference=reference.multi_axis_attention, torch=torch_impl.multi_axis_attention)
def multi_axis_attention(q, k, v, block_size, *, image_size=None, scale=None, return_lse=False):
    """HiT's multi-axis self-attention, softmax(q k^T scale) v per axis, from the image layout.

    q (B, H, W, heads, D), or (B, H*W, heads, D) with image_size=(H, W): the query projection as it comes, any
    strides (the last dim is read unit-stride when it is). k, v the same with heads_kv = 1 (HiT's default
    multi-query K/V, shared by both halves) or an even divisor of heads (half of them per axis). Heads
    [0, heads/2) attend inside each block_size x block_size block, heads [heads/2, heads) among the pixels
    (y % b, x % b) = const of the whole image; H, W multiples of block_size. float32, bfloat16, float16 (float32
    accumulation) or float64. scale defaults to 1/sqrt(D). Returns out in q's layout (contiguous), and with
    return_lse also the logsumexp (B, H, W, heads) (or (B, H*W, heads)) float32.
    Differentiable in q, k and v, out and lse (as attention's), once (no double backward: it raises).
    """
    name = "multi_axis_attention"
    q5, k5, v5 = _image_layout(name, q, k, v, image_size)
    block_size = _check(name, q5, k5, v5, block_size)
    declined = None
    backend = _backend.active(q.device)
    if backend in ("cuda", "simt") and q5.shape[4] not in DEVICE_HEAD_DIMS:
        declined = Decline(f"the {backend} kernel takes head dims {DEVICE_HEAD_DIMS}, got {q5.shape[4]}")
    scale = 1 / math.sqrt(q5.shape[4]) if scale is None else float(scale)

    def run(ops):
        out, lse = ops.multi_axis_attention_fwd(q5, k5, v5, block_size, scale)
        if q.dim() == 4:
            out, lse = out.flatten(1, 2), lse.flatten(1, 2)
        return (out, lse) if return_lse else out
    return q.device, declined or run


# ---- the compiled kernels: fake functions (torch.compile, opcheck) and the autograd of the forward ----

def _setup_context(ctx, inputs, output):
    q, k, v, block_size, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = block_size, scale
    ctx.set_materialize_grads(False)  # an unused out or lse gets None, not zeros


def _backward(ops, ctx, dout, dlse):
    first_order_only("multi_axis_attention")
    q, k, v, out, lse = ctx.saved_tensors
    fwd = lambda q, k, v: ops.multi_axis_attention_fwd(q, k, v, *ctx.args)  # noqa: E731
    bwd = lambda dout, q, k, v, out, lse: ops.multi_axis_attention_bwd(dout, q, k, v, out, lse, *ctx.args)  # noqa
    dq, dk, dv = bwd(torch.zeros_like(out) if dout is None else dout, q, k, v, out, lse)
    if dlse is not None:
        dq_lse, dk_lse = lse_grads(fwd, bwd, q, k, lse, dlse, ctx.args[1])
        dq, dk = dq + dq_lse, dk + dk_lse
    return dq, dk, dv, None, None


def _like(*tensors):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors)


@kernel("multi_axis_attention_fwd", backward=_backward, setup_context=_setup_context)
def _multi_axis_attention_fwd(q, k, v, block_size, scale):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return *_like(q), q.new_empty(q.shape[:4], dtype=lse_dtype)


@kernel("multi_axis_attention_bwd")
def _multi_axis_attention_bwd(dout, q, k, v, out, lse, block_size, scale):
    return _like(q, k, v)
