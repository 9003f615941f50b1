"""MAR's diffusion head with LTH14/mar's module names (models/diffloss.py), sampled through fastar.ops.diffusion_sample.

The forward math lives in fastar.reference.diffusion.head_forward (one PyTorch version of the head); these modules
only carry the parameters under the official checkpoint's names, so a DiffLoss state dict loads as is.
"""
import torch
import torch.nn as nn

import fastar.ops
from fastar.reference import diffusion as reference


class TimestepEmbedder(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(reference.FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))


class ResBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=reference.LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))


class FinalLayer(nn.Module):
    def __init__(self, width, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=reference.LN_EPS)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))


class SimpleMLPAdaLN(nn.Module):
    """x (N, C), original timesteps t (N,), condition c (N, Z) -> [eps, v] (N, 2C)."""

    def __init__(self, in_channels, width, z_channels, depth):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
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
        return reference.head_forward(dict(self.named_parameters()), x, t, c)


class DiffLoss(nn.Module):
    def __init__(self, target_channels, z_channels, depth, width, num_sampling_steps=100):
        super().__init__()
        self.in_channels = target_channels
        self.num_sampling_steps = int(num_sampling_steps)
        self.net = SimpleMLPAdaLN(target_channels, width, z_channels, depth)

    @torch.no_grad()
    def sample(self, z, temperature=1.0, cfg=1.0, generator=None):
        """z (N, Z), [cond ; uncond] when cfg != 1 -> tokens (N, C), or the conditional half (N/2, C) under cfg."""
        return fastar.ops.diffusion_sample(z, self.net, num_steps=self.num_sampling_steps, temperature=temperature,
                                           cfg=float(cfg), generator=generator)
