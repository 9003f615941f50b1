"""blur_pool as the official discriminators write it: F.pad then a depthwise F.conv2d with the 4x4 binomial at
stride 2 (HiT's BlurPool2D, StyleGAN2's blur before a stride-2 layer); autograd's convolution backward, and under
R1's double backward a per-channel gradient of the fixed filter too."""
import torch
import torch.nn.functional as F

from fastar.reference.blur_pool import TAPS

_KERNELS = {}


def _kernel(like):
    key = (like.dtype, like.device)
    if key not in _KERNELS:
        f = torch.tensor(TAPS, dtype=like.dtype, device=like.device)
        _KERNELS[key] = (f[:, None] * f[None])[None, None]
    return _KERNELS[key]


def blur_pool(x):
    C = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), _kernel(x).expand(C, 1, 4, 4), stride=2, groups=C)
