"""attention as users write it in plain PyTorch (VAR's models/basic_var.py and most codebases):
F.scaled_dot_product_attention with the dense boolean mask, no mask tensor where is_causal or no mask says it."""
import torch.nn.functional as F

from fastar.reference import attention as reference


def attention(q, k, v, mask=None, *, scale=None, return_lse=False):
    """SDPA of q (B, H, Lq, D) over k, v (B, Hk, Lk, D); mask a fastar.ops.AttentionMask or None (full).
    SDPA returns no logsumexp: with return_lse it comes from the reference, differentiable (tests only, never
    timed)."""
    Lq, Lk = q.shape[2], k.shape[2]
    kw = dict(scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    padded = mask is not None and mask.key_len is not None
    if mask is None or mask.kind == "full" and not padded:
        out = F.scaled_dot_product_attention(q, k, v, **kw)
    elif mask.kind == "causal" and not padded and Lq == Lk:  # is_causal aligns top-left: equal lengths only
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
    else:
        vis = reference.dense_mask(mask, Lq, Lk, q.device)[:, None]  # (B or 1, 1, Lq, Lk) bool
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=vis, **kw)
    if not return_lse:
        return out
    _, lse = reference.attention(q, k, v, mask, scale=scale, return_lse=True)
    return out, lse


def attention_decode(q, k_cache, v_cache, cache_len, mask=None, *, scale=None, return_lse=False):
    """SDPA over the valid prefix of the caches (what a cache grown by torch.cat holds), with the dense mask rows
    of the new queries."""
    return attention(q, k_cache[:, :, :cache_len], v_cache[:, :, :cache_len], mask, scale=scale,
                     return_lse=return_lse)
