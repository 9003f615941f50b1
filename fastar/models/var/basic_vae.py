"""VQVAE encoder and decoder of VAR's tokenizer (FoundationVision/VAR models/basic_vae.py, itself LDM's vq-f16).

Module names equal the official checkpoint's keys (encoder.down.{i}.block.{j}.norm1, decoder.up.{i}.attn.{j}.qkv...).

The decoder's fast path (where fastar's kernels are active; the torch and reference backends run the official
formulation): each nearest-2x upsample + 3x3 conv as one 2x2 conv of the low-resolution input (2.25x fewer
multiply-adds), its weights made once per parameter version at inference; on the CPU backend at inference the other
3x3 convolutions (conv_in, the ResnetBlocks', conv_out; the encoder's ResnetBlocks too) through fastar.ops.conv3x3
(Winograd F(2x2, 3x3): 2.25x fewer multiply-adds, float32 error below oneDNN's direct convolution's); and the
elementwise passes in place at inference. Activations are NCHW, as the official code's, whatever the input's
layout: with torch's channels_last convolutions (oneDNN's brgemm kernels) and GroupNorm, faster on this CPU, the
full-size decoder's images were 4.8-5x the official float32 error of the float64 decoder
(tools/official_var_patch.py's check), past the tolerance rule. Same
parameters, same state dict: the prepared weights sit outside the module, keyed by each parameter's storage and
version counter, which load_state_dict and optimizer steps bump (writes through .data do not: such code must not run
between decodes). fastar.patch.var runs the forwards of Decoder, Upsample2x, ResnetBlock and AttnBlock on the official
modules: they read only attributes the official classes have.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastar import _backend
from fastar.models.layers import conv3x3, fast_path
from fastar.ops._prepared import prepared


def Normalize(C):
    return nn.GroupNorm(num_groups=32, num_channels=C, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.conv = nn.Conv2d(C, C, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        if fast_path(x):
            return _upsample_conv(x, self.conv)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


# 3x3 taps onto the 2x2 taps of output phase a (row or column parity) of a nearest-2x upsample: phase 0 sees input
# rows (i-1, i, i) -> (i-1: w0, i: w1 + w2); phase 1 sees (i, i, i+1) -> (i: w0 + w1, i+1: w2)
_PHASE_TAPS = ((1., 0., 0.), (0., 1., 1.)), ((1., 1., 0.), (0., 0., 1.))


def _phase_weights(weight):
    """(C_out, C_in, 3, 3) -> (4 C_out, C_in, 2, 2), phase (a, b) major."""
    T = weight.new_tensor(_PHASE_TAPS)  # (phase, 2x2 tap, 3x3 tap)
    return torch.einsum("akr,bls,oirs->aboikl", T, T, weight).reshape(4 * weight.shape[0], -1, 2, 2).contiguous()


def _upsample_conv(x_BChw, conv):
    """conv3x3(nearest_upsample_2x(x)) as one 2x2 conv of x padded by 1 with 4 phases x C_out outputs, interleaved:
    output (2i + a, 2j + b) is phase (a, b) at position (i + a, j + b). Exact in real arithmetic."""
    B, _, h, w = x_BChw.shape
    C_out, bias = conv.out_channels, conv.bias
    y = F.conv2d(x_BChw, prepared("phase", conv.weight, _phase_weights), None if bias is None else bias.repeat(4),
                 padding=1).view(B, 2, 2, C_out, h + 1, w + 1)
    out = y.new_empty(B, C_out, h, 2, w, 2)  # (B, C_out, 2h, 2w) with its rows and columns split by parity
    for a in (0, 1):
        for b in (0, 1):
            out[:, :, :, a, :, b] = y[:, a, b, :, a:a + h, b:b + w]
    return out.view(B, C_out, 2 * h, 2 * w)


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
        fast = fast_path(x)
        h = _conv(self.conv1, _norm_silu(self.norm1, x))
        h = _conv(self.conv2, self.dropout(_norm_silu(self.norm2, h)))
        return _residual(self.nin_shortcut(x), h, fast)


class AttnBlock(nn.Module):
    """One-head self-attention over the h*w positions; a fused 1x1 qkv conv, as the VAR checkpoint stores it. The
    attention itself is torch's scaled_dot_product_attention on every backend, a small part of a decode: with
    fastar.ops.attention's float32 rounding on this 640-wide head, the NCHW decoder's images were 1.9-2.5x the
    official error of the float64 decoder in tools/official_var_patch.py's check, which failed on them."""

    def __init__(self, C):
        super().__init__()
        self.norm = Normalize(C)
        self.qkv = nn.Conv2d(C, 3 * C, kernel_size=1)
        self.proj_out = nn.Conv2d(C, C, kernel_size=1)

    def forward(self, x_BChw):
        B, C, h, w = x_BChw.shape
        qkv = self.qkv(self.norm(x_BChw)).view(B, 3, 1, C, h * w).transpose(-1, -2)  # (B, 3, 1 head, hw, C)
        o_B1LC = F.scaled_dot_product_attention(*qkv.unbind(1), scale=C ** -0.5)
        o = o_B1LC.transpose(-1, -2).reshape(B, C, h, w)  # a channels_last view
        if torch.is_grad_enabled():  # NCHW, as the official block's: proj_out's weight gradient then has the
            o = o.contiguous()  # parameter's strides, which DDP's reducer compares (a warning on every step else)
        return _residual(x_BChw, self.proj_out(o), fast_path(x_BChw))


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
        if fast_path(z) and z.device.type == "cpu":  # its ~170 MB activations (B 4) from the CPU cache's warm blocks
            with _backend.cpu_cache_all_tensors():
                return _decode(self, z)
        return _decode(self, z)


def _decode(dec, z):
    """Decoder.forward's body (a function: fastar.patch.var runs Decoder.forward on the official class, which has
    only the official attributes)."""
    z = z.contiguous()  # NCHW whatever the caller's layout (the quantizer ops return channels_last maps): the
    # official decoder's layout, whose float32 error the tolerance rule is measured against (module docstring)
    h = dec.mid.block_2(dec.mid.attn_1(dec.mid.block_1(_conv(dec.conv_in, z))))
    for level in reversed(dec.up):
        h = _level(level, h)
        if hasattr(level, "upsample"):
            h = level.upsample(h)
    return _conv(dec.conv_out, _norm_silu(dec.norm_out, h))


def _conv(conv, x):
    """conv(x) for a 3x3 stride-1 padding-1 nn.Conv2d, through layers.conv3x3 (Winograd on the CPU backend)."""
    return conv3x3(x, conv.weight, conv.bias)


def _norm_silu(norm, x):
    """silu(norm(x)), in place at inference (norm's output is fresh and no backward needs it), as the official
    ResnetBlock's F.silu(..., inplace=True) on every backend."""
    return F.silu(norm(x), inplace=not torch.is_grad_enabled())


def _residual(shortcut, h, fast):
    """shortcut + h; on the fast path in place into h, a fresh layer output that no backward saves."""
    return h.add_(shortcut) if fast else shortcut + h


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
