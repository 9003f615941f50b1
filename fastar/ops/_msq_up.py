"""msq_up, the fused codebook gather + bicubic upsample of VAR's quantizer: its fake and its hand-written
backward (the kernel has no backward of its own; the Phi convs after it are torch's and differentiate as usual)."""
import torch
import torch.nn.functional as F

from fastar.ops._registry import kernel


def _setup_context(ctx, inputs, output):
    src, idx, ctx.patch_nums, ctx.H = inputs
    ctx.src_shape = src.shape
    ctx.save_for_backward(idx)


def _bicubic_up(H):
    return lambda x: F.interpolate(x, size=(H, H), mode="bicubic", align_corners=False)


def _backward(_ops, ctx, grad):
    """The adjoint of gather + bicubic-up: torch's bicubic backward per scale, then a scatter-add into the codes."""
    (idx,) = ctx.saved_tensors
    S, H, C = len(ctx.patch_nums), ctx.H, ctx.src_shape[-1]
    B = grad.shape[0] // S
    rows = []
    for s, pn in enumerate(ctx.patch_nums):
        g = grad[s * B:(s + 1) * B]  # (B, C, H, H)
        if pn != H:  # through vjp, not aten's backward op: its meta fails on a symbolic B (torch.compile dynamic)
            g = torch.func.vjp(_bicubic_up(H), g.new_zeros(B, C, pn, pn))[1](g)[0]
        rows.append(g.permute(0, 2, 3, 1).reshape(B, pn * pn, C))
    rows = torch.cat(rows, 1)  # (B, L, C)
    if idx is None:
        return rows, None, None, None
    grad_codes = rows.new_zeros(ctx.src_shape).index_add_(0, idx.reshape(-1), rows.reshape(-1, C))  # (V, C)
    return grad_codes, None, None, None


@kernel("msq_up", backward=_backward, setup_context=_setup_context)
def _msq_up(src, idx, patch_nums, H):
    B, C = (idx if idx is not None else src).shape[0], src.shape[-1]
    return src.new_empty(len(patch_nums) * B, C, H, H).contiguous(memory_format=torch.channels_last)
