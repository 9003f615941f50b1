"""VQVAE encoder and decoder of VAR's tokenizer (FoundationVision/VAR models/basic_vae.py, itself LDM's vq-f16).

Module names equal the official checkpoint's keys (encoder.down.{i}.block.{j}.norm1, decoder.up.{i}.attn.{j}.qkv...).
"""
import torch.nn as nn
import torch.nn.functional as F

import fastar


def Normalize(C):
    return nn.GroupNorm(num_groups=32, num_channels=C, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.conv = nn.Conv2d(C, C, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.conv = nn.Conv2d(C, C, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # right/bottom pad keeps h/2 with a stride-2, pad-0 conv


class ResnetBlock(nn.Module):
    def __init__(self, C_in, C_out, dropout):
        super().__init__()
        self.norm1, self.conv1 = Normalize(C_in), nn.Conv2d(C_in, C_out, 3, 1, 1)
        self.norm2, self.conv2 = Normalize(C_out), nn.Conv2d(C_out, C_out, 3, 1, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.nin_shortcut = nn.Conv2d(C_in, C_out, 1) if C_in != C_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """One-head self-attention over the h*w positions; a fused 1x1 qkv conv, as the VAR checkpoint stores it.
    Its head has C (640) channels: where the active backend's kernel does not take that width (CUDA),
    fastar.ops.attention runs the torch backend and says so."""

    def __init__(self, C):
        super().__init__()
        self.norm = Normalize(C)
        self.qkv = nn.Conv2d(C, 3 * C, kernel_size=1)
        self.proj_out = nn.Conv2d(C, C, kernel_size=1)

    def forward(self, x_BChw):
        B, C, h, w = x_BChw.shape
        qkv = self.qkv(self.norm(x_BChw)).view(B, 3, 1, C, h * w).transpose(-1, -2)  # (B, 3, 1 head, hw, C)
        q, k, v = qkv.unbind(1)
        o_B1LC = fastar.ops.attention(q, k, v, scale=C ** -0.5)
        return x_BChw + self.proj_out(o_B1LC.transpose(-1, -2).reshape(B, C, h, w))


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> features (B, z_channels, H/2^(n-1), W/2^(n-1)), n = len(ch_mult).
    attn: the attention block class (MAR's KL VAE stores q, k, v as separate convs)."""

    def __init__(self, *, ch, ch_mult, num_res_blocks, z_channels, in_channels=3, dropout=0.0, attn=AttnBlock):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        C_in, self.down = ch, nn.ModuleList()
        for i_level, mult in enumerate(ch_mult):
            last = i_level == len(ch_mult) - 1
            level = nn.Module()
            level.block = nn.ModuleList(ResnetBlock(C_in if j == 0 else ch * mult, ch * mult, dropout)
                                        for j in range(num_res_blocks))
            level.attn = nn.ModuleList(attn(ch * mult) for _ in range(num_res_blocks if last else 0))
            if not last:
                level.downsample = Downsample2x(ch * mult)
            self.down.append(level)
            C_in = ch * mult
        self.mid = _mid(C_in, dropout, attn)
        self.norm_out = Normalize(C_in)
        self.conv_out = nn.Conv2d(C_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = _level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Features (B, z_channels, h, w) -> image (B, 3, h*2^(n-1), w*2^(n-1)); one more res block per level than
    the encoder. up[i] is level i (up[0] the full resolution); levels run from the last to the first.
    level_attn: attention after each res block of the lowest-resolution level (VAR's VQVAE; not MAR's KL VAE)."""

    def __init__(self, *, ch, ch_mult, num_res_blocks, z_channels, in_channels=3, dropout=0.0, attn=AttnBlock,
                 level_attn=True):
        super().__init__()
        C_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, C_in, 3, 1, 1)
        self.mid = _mid(C_in, dropout, attn)
        up = []
        for i_level in reversed(range(len(ch_mult))):
            C_out = ch * ch_mult[i_level]
            level = nn.Module()
            level.block = nn.ModuleList(ResnetBlock(C_in if j == 0 else C_out, C_out, dropout)
                                        for j in range(num_res_blocks + 1))
            last = i_level == len(ch_mult) - 1 and level_attn
            level.attn = nn.ModuleList(attn(C_out) for _ in range(num_res_blocks + 1 if last else 0))
            if i_level != 0:
                level.upsample = Upsample2x(C_out)
            up.insert(0, level)
            C_in = C_out
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(C_in)
        self.conv_out = nn.Conv2d(C_in, in_channels, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            h = _level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _mid(C, dropout, attn):
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(C, C, dropout), attn(C), ResnetBlock(C, C, dropout)
    return mid


def _level(level, h):
    """The res blocks of one level, each followed by its attention block where the level has them."""
    for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[j](h)
    return h
