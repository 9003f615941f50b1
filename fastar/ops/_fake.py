"""Fake (meta) kernels of the compiled ops, so they trace under torch.compile(fullgraph=True) and pass opcheck."""
import torch

from fastar import _backend


def _vq_nearest(x, codebook, metric):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.float32)


def _msq_residual_search(f_hat, f_rest, h, codebook, pn):
    return f_hat.new_empty(f_hat.shape[0], pn * pn, dtype=torch.int64)


def _msq_up(src, idx, patch_nums, H):
    B, C = (idx if idx is not None else src).shape[0], src.shape[-1]
    return src.new_empty(len(patch_nums) * B, C, H, H).contiguous(memory_format=torch.channels_last)


def _msq_add_down(f_hat, h, patch_nums):
    return f_hat.new_empty(f_hat.shape[0], sum(pn * pn for pn in patch_nums), f_hat.shape[1])


_FAKES = {"vq_nearest": _vq_nearest, "msq_residual_search": _msq_residual_search, "msq_up": _msq_up,
          "msq_add_down": _msq_add_down}

for _ns, _module in (("fastar", _backend._C), ("fastar_simt", _backend._simt)):
    if _module is not None:
        for _name, _fn in _FAKES.items():
            torch.library.register_fake(f"{_ns}::{_name}")(_fn)
