"""multi_axis_attention as PyTorch users write it (timm's maxxvit window_partition / grid_partition, the HiT port's
block_images): permute each half of the heads into (groups, heads, tokens, D) copies, SDPA on each, permute back."""
import torch
import torch.nn.functional as F

from fastar.reference import multi_axis as reference


def _partition(x, b, axis):
    """(B, H, W, m, D) -> (B * groups, m, tokens, D): regional windows (axis 0) or dilated grids (axis 1)."""
    B, H, W, m, D = x.shape
    x = x.view(B, H // b, b, W // b, b, m, D)
    if axis == 0:
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, m, b * b, D)
    return x.permute(0, 2, 4, 5, 1, 3, 6).reshape(-1, m, (H // b) * (W // b), D)


def _unpartition(x, B, H, W, b, axis):
    """The inverse of _partition: (B * groups, m, tokens, D) -> (B, H, W, m, D)."""
    m, D = x.shape[1], x.shape[3]
    if axis == 0:
        return x.view(B, H // b, W // b, m, b, b, D).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, m, D)
    return x.view(B, b, b, m, H // b, W // b, D).permute(0, 4, 1, 5, 2, 3, 6).reshape(B, H, W, m, D)


def multi_axis_attention(q, k, v, block_size, *, image_size=None, scale=None, return_lse=False):
    """Same signature as fastar.ops.multi_axis_attention. SDPA returns no logsumexp: with return_lse it comes from
    the reference, differentiable (tests only, never timed)."""
    flat = q.dim() == 4
    q5, k5, v5 = (t.unflatten(1, tuple(image_size)) for t in (q, k, v)) if flat else (q, k, v)
    B, H, W, n, _ = q5.shape
    half, hk = n // 2, k5.shape[3]
    outs = []
    for axis, heads in enumerate((slice(0, half), slice(half, n))):
        kv = slice(None) if hk == 1 else slice(0, hk // 2) if axis == 0 else slice(hk // 2, hk)
        qa, ka, va = (_partition(t, block_size, axis) for t in (q5[..., heads, :], k5[..., kv, :], v5[..., kv, :]))
        o = F.scaled_dot_product_attention(qa, ka, va, scale=scale, enable_gqa=qa.shape[1] != ka.shape[1])
        outs.append(_unpartition(o, B, H, W, block_size, axis))
    out = torch.cat(outs, 3)
    if flat:
        out = out.flatten(1, 2)
    if not return_lse:
        return out
    _, lse = reference.multi_axis_attention(q, k, v, block_size, image_size=image_size, scale=scale, return_lse=True)
    return out, lse
