"""Fake (meta) kernels of the compiled ops, so they trace under torch.compile(fullgraph=True) and pass opcheck."""
import torch

from fastar import _backend


def _vq_nearest(x, codebook, metric):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.float32)


def _lse_like(q):  # (B, H, Lq) float32; float64 inputs keep float64
    return q.new_empty(q.shape[:3], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def _attention_fwd(q, k, v, mask_kind, mask_ints, kv_end, key_len, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), _lse_like(q)


def _attention_bwd(dout, q, k, v, out, lse, mask_kind, mask_ints, kv_end, key_len, scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _attention_decode(q, k_cache, v_cache, cache_len, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), _lse_like(q)


def _msq_residual_search(f_hat, f_rest, h, codebook, pn):
    return f_hat.new_empty(f_hat.shape[0], pn * pn, dtype=torch.int64)


def _msq_up(src, idx, patch_nums, H):
    B, C = (idx if idx is not None else src).shape[0], src.shape[-1]
    return src.new_empty(len(patch_nums) * B, C, H, H).contiguous(memory_format=torch.channels_last)


def _msq_add_down(f_hat, h, patch_nums):
    return f_hat.new_empty(f_hat.shape[0], sum(pn * pn for pn in patch_nums), f_hat.shape[1])


_FAKES = {"vq_nearest": _vq_nearest, "attention_fwd": _attention_fwd, "attention_bwd": _attention_bwd,
          "attention_decode": _attention_decode, "msq_residual_search": _msq_residual_search, "msq_up": _msq_up,
          "msq_add_down": _msq_add_down}

for _ns, _module in (("fastar", _backend._C), ("fastar_simt", _backend._simt)):
    if _module is not None:
        for _name, _fn in _FAKES.items():
            torch.library.register_fake(f"{_ns}::{_name}")(_fn)
