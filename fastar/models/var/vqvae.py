"""VAR's VQVAE tokenizer (FoundationVision/VAR models/vqvae.py): CNN encoder, multi-scale residual quantizer, decoder.

Images are in [-1, 1]; the released VAE (ch 160, V 4096, z 32) downsamples by 16: 256 px -> a 16x16 latent.
"""
from dataclasses import dataclass

import torch.nn as nn

from fastar.models.checks import check_maps
from fastar.models.var.basic_vae import Decoder, Encoder
from fastar.models.var.quant import VectorQuantizer2


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096  # codebook size V, one codebook shared by all scales
    z_channels: int = 32  # Cvae: latent channels, the codebook's dimension
    ch: int = 160  # width of the first level; GroupNorm(32) needs a multiple of 32
    ch_mult: tuple = (1, 1, 2, 2, 4)  # width multiplier per level; len-1 halvings: 2^4 = 16
    num_res_blocks: int = 2  # per encoder level (the decoder has one more)
    dropout: float = 0.0  # released VAE: none
    beta: float = 0.25  # commitment weight of the VQ loss
    quant_resi: float = 0.5  # Phi's blend ratio r: (1-r) h + r conv(h)
    share_quant_resi: int = 4  # number of Phi convolutions shared across the scales
    v_patch_nums: tuple = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # scale sides; the last = latent side


class VQVAE(nn.Module):
    """VAR's multi-scale VQVAE (FoundationVision/VAR models/vqvae.py, same module names): encoder, quant_conv,
    VectorQuantizer2, post_quant_conv, decoder. Images (B, 3, H, W) in [-1, 1] <-> per-scale indices (B, pn^2) of one
    shared codebook; the latent map is H / 2^(len(ch_mult) - 1) wide (16 x 16 at 256 px)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg, self.Cvae, self.vocab_size = cfg, cfg.z_channels, cfg.vocab_size
        ddconfig = dict(ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks, z_channels=cfg.z_channels,
                        dropout=cfg.dropout)
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.downsample = 2 ** (len(cfg.ch_mult) - 1)
        self.quantize = VectorQuantizer2(cfg.vocab_size, cfg.z_channels, cfg.v_patch_nums, cfg.beta, cfg.quant_resi,
                                         cfg.share_quant_resi)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    def check_images(self, op, img_B3HW):
        """Images (B, 3, S, S) with S = v_patch_nums[-1] * downsample: the encoder floors odd sides (a 17 x 17 image
        would lose its last row and column unsaid) and the quantizer's last scale is the latent map."""
        check_maps(op, "img_B3HW", img_B3HW, 3)
        side = self.cfg.v_patch_nums[-1] * self.downsample
        if img_B3HW.shape[-2:] != (side, side):
            raise ValueError(f"{op}: img_B3HW must be {side} x {side} (v_patch_nums[-1] {self.cfg.v_patch_nums[-1]} x "
                             f"the encoder's downsampling {self.downsample}), got {tuple(img_B3HW.shape[-2:])}")

    # ===================== VAE training =====================
    def forward(self, img_B3HW):
        """(reconstruction, per-scale codebook usage in %, vq loss)."""
        self.check_images("VQVAE.forward", img_B3HW)
        f_hat, usages, vq_loss = self.quantize(self.quant_conv(self.encoder(img_B3HW)))
        return self.decoder(self.post_quant_conv(f_hat.contiguous())), usages, vq_loss

    # ===================== VAR training and inference =====================
    def fhat_to_img(self, f_hat_BChw):
        """Images in [-1, 1] from f_hat (any layout: decoded in NCHW, as the official code's maps are)."""
        check_maps("VQVAE.fhat_to_img", "f_hat_BChw", f_hat_BChw, self.cfg.z_channels)
        return self.decoder(self.post_quant_conv(f_hat_BChw.contiguous())).clamp_(-1, 1)

    def img_to_idxBl(self, img_B3HW):
        """Token indices of every scale: [(B, pn*pn) int64 for pn in v_patch_nums]."""
        self.check_images("VQVAE.img_to_idxBl", img_B3HW)
        return self.quantize.f_to_idxBl_or_fhat(self.quant_conv(self.encoder(img_B3HW)), to_fhat=False)

    def idxBl_to_img(self, ms_idx_Bl, last_one=False):
        """Images from the tokens of the first k scales, for every k <= len(ms_idx_Bl), or only the last."""
        f_hats = self.quantize.idxBl_to_fhat(ms_idx_Bl, last_one=last_one)
        return self.fhat_to_img(f_hats) if last_one else [self.fhat_to_img(f) for f in f_hats]

    def load_state_dict(self, state_dict, strict=True, assign=False):
        # a checkpoint made for another number of scales keeps this model's usage statistics (as the official code)
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape[0] != self.quantize.ema_vocab_hit_SV.shape[0]:
            state_dict = {**state_dict, key: self.quantize.ema_vocab_hit_SV}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
