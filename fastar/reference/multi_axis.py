"""Reference multi-axis blocked attention (HiT, Zhao et al. 2021), from its definition in the official code:
block_images (B, H, W, heads, D) -> (B, G, P, heads, D) with G = (H/b)(W/b) blocks of P = b*b pixels, then the
first half of the heads attends over P (inside each b x b block: regional) and the second half over G (the
pixels at the same offset in every block: dilated), then unblock_images. Softmax in the inputs' dtype (float64 for
the oracle); lse in float32 (float64 for float64 inputs)."""
import math

import torch


def block_images(x, b):
    """(B, H, W, heads, D) -> (B, G, P, heads, D): axis 1 the raster index of the b x b block, axis 2 the raster
    offset inside it (the order of HiT's space_to_depth + reshape)."""
    B, H, W, n, D = x.shape
    x = x.reshape(B, H // b, b, W // b, b, n, D).permute(0, 1, 3, 2, 4, 5, 6)
    return x.reshape(B, (H // b) * (W // b), b * b, n, D)


def unblock_images(x, H, W, b):
    """The inverse of block_images: (B, G, P, heads, D) -> (B, H, W, heads, D)."""
    B, _, _, n, D = x.shape
    x = x.reshape(B, H // b, W // b, b, b, n, D).permute(0, 1, 3, 2, 4, 5, 6)
    return x.reshape(B, H, W, n, D)


def _attend(q, k, v, axis, scale):
    """softmax over token axis `axis` of (B, G, P, heads, D) tensors; returns out and lse (B, G, P, heads)."""
    q, k, v = (t.movedim(axis, 3) for t in (q, k, v))  # (B, other, heads, tokens, D)
    s = q @ k.transpose(-1, -2) * scale
    lse = s.float().logsumexp(-1) if q.dtype != torch.float64 else s.logsumexp(-1)
    out = torch.exp(s - lse.to(s.dtype)[..., None]) @ v
    return out.movedim(3, axis), lse.movedim(3, axis)


def multi_axis_attention(q, k, v, block_size, *, image_size=None, scale=None, return_lse=False):
    """q (B, H, W, heads, D) or (B, H*W, heads, D) with image_size=(H, W); k and v likewise with heads_kv = 1
    (multi-query) or an even divisor of heads. Returns out like q, and with return_lse the logsumexp
    (B, H, W, heads) or (B, H*W, heads)."""
    flat = q.dim() == 4
    if flat:
        H, W = image_size
        q, k, v = (t.unflatten(1, (H, W)) for t in (q, k, v))
    B, H, W, n, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    group = n // k.shape[3]
    k, v = k.repeat_interleave(group, 3), v.repeat_interleave(group, 3)  # (B, H, W, heads, D)
    qb, kb, vb = (block_images(t, block_size) for t in (q, k, v))  # (B, G, P, heads, D)
    half = n // 2
    regional = _attend(qb[..., :half, :], kb[..., :half, :], vb[..., :half, :], 2, scale)
    dilated = _attend(qb[..., half:, :], kb[..., half:, :], vb[..., half:, :], 1, scale)
    out = unblock_images(torch.cat((regional[0], dilated[0]), 3), H, W, block_size)
    lse = unblock_images(torch.cat((regional[1], dilated[1]), 3)[..., None], H, W, block_size)[..., 0]
    if flat:
        out, lse = out.flatten(1, 2), lse.flatten(1, 2)
    return (out, lse) if return_lse else out
