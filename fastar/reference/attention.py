"""Reference attention: the dense (Lq, Lk) boolean mask built from the definitions of
csrc/kernels/attention/mask.h, then softmax(q k^T scale) v in the inputs' dtype (float64 for the oracle)."""
import math

import torch

# The kernels' MaskKind numbering (csrc/kernels/attention/mask.h), kept here so the reference needs no extension;
# tests/test_attention.py asserts it equals what fastar._C and fastar._simt export.
KINDS = {"full": 0, "causal": 1, "block_causal": 2, "row": 3, "column": 4, "conv": 5}


def dense_mask(mask, Lq: int, Lk: int, device=None) -> torch.Tensor:
    """(B or 1, Lq, Lk) bool, True where query q sees key k; queries aligned bottom-right on the keys.

    mask: a fastar.ops.AttentionMask (read through kind, seg_lens, text_len, grid, conv_kernel, key_len) or None.
    """
    p = torch.arange(Lq, device=device)[:, None] + (Lk - Lq)  # (Lq, 1) query positions among the keys
    k = torch.arange(Lk, device=device)[None, :]  # (1, Lk)
    kind = "full" if mask is None else mask.kind
    if kind == "full":
        vis = torch.ones(Lq, Lk, dtype=torch.bool, device=device)
    elif kind == "causal":
        vis = k <= p
    elif kind == "block_causal":  # a key's scale ends at seg_end; query p sees every key before its scale's end
        lens = torch.tensor(mask.seg_lens, device=device)
        seg_end = torch.repeat_interleave(lens.cumsum(0), lens)  # (Lk,)
        vis = k < torch.where(p >= 0, seg_end[p.clamp(min=0)], 0)
    else:
        T, W = mask.text_len, mask.grid
        i, j = p - T, k - T  # raster indices of image tokens
        if kind == "row":
            pattern = i - j <= W
        elif kind == "column":
            pattern = (i - j) % W == 0
        else:
            half = mask.conv_kernel // 2
            dc = j % W - i % W
            pattern = (i // W - j // W <= half) & (dc <= half) & (dc >= -half)
        vis = (k <= p) & ((k < T) | (p < T) | pattern)
    vis = vis[None]
    if mask is not None and mask.key_len is not None:
        vis = vis & (k[None] < mask.key_len.to(device)[:, None, None])
    return vis


def attention(q, k, v, mask=None, *, scale=None, return_lse=False):
    """softmax(q k^T scale + mask) v; q (B, H, Lq, D), k and v (B, Hk, Lk, D) with H % Hk == 0.

    Rows that see no key give out 0 and lse -inf. lse (B, H, Lq) is float32 (float64 for float64 inputs).
    """
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1 / math.sqrt(D) if scale is None else scale
    group = H // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, H, Lk, D)
    vis = dense_mask(mask, Lq, Lk, q.device)[:, None]  # (B or 1, 1, Lq, Lk)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~vis, -math.inf)  # (B, H, Lq, Lk)
    lse = s.float().logsumexp(-1) if q.dtype != torch.float64 else s.logsumexp(-1)  # (B, H, Lq)
    # exp(s - lse) with -inf rows kept at 0 (not NaN), so gradients stay finite too.
    p = torch.exp(s - torch.where(lse.isinf(), 0, lse).to(s.dtype)[..., None])
    out = p.to(v.dtype) @ v
    return (out, lse) if return_lse else out


def attention_decode(q, k_cache, v_cache, cache_len, mask=None, *, scale=None, return_lse=False):
    """attention over the first cache_len entries of the caches, the queries their last Lq."""
    return attention(q, k_cache[:, :, :cache_len], v_cache[:, :, :cache_len], mask, scale=scale,
                     return_lse=return_lse)
