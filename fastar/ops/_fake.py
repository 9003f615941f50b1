"""Fake (meta) kernels of the compiled ops, so they trace under torch.compile(fullgraph=True) and pass opcheck."""
import torch

from fastar import _backend


def _vq_nearest(x, codebook, metric):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.float32)


_FAKES = {"vq_nearest": _vq_nearest}

for _ns, _module in (("fastar", _backend._C), ("fastar_simt", _backend._simt)):
    if _module is not None:
        for _name, _fn in _FAKES.items():
            torch.library.register_fake(f"{_ns}::{_name}")(_fn)
