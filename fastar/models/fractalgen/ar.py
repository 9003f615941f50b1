"""FractalGen's AR level (LTH14/fractalgen models/ar.py names, after LlamaGen): a causal transformer over
[cond, patch_0 .. patch_{S-1}] with a learned position embedding, LayerNorm, 2-D RoPE (the cond token's rotation is
all zeros, as the official table makes it), RMSNorm, SwiGLU; output i is the condition of patch i.

Sampling decodes one token per step against a key/value cache through fastar.ops.attention_decode (the official
code recomputes its input embeddings each step and keeps an fp32 cache); with few rows (small batches) a step's
blocks run as one fastar.ops.transformer_decode call (llama blocks)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar.ops
from fastar.models.fractalgen.blocks import LN_EPS, apply_block, attend, init_weights, patchify, unpatchify
from fastar.models.layers import Linear, decode_stack

NORM_EPS = 1e-5
ROPE_BASE = 10000


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU with LlamaGen's hidden width: 2/3 of 4 dim, rounded up to a multiple of 256."""

    def __init__(self, dim, drop):
        super().__init__()
        hidden = -(-int(2 * 4 * dim / 3) // 256) * 256
        self.w1 = Linear(dim, hidden, bias=False)
        self.w3 = Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(drop)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_2d(grid, head_dim, base=ROPE_BASE):
    """(1 + grid^2, head_dim / 2, 2) cos / sin per rotated pair: the first half of the pairs turns with the row,
    the second with the column; row 0 (the cond token) is all zeros."""
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2)[: half // 2].float() / half)
    t = torch.outer(torch.arange(grid).float(), freqs)  # (grid, head_dim / 4)
    angles = torch.cat([t[:, None].expand(-1, grid, -1), t[None].expand(grid, -1, -1)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(1, half, 2), torch.stack([angles.cos(), angles.sin()], dim=-1)])


def apply_rope(x_BLHD, rope_L2):
    """Rotates interleaved pairs (x[2i], x[2i+1]) of each head by the angle of their position."""
    x = x_BLHD.float().unflatten(-1, (-1, 2))
    c, s = rope_L2[None, :, None, :, 0], rope_L2[None, :, None, :, 1]
    out = torch.stack([x[..., 0] * c - x[..., 1] * s, x[..., 1] * c + x[..., 0] * s], dim=-1)
    return out.flatten(3).type_as(x_BLHD)


class Attention(nn.Module):
    def __init__(self, dim, n_head, resid_drop):
        super().__init__()
        self.dim, self.n_head = dim, n_head
        self.wqkv = Linear(dim, 3 * dim, bias=False)
        self.wo = Linear(dim, dim, bias=False)
        self.resid_dropout = nn.Dropout(resid_drop)

    def forward(self, x_BLC, rope, cache=None):
        """cache: None (the whole causal sequence) or (k_cache, v_cache, pos) to decode the token at pos."""
        B, L, C = x_BLC.shape
        q, k, v = self.wqkv(x_BLC).view(B, L, 3, self.n_head, C // self.n_head).unbind(2)
        q, k = apply_rope(q, rope).transpose(1, 2), apply_rope(k, rope).transpose(1, 2)  # (B, H, L, D)
        out = attend(q, k, v.transpose(1, 2), fastar.ops.AttentionMask.causal(), cache)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(B, L, C)))


class TransformerBlock(nn.Module):
    def __init__(self, dim, n_head, drop):
        super().__init__()
        self.attention = Attention(dim, n_head, drop)
        self.feed_forward = FeedForward(dim, drop)
        self.attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)

    def forward(self, x, rope, cache=None):
        h = x + self.attention(self.attention_norm(x), rope, cache)
        return h + self.feed_forward(self.ffn_norm(h))

    def decode_operands(self):
        """This block as a llama layer of fastar.ops.transformer_decode (its BLOCKS order), detached; the products'
        decode_weights copies where set."""
        a, f = self.attention, self.feed_forward
        return [self.attention_norm.weight.detach(), a.wqkv.decode_operands()[0], a.wo.decode_operands()[0],
                self.ffn_norm.weight.detach(), *(m.decode_operands()[0] for m in (f.w1, f.w3, f.w2))]


class AR(nn.Module):
    def __init__(self, seq_len, patch_size, cond_embed_dim, embed_dim, num_blocks, num_heads, proj_dropout=0.1,
                 grad_checkpointing=False):
        super().__init__()
        self.seq_len, self.patch_size, self.num_heads = seq_len, patch_size, num_heads
        self.grad_checkpointing = grad_checkpointing
        self.grid = int(seq_len ** 0.5)
        if self.grid ** 2 != seq_len:
            raise ValueError(f"AR: seq_len must be a square, got {seq_len}")
        self.patch_emb = Linear(3 * patch_size ** 2, embed_dim)
        self.patch_emb_ln = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len + 1, embed_dim))
        self.cond_emb = Linear(cond_embed_dim, embed_dim)
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, proj_dropout) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.rope = rope_2d(self.grid, embed_dim // num_heads)  # not a buffer: absent from the checkpoints
        nn.init.normal_(self.pos_embed_learned, std=0.02)
        init_weights(self)

    def embed(self, patches_BLD, cond_BC, start):
        """Tokens [start, start + L) of [cond, patches...]: patches_BLD are the patches before those positions."""
        x = self.patch_emb(patches_BLD)
        if start == 0:
            x = torch.cat([self.cond_emb(cond_BC)[:, None], x], dim=1)
        L = x.shape[1]
        return self.patch_emb_ln(x + self.pos_embed_learned[:, start:start + L])

    def transformer(self, x, start, caches=None, stack=None):
        """stack: the blocks' transformer_decode layers (decode_stack): the decode step's blocks in one fastar call."""
        rope = self.rope[start:start + x.shape[1]].to(x.device)
        if stack is not None:
            x = fastar.ops.transformer_decode(x, stack, [k for k, _ in caches], [v for _, v in caches], start,
                                              [None] * len(stack), heads=self.num_heads,
                                              eps=self.blocks[0].attention_norm.eps, block="llama", rope=rope)
            return self.norm(x)
        for i, block in enumerate(self.blocks):
            x = apply_block(block, self.grad_checkpointing, x, rope, None if caches is None else (*caches[i], start))
        return self.norm(x)

    def decode_stack(self, x):
        """The blocks as fastar.ops.transformer_decode layers for decode steps of x's rows, or None
        (fastar.models.layers.decode_stack)."""
        return decode_stack(self.blocks, x)

    def forward(self, imgs, cond_list):
        """Training: every patch goes to the next level with the output before it as its condition."""
        patches = patchify(imgs, self.patch_size)  # (B, S, 3 p p)
        x = self.transformer(self.embed(patches[:, :-1], cond_list[0], 0), 0)  # (B, S, C)
        p = self.patch_size
        return patches.reshape(-1, 3, p, p), [x.flatten(0, 1)], imgs.new_zeros(())

    @torch.no_grad()
    def sample(self, cond_list, num_iter, cfg, cfg_schedule, temperature, filter_threshold, next_level, generator=None,
               progress=None):
        """One patch per step (num_iter is ignored, as in the official code); cond rows are [cond; uncond] under
        CFG, and the child samples each patch from this level's output at its position."""
        cond = cond_list[0]
        guided = not cfg == 1.0
        rows = cond.shape[0]
        bsz = rows // 2 if guided else rows
        C, H = self.pos_embed_learned.shape[-1], self.num_heads
        caches = [tuple(cond.new_empty(rows, H, self.seq_len, C // H) for _ in range(2)) for _ in self.blocks]
        patches = cond.new_zeros(bsz, self.seq_len, 3 * self.patch_size ** 2)
        stack = self.decode_stack(cond.new_empty(rows, 1, C))
        for step in progress(range(self.seq_len)) if progress else range(self.seq_len):
            prev = patches[:, step - 1:step] if step else patches[:, :0]
            x = self.embed(torch.cat([prev, prev]) if guided else prev, cond, step)
            middle = self.transformer(x, step, caches, stack)[:, -1]  # (rows, C)
            cfg_iter = 1 + (cfg - 1) * (step + 1) / self.seq_len if cfg_schedule == "linear" else cfg
            out = next_level(cond_list=[middle], cfg=cfg_iter, temperature=temperature,
                             filter_threshold=filter_threshold, generator=generator)
            patches[:, step] = out.reshape(bsz, -1).to(patches.dtype)
        return unpatchify(patches, self.patch_size, self.grid)
