"""MAR's diffusion head with LTH14/mar's module names (models/diffloss.py), so a DiffLoss state dict loads as is:
sampled through fastar.ops.diffusion_sample (the whole loop as one op), trained through fastar.ops.diffusion_loss
(the head's forward below under autograd, the loss terms fused).
"""
import math

import torch
import torch.nn as nn

import fastar.ops
from fastar.models.layers import Linear, fast_path
from fastar.reference import diffusion as reference


class TimestepEmbedder(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.mlp = nn.Sequential(Linear(reference.FREQ_DIM, width), nn.SiLU(), Linear(width, width))

    def forward(self, t):
        """(N,) timesteps -> (N, width): [cos, sin] sinusoids (max period 10000) through the MLP."""
        half, dtype = reference.FREQ_DIM // 2, self.mlp[0].weight.dtype  # float32 in the official code
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=dtype) / half)
        args = t[:, None].to(dtype) * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=reference.LN_EPS)
        self.mlp = nn.Sequential(Linear(width, width), nn.SiLU(), Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=reference.LN_EPS)
        self.linear = Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(width, 2 * width))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """x (N, C), original timesteps t (N,), condition c (N, Z) -> [eps, v] (N, 2C)."""

    def __init__(self, in_channels, width, z_channels, depth):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = Linear(z_channels, width)
        self.input_proj = Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * in_channels)  # eps and the learned-range variance
        self.initialize_weights()

    def initialize_weights(self):
        """Official init: xavier Linears, N(0, 0.02) time MLP, zero adaLN and output (each block starts as identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for layer in self.time_embed.mlp[0], self.time_embed.mlp[2]:
            nn.init.normal_(layer.weight, std=0.02)
        for layer in [b.adaLN_modulation[1] for b in self.res_blocks] + [self.final_layer.adaLN_modulation[1],
                                                                          self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, c):
        y = self.time_embed(t) + self.cond_embed(c)  # (N, width): the only conditioning
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)


def head_loss(target, z, net, t, noise, mask=None):
    """The mean of fastar.ops.diffusion_loss over the rows, or over the rows where mask (N,) is 1. On fastar's path
    the head runs only on the rows of nonzero mask: the official code runs every row and multiplies the others' loss
    by 0, the same loss and gradients (MAR's unmasked tokens: ~15% of a training batch's rows)."""
    if mask is not None and fast_path(target):
        keep = mask != 0
        if 0 < int(keep.sum()) < len(keep):  # (a mask of all ones or all zeros: every row, as officially)
            loss = fastar.ops.diffusion_loss(target[keep], z[keep], net, t=t[keep], noise=noise[keep])
            return (loss * mask[keep]).sum() / mask.sum()
    loss = fastar.ops.diffusion_loss(target, z, net, t=t, noise=noise)
    return (loss * mask).sum() / mask.sum() if mask is not None else loss.mean()


class DiffLoss(nn.Module):
    """MAR's diffusion head (models/diffloss.py, same module names): SimpleMLPAdaLN `net` predicting eps and the
    learned variance of a token (N, target_channels) given its condition z (N, z_channels); forward is the training
    loss (fastar.ops.diffusion_loss), sample the num_sampling_steps respaced chain (fastar.ops.diffusion_sample)."""

    def __init__(self, target_channels, z_channels, depth, width, num_sampling_steps=100):
        super().__init__()
        self.in_channels = target_channels
        self.num_sampling_steps = int(num_sampling_steps)
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth)

    def forward(self, target, z, mask=None, generator=None):
        """Training: target (N, C) tokens, z (N, Z) their conditions; one uniform timestep and fresh noise per row
        (drawn for every row, as officially). The mean loss, or its mean over rows where mask (N,) is 1
        (head_loss)."""
        t = torch.randint(0, reference.NUM_TIMESTEPS, (target.shape[0],), generator=generator, device=target.device)
        # drawn in float32 whatever target's dtype: torch's CPU randn draws other values in float64 (past 15
        # elements), which would give a float64 oracle other noise than the float32 run it checks
        noise = torch.randn(target.shape, generator=generator, device=target.device).to(target.dtype)
        return head_loss(target, z, self.net, t, noise, mask)

    @torch.no_grad()
    def sample(self, z, temperature=1.0, cfg=1.0, generator=None, precision="fp32"):
        """z (N, Z), [cond ; uncond] when cfg != 1 -> tokens (N, C), or the conditional half (N/2, C) under cfg.
        precision: diffusion_sample's ("bf16": the head's GEMMs on bfloat16 operands)."""
        return fastar.ops.diffusion_sample(z, self.net, num_steps=self.num_sampling_steps, temperature=temperature,
                                           cfg=float(cfg), generator=generator, precision=precision)
