"""DALL-E's discrete VAE (Ramesh et al. 2021; openai/DALL-E dall_e/encoder.py, decoder.py, utils.py).

Module and parameter names equal the released encoder.pkl / decoder.pkl (blocks.input.w, blocks.group_1.block_1.
res_path.conv_1.w, blocks.output.conv.b), so their weights load by a key copy. The encoder emits categorical
logits over the vocabulary for every cell of the grid; the token is their argmax (no codebook search), and the
decoder's first 1x1 conv plays the codebook. Training relaxes the one-hot with gumbel-softmax (tau annealed), scores
the image with the logit-Laplace likelihood and adds beta x KL(q(z|x) || uniform).
"""
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastar.models.checks import check_maps, check_number, check_values
from fastar.models.layers import conv3x3

LOGIT_LAPLACE_EPS = 0.1  # pixels live in [eps, 1 - eps]: the logit-Laplace support is the open interval (0, 1)


@dataclass
class DVAEConfig:
    n_hid: int = 256  # channels of the first group; groups double them (x1, x2, x4, x8)
    n_blk_per_group: int = 2
    group_count: int = 4  # pooling (encoder) / upsampling (decoder) between groups: grid = image / 2^(groups - 1)
    vocab_size: int = 8192
    n_init: int = 128  # the decoder's codebook width (its input 1x1 conv)
    channels: int = 3


class Conv2d(nn.Module):
    """Same-padded conv with parameters named w, b as the released checkpoints; w ~ N(0, 1 / (n_in kw^2))."""

    def __init__(self, n_in, n_out, kw):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / math.sqrt(n_in * kw * kw))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.kw = kw

    def forward(self, x):
        if self.kw == 3:  # Winograd on the CPU backend at inference (layers.conv3x3)
            return conv3x3(x, self.w, self.b)
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)


class ResBlock(nn.Module):
    """out = id_path(x) + post_gain res_path(x), post_gain = 1 / n_layers^2 (a stabilising trick of the paper).
    The encoder's residual path is 3x3, 3x3, 3x3, 1x1; the decoder's 1x1, 3x3, 3x3, 3x3 (`kernels`)."""

    def __init__(self, n_in, n_out, n_layers, kernels):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers ** 2
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, n_hid, n_hid, n_hid, n_out)
        self.res_path = nn.Sequential(OrderedDict(
            (name, layer) for i, kw in enumerate(kernels)
            for name, layer in ((f"relu_{i + 1}", nn.ReLU()), (f"conv_{i + 1}", Conv2d(widths[i], widths[i + 1], kw)))))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _groups(cfg, n_in, widths, kernels, between):
    """group_1..group_G of n_blk_per_group blocks of widths[g] channels (the first block takes n_in), `between`
    (pool / upsample) after all but the last."""
    n_layers = cfg.group_count * cfg.n_blk_per_group
    groups = []
    for g, n_out in enumerate(widths):
        blocks = [(f"block_{i + 1}", ResBlock(n_in if i == 0 else n_out, n_out, n_layers, kernels))
                  for i in range(cfg.n_blk_per_group)]
        if g < cfg.group_count - 1:
            blocks.append(between())
        groups.append((f"group_{g + 1}", nn.Sequential(OrderedDict(blocks))))
        n_in = n_out
    return groups


class Encoder(nn.Module):
    """x (B, channels, S, S), map_pixels'd -> logits (B, vocab_size, S / 2^(G-1), S / 2^(G-1)) float32."""

    def __init__(self, cfg: DVAEConfig = DVAEConfig()):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.n_hid * 2 ** g for g in range(cfg.group_count)]
        pool = lambda: ("pool", nn.MaxPool2d(kernel_size=2))  # noqa: E731
        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(cfg.channels, cfg.n_hid, 7)),
            *_groups(cfg, cfg.n_hid, widths, (3, 3, 3, 1), pool),
            ("output", nn.Sequential(OrderedDict([
                ("relu", nn.ReLU()), ("conv", Conv2d(cfg.n_hid * 2 ** (cfg.group_count - 1), cfg.vocab_size, 1))]))),
        ]))

    def forward(self, x):
        check_maps("Encoder", "x", x, self.cfg.channels)
        return self.blocks(x)


class Decoder(nn.Module):
    """z (B, vocab_size, h, w): a one-hot or relaxed one-hot -> x_stats (B, 2 channels, h 2^(G-1), w 2^(G-1)):
    the logit-Laplace location mu (first `channels`) and ln b (the rest)."""

    def __init__(self, cfg: DVAEConfig = DVAEConfig()):
        super().__init__()
        self.cfg = cfg
        widths = [cfg.n_hid * 2 ** (cfg.group_count - 1 - g) for g in range(cfg.group_count)]
        up = lambda: ("upsample", nn.Upsample(scale_factor=2, mode="nearest"))  # noqa: E731
        self.blocks = nn.Sequential(OrderedDict([
            ("input", Conv2d(cfg.vocab_size, cfg.n_init, 1)),
            *_groups(cfg, cfg.n_init, widths, (1, 3, 3, 3), up),
            ("output", nn.Sequential(OrderedDict([
                ("relu", nn.ReLU()), ("conv", Conv2d(cfg.n_hid, 2 * cfg.channels, 1))]))),
        ]))

    def forward(self, z):
        check_maps("Decoder", "z", z, self.cfg.vocab_size)
        return self.blocks(z)

    def decode_tokens(self, idx_Bhw):
        """idx (B, h, w) int64 -> x_stats; the input conv on a one-hot is a column lookup of its weight."""
        if idx_Bhw.dtype != torch.long or idx_Bhw.dim() != 3:
            raise ValueError(f"Decoder.decode_tokens: idx must be (B, h, w) int64, got {idx_Bhw.dtype} "
                             f"{tuple(idx_Bhw.shape)}")
        V = self.cfg.vocab_size
        check_values("Decoder.decode_tokens", idx_Bhw, 0, V - 1, f"idx must be in [0, {V})")
        conv = self.blocks.input
        h = conv.w[:, :, 0, 0].t()[idx_Bhw].permute(0, 3, 1, 2) + conv.b[:, None, None]  # (B, n_init, h, w)
        return self.blocks[1:](h)


def map_pixels(x):
    """[0, 1] -> [eps, 1 - eps]."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x):
    """[eps, 1 - eps] -> [0, 1], clamped."""
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


def logit_laplace_nll(x, x_stats):
    """Mean negative log-likelihood per dimension of mapped pixels x (B, C, H, W) in (0, 1) under
    f(x | mu, b) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x)), mu, ln b = x_stats (B, 2C, H, W)."""
    mu, log_b = x_stats.chunk(2, dim=1)
    nll = math.log(2) + log_b + torch.log(x * (1 - x)) + (torch.logit(x) - mu).abs() * torch.exp(-log_b)
    return nll.mean()


def kl_to_uniform(logits):
    """Mean over grid cells of KL(softmax(logits) || uniform) for logits (B, V, h, w)."""
    log_q = F.log_softmax(logits, dim=1)
    return (log_q.exp() * log_q).sum(1).mean() + math.log(logits.shape[1])


def cosine(start, end, step, steps):
    """Cosine annealing from start to end over `steps` updates, then end (the paper's Appendix A schedules)."""
    t = min(step / steps, 1.0) if steps > 0 else 1.0
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def tau_schedule(step, steps=150_000):
    """Gumbel-softmax temperature: 1 -> 1/16 over the first 150k updates."""
    return cosine(1.0, 1 / 16, step, steps)


def beta_schedule(step, steps=5000):
    """KL weight: 0 -> 6.6 over the first 5000 updates."""
    return cosine(0.0, 6.6, step, steps)


class DVAE(nn.Module):
    """Encoder + decoder, with the training loss and the tokenizer's two directions."""

    def __init__(self, cfg: DVAEConfig = DVAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)

    def check_pixels(self, op, img):
        """img (B, channels, H, W) floating point in [0, 1], H and W multiples of the encoder's downsampling (an
        int image, or one in [0, 255], once went through map_pixels unchecked)."""
        check_maps(op, "img", img, self.cfg.channels)
        f = 2 ** (self.cfg.group_count - 1)
        if img.shape[2] % f or img.shape[3] % f:
            raise ValueError(f"{op}: img's H and W must be multiples of {f} (the encoder's downsampling), got "
                             f"{tuple(img.shape[2:])}")
        if img.numel() and not 0 <= img.min().item() <= img.max().item() <= 1:
            raise ValueError(f"{op}: img must hold pixels in [0, 1], got [{img.min().item():.3g}, "
                             f"{img.max().item():.3g}]")

    def forward(self, img, tau, beta, generator=None):
        """img (B, C, S, S) in [0, 1] -> (loss, nll, kl): gumbel-softmax relaxed one-hot into the decoder,
        loss = nll + beta kl / (pixel dims per grid cell), both per dimension."""
        self.check_pixels("DVAE.forward", img)
        check_number("DVAE.forward", "tau", tau, above=0)
        check_number("DVAE.forward", "beta", beta, low=0)
        x = map_pixels(img)
        logits = self.encoder(x)  # (B, V, h, w)
        u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1 - 1e-7)
        z = F.softmax((logits - torch.log(-torch.log(u))) / tau, dim=1)  # relaxed one-hot (B, V, h, w)
        x_stats = self.decoder(z)
        nll, kl = logit_laplace_nll(x, x_stats), kl_to_uniform(logits)
        dims_per_cell = x.shape[1] * x.shape[2] * x.shape[3] / (logits.shape[2] * logits.shape[3])
        return nll + beta * kl / dims_per_cell, nll, kl

    @torch.no_grad()
    def img_to_tokens(self, img):
        """img (B, C, S, S) in [0, 1] -> tokens (B, h, w) int64: the argmax of the encoder's logits."""
        self.check_pixels("DVAE.img_to_tokens", img)
        return self.encoder(map_pixels(img)).argmax(1)

    @torch.no_grad()
    def tokens_to_img(self, idx_Bhw):
        """tokens (B, h, w) -> images (B, C, S, S) in [0, 1]: unmap_pixels(sigmoid(mu))."""
        x_stats = self.decoder.decode_tokens(idx_Bhw)
        return unmap_pixels(torch.sigmoid(x_stats[:, :self.cfg.channels]))
