"""MAR's tokenizer: LDM's KL-16 AutoencoderKL with LTH14/mar's module names (models/vae.py), so the released
kl16.ckpt's state dict loads as is. The encoder and decoder are VAR's LDM-style ones (fastar.models.var.basic_vae)
with this checkpoint's attention block (q, k, v as separate 1x1 convs) and no attention in the decoder's levels.
"""
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastar.models.checks import check_maps
from fastar.models.var.basic_vae import Decoder, Encoder, Normalize

LOGVAR_RANGE = (-30.0, 20.0)  # the posterior's log-variance clamp


@dataclasses.dataclass(frozen=True)
class KLConfig:
    embed_dim: int = 16  # latent channels (MAR's token width)
    ch: int = 128
    ch_mult: tuple = (1, 1, 2, 2, 4)  # stride 2^(len - 1) = 16
    num_res_blocks: int = 2
    latent_scale: float = 0.2325  # MAR multiplies the posterior sample by this and divides it back before decoding


class AttnBlock(nn.Module):
    """One-head self-attention over the h*w positions, q / k / v / proj_out as 1x1 convs (the checkpoint's layout);
    the attention is torch's, as in VAR's VQVAE (fastar.models.var.basic_vae.AttnBlock says why)."""

    def __init__(self, C):
        super().__init__()
        self.norm = Normalize(C)
        self.q, self.k, self.v = nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 1)
        self.proj_out = nn.Conv2d(C, C, 1)

    def forward(self, x_BChw):
        B, C, h, w = x_BChw.shape
        h_ = self.norm(x_BChw)
        q, k, v = (conv(h_).view(B, 1, C, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        o_B1LC = F.scaled_dot_product_attention(q, k, v, scale=C ** -0.5)
        return x_BChw + self.proj_out(o_B1LC.transpose(-1, -2).reshape(B, C, h, w))


class AutoencoderKL(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] <-> latents (B, embed_dim, H/16, W/16) (unscaled; MAR scales by latent_scale)."""

    def __init__(self, cfg: KLConfig = KLConfig()):
        super().__init__()
        self.cfg = cfg
        dd = dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks, attn=AttnBlock)
        self.encoder = Encoder(z_channels=2 * cfg.embed_dim, **dd)  # mean and log-variance
        self.decoder = Decoder(z_channels=cfg.embed_dim, level_attn=False, **dd)
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)

    def encode(self, x_B3HW):
        """-> the diagonal Gaussian posterior's (mean, logvar), each (B, embed_dim, h, w)."""
        check_maps("AutoencoderKL.encode", "x_B3HW", x_B3HW, 3)
        mean, logvar = self.quant_conv(self.encoder(x_B3HW)).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def sample(self, mean, logvar, generator=None):
        """A posterior sample (what MAR trains on), noise from `generator`."""
        if mean.shape != logvar.shape:
            raise ValueError(f"AutoencoderKL.sample: mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must "
                             f"have one shape")
        # float32 draws in any dtype (torch's CPU randn draws other values in float64)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device).to(mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, z_BChw):
        check_maps("AutoencoderKL.decode", "z_BChw", z_BChw, self.cfg.embed_dim)
        return self.decoder(self.post_quant_conv(z_BChw))

    def forward(self, x_B3HW, generator=None):
        """Reconstruction of a posterior sample and the KL to N(0, I) per image (the KL-VAE training terms)."""
        mean, logvar = self.encode(x_B3HW)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))
        return self.decode(self.sample(mean, logvar, generator)), kl
