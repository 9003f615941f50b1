"""HiT's discriminator: the StyleGAN2-style residual network of the official code (models/discriminators.py,
StyleGANDiscriminator), blur downsampling ([1, 3, 3, 1] outer product, stride 2), equalized LR and minibatch
stddev off (the official defaults). Images NCHW in [-1, 1]."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar
from fastar.models import layers
from fastar.models.layers import Linear

# Channels by resolution; m = channel_multiplier (1 for ImageNet, 2 for the face datasets).
CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
SCALED = (64, 128, 256, 512, 1024)


def channels(res, multiplier, max_channels):
    return min(CHANNELS[res] * (multiplier if res in SCALED else 1), max_channels)


class Blur(nn.Module):
    """BlurPool2D: the normalized [1, 3, 3, 1] x [1, 3, 3, 1] filter per channel, stride 2, halving the size
    (fastar.ops.blur_pool; the torch backend runs the official depthwise convolution)."""

    def forward(self, x):
        return fastar.ops.blur_pool(x)


def conv3x3(conv, x):
    """conv(x) for a 3x3 stride-1 padding-1 nn.Conv2d; on fastar's CPU backend by Winograd (layers.conv3x3, its
    backward included: R1's double backward) where that is faster under autograd, C_in >= 16 and maps of 16 x 16 and
    more: forward + backward at 128 channels, 128 x 128, 1.32x F.conv2d, at 512 channels 16 x 16 1.27x, 8 x 8 0.77x,
    the RGB stem (C_in 3) 0.62-0.87x (AMD Zen 4, 2 threads, a diagnostic script)."""
    if x.shape[1] >= 16 and min(x.shape[-2:]) >= 16:
        return layers.conv3x3(x, conv.weight, conv.bias, grad=True)
    return conv(x)


class ResBlock(nn.Module):
    """conv3 -> lrelu -> blur -> conv3 -> lrelu, skip blur -> conv1 (no bias); (out + skip) / sqrt(2)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(cin, cin, 3, padding=1), nn.Conv2d(cin, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.blur = Blur()

    def forward(self, x):
        y = F.leaky_relu(conv3x3(self.conv2, self.blur(F.leaky_relu(conv3x3(self.conv1, x), 0.2))), 0.2)
        return (y + self.skip(self.blur(x))) / math.sqrt(2)


class StyleGANDiscriminator(nn.Module):
    """HiT's discriminator (hit-gan models/discriminators.py, StyleGANDiscriminator): a stem conv, residual blocks
    halving resolution -> 4 with blur downsampling, a conv and two dense layers; images (B, 3, R, R) in [-1, 1] ->
    logits (B,). Channels per resolution as officially, capped at max_channels."""

    def __init__(self, resolution, channel_multiplier=1, max_channels=512):
        super().__init__()
        if resolution not in CHANNELS or resolution < 8:
            raise ValueError(f"StyleGANDiscriminator: resolution must be a power of 2 in [8, 1024], got {resolution}")
        ch = lambda r: channels(r, channel_multiplier, max_channels)  # noqa: E731
        self.stem = nn.Conv2d(3, ch(resolution), 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(ch(r), ch(r // 2)) for r in (2 ** i for i in range(
            int(math.log2(resolution)), 2, -1)))
        self.resolution = resolution
        self.head_conv = nn.Conv2d(ch(4), ch(4), 3, padding=1)
        self.head_dense = Linear(ch(4) * 16, ch(4))
        self.out = Linear(ch(4), 1)

    def forward(self, x):
        """x (B, 3, R, R) -> logits (B,). Runs in the NCHW layout whatever x's strides (the generator's images are
        a permuted NHWC view): convolutions keep their input's layout, and a mix of layouts slows elementwise ops."""
        R = self.resolution
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, R, R) or not x.is_floating_point():
            raise ValueError(f"StyleGANDiscriminator: x must be floating-point (B, 3, {R}, {R}) images (its "
                             f"resolution), got {x.dtype} {tuple(x.shape)}")
        x = F.leaky_relu(self.stem(x.contiguous()), 0.2)
        for block in self.blocks:
            x = block(x)
        x = F.leaky_relu(self.head_conv(x), 0.2)
        return self.out(F.leaky_relu(self.head_dense(x.flatten(1)), 0.2)).squeeze(1)
