"""FractalGen's MAR level (LTH14/fractalgen models/mar.py names): one bidirectional transformer over
[guiding pixel?, cond_{n-1} .. cond_0, patches] with masked patches replaced by mask_token in place. Its outputs
at the patches, and their top / right / bottom / left neighbours (zero at the border), are the five conditions of
each patch at the next level. Attention through fastar.ops.attention (the official code: float32 q k^T, no mask)."""
import math

import torch
import torch.nn as nn

from fastar.models.fractalgen.blocks import LN_EPS, Block, apply_block, init_weights, patchify, unpatchify
from fastar.models.fractalgen.pixelloss import PixelLoss
from fastar.models.layers import Linear, rng_device


def truncnorm_mask_ratios(n, device):
    """n draws of truncnorm(-4, 0, loc=1, scale=0.25) (the official scipy distribution, here from torch's RNG)."""
    lo = 0.5 * math.erfc(4 / math.sqrt(2))  # Phi(-4); Phi(0) = 0.5
    u = lo + (0.5 - lo) * torch.rand(n, device=device, dtype=torch.float64)
    return (1.0 + 0.25 * torch.special.ndtri(u)).clamp(0, 1)


def neighbour_conds(middle_BLC, h):
    """[middle, top, right, bottom, left]: the output at each patch and at its four neighbours, zero off the grid."""
    B, L, C = middle_BLC.shape
    m = middle_BLC.reshape(B, h, h, C)
    pad = nn.functional.pad(m, (0, 0, 1, 1, 1, 1))  # (B, h + 2, h + 2, C)
    shifted = [pad[:, :-2, 1:-1], pad[:, 1:-1, 2:], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2]]
    return [middle_BLC] + [s.reshape(B, L, C) for s in shifted]


class MAR(nn.Module):
    def __init__(self, seq_len, patch_size, cond_embed_dim, embed_dim, num_blocks, num_heads, proj_dropout=0.1,
                 num_conds=1, guiding_pixel=False, grad_checkpointing=False):
        super().__init__()
        self.seq_len, self.patch_size, self.grad_checkpointing = seq_len, patch_size, grad_checkpointing
        self.num_conds, self.guiding_pixel = num_conds, guiding_pixel
        self.grid = int(seq_len ** 0.5)
        if self.grid ** 2 != seq_len:
            raise ValueError(f"MAR: seq_len must be a square, got {seq_len}")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_emb = Linear(3 * patch_size ** 2, embed_dim)
        self.patch_emb_ln = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.cond_emb = Linear(cond_embed_dim, embed_dim)
        if guiding_pixel:
            self.pix_proj = Linear(3, embed_dim)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len + num_conds + guiding_pixel, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, proj_drop=proj_dropout) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_embed_learned, std=0.02)
        init_weights(self)
        if guiding_pixel:  # the mean colour of the patch, predicted from the middle condition before the patch
            self.guiding_pixel_loss = PixelLoss(c_channels=cond_embed_dim, width=128, depth=3, num_heads=4,
                                                r_weight=5.0)

    def predict(self, patches_BLD, mask_BL, cond_list):
        """The five next-level conditions (B, S, C) each; mask_BL 1 where the patch is still to be generated."""
        x = self.patch_emb(patches_BLD)
        prefix = [self.cond_emb(cond_list[i]) for i in reversed(range(self.num_conds))]  # cond_0 next to the patches
        if self.guiding_pixel:
            prefix.insert(0, self.pix_proj(cond_list[-1]))
        n = len(prefix)
        x = torch.cat([torch.stack(prefix, dim=1), torch.where(mask_BL.bool()[..., None], self.mask_token.to(x.dtype),
                                                               x)], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed_learned)
        for block in self.blocks:
            x = apply_block(block, self.grad_checkpointing, x)
        return neighbour_conds(self.norm(x)[:, n:], self.grid)

    def forward(self, imgs, cond_list):
        """Training: a truncated-normal share of the patches masked per image (eval: 1..S masked, shared by the
        batch, the NLL estimate); only the masked patches and their conditions go down."""
        patches = patchify(imgs, self.patch_size)  # (B, S, 3 p p)
        B, S, _ = patches.shape
        orders = torch.rand(B, S, device=imgs.device).argsort(dim=1)
        if self.training:
            num_masked = (S * truncnorm_mask_ratios(B, imgs.device)).ceil()
        else:
            num_masked = torch.full((B,), float(torch.randint(S, ()).item() + 1), device=imgs.device)
        mask = (orders < num_masked[:, None]).to(imgs.dtype)  # (B, S), num_masked ones in random places
        gp_loss = imgs.new_zeros(())
        if self.guiding_pixel:
            gp = imgs.mean((-1, -2))  # (B, 3)
            gp_loss = self.guiding_pixel_loss(gp, cond_list)
            cond_list = [*cond_list, gp]
        keep = mask.flatten().bool()
        conds = [c.flatten(0, 1)[keep] for c in self.predict(patches, mask, cond_list)]
        p = self.patch_size
        return patches.flatten(0, 1)[keep].reshape(-1, 3, p, p), conds, gp_loss

    @torch.no_grad()
    def sample(self, cond_list, num_iter, cfg, cfg_schedule, temperature, filter_threshold, next_level, generator=None,
               progress=None):
        """MAR's cosine schedule over a random order per image; at each step the child generates the patches chosen
        now from this level's conditions (depth-first). Rows are [cond; uncond] under CFG."""
        guided = not cfg == 1.0
        rows = cond_list[0].shape[0]
        bsz, S, dev = (rows // 2 if guided else rows), self.seq_len, cond_list[0].device
        if self.guiding_pixel:
            gp = self.guiding_pixel_loss.sample(cond_list, temperature, cfg, filter_threshold, generator=generator)
            cond_list = [*cond_list, torch.cat([gp, gp]) if guided else gp]
        mask = torch.ones(bsz, S, device=dev)
        patches = cond_list[0].new_zeros(bsz, S, 3 * self.patch_size ** 2)
        orders = torch.rand(bsz, S, generator=generator, device=rng_device(generator)).to(dev).argsort(dim=1)
        num_iter = min(S, num_iter)
        for step in progress(range(num_iter)) if progress else range(num_iter):
            twice = (lambda t: torch.cat([t, t])) if guided else (lambda t: t)
            conds = self.predict(twice(patches), twice(mask), cond_list)
            # the next round keeps floor(S cos(pi/2 (step+1)/num_iter)) masked: at least 1, fewer than now
            mask_len = max(1, min(int(mask[0].sum().item()) - 1, math.floor(S * math.cos(math.pi / 2 * (step + 1) /
                                                                                       num_iter))))
            mask_next = torch.zeros(bsz, S, device=dev).scatter_(1, orders[:, :mask_len], 1.0)
            to_pred = mask.bool() if step >= num_iter - 1 else mask.bool() ^ mask_next.bool()
            mask = mask_next
            cfg_iter = 1 + (cfg - 1) * (S - mask_len) / S if cfg_schedule == "linear" else cfg
            rows_pred = twice(to_pred)
            out = next_level(cond_list=[c[rows_pred] for c in conds], cfg=cfg_iter, temperature=temperature,
                             filter_threshold=filter_threshold, generator=generator)
            patches[to_pred] = out.reshape(out.shape[0], -1).to(patches.dtype)
        return unpatchify(patches, self.patch_size, self.grid)
