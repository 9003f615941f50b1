"""The pre-norm ViT block of FractalGen's MAR levels and PixelLoss (timm 0.9.12 names: norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2), bidirectional or causal, attention through fastar.ops.attention.

The official code writes this attention as q k^T in float32 plus a -inf bias and, in the MAR levels, dropout on the
attention probabilities (0.1 in training); fastar.ops.attention fuses the softmax, so that dropout is not applied
here (the projection and MLP dropouts are)."""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import fastar.ops
from fastar.models.layers import Dropout, Linear, block_decode_operands

LN_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim, num_heads, causal, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.mask = fastar.ops.AttentionMask.causal() if causal else None
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x_BLC, cache=None):
        """cache: None (the whole sequence) or (k_cache, v_cache, pos) to decode the tokens from pos (causal only)."""
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(x_BLC).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out_BHLD = attend(q, k, v, self.mask, cache)
        return self.proj_drop(self.proj(out_BHLD.transpose(1, 2).reshape(B, L, C)))


def attend(q, k, v, mask, cache):
    """q, k, v (B, H, L, D). cache None: attention over the L tokens with mask. cache (k_cache, v_cache, pos): the
    tokens at pos .. pos + L - 1 (causal): their k and v are written into the caches (B, H, Lmax, D), then the
    queries attend over the prefix through attention_decode."""
    if cache is None:
        return fastar.ops.attention(q, k, v, mask)
    k_cache, v_cache, pos = cache
    L = q.shape[2]
    k_cache[:, :, pos:pos + L], v_cache[:, :, pos:pos + L] = k, v
    return fastar.ops.attention_decode(q.to(k_cache.dtype), k_cache, v_cache, pos + L)  # q in bf16_products' dtype


class Mlp(nn.Module):
    """timm's Mlp: fc1, GELU, dropout, fc2, dropout."""

    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.drop = Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.fc1.forward_gelu(x))))


class Block(nn.Module):
    def __init__(self, dim, num_heads, causal=False, proj_drop=0.0, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, causal, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio, proj_drop)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))

    def forward_rows(self, x_BLC, index_BP):
        """self(x)[b, index_BP[b]] for a bidirectional block, computing past the keys and values only the rows
        asked for: every row's k and v, those rows' attention, projection and MLP (MAR's last decoder block in
        sampling, where only the tokens predicted at this step are read). In training its dropout draws masks for
        those rows only."""
        if self.attn.mask is not None:
            raise ValueError("Block.forward_rows: a bidirectional block only (a causal query sees its own prefix)")
        B, L, C = x_BLC.shape
        H = self.attn.num_heads
        q, k, v = self.attn.qkv(self.norm1(x_BLC)).view(B, L, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q = q.gather(2, index_BP[:, None, :, None].expand(B, H, -1, C // H))
        x = x_BLC.gather(1, index_BP[..., None].expand(-1, -1, C))
        x = x + self.attn.proj_drop(self.attn.proj(attend(q, k, v, None, None).transpose(1, 2).reshape(x.shape)))
        return x + self.mlp(self.norm2(x))

    def decode_operands(self):
        """This block as a layer of fastar.ops.transformer_decode (layers.block_decode_operands)."""
        return block_decode_operands(self.norm1, self.attn.qkv, self.attn.proj, self.norm2, self.mlp.fc1,
                                     self.mlp.fc2)


def apply_block(block, checkpointed, *args):
    """block(*args); with checkpointed (the official grad_checkpointing) in training under autograd, through
    torch.utils.checkpoint: its activations are recomputed in the backward instead of kept."""
    if checkpointed and block.training and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def init_weights(module):
    """The official init of every level: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def patchify(x_B3HW, p):
    """(B, 3, H, W) -> (B, H/p * W/p, 3 p p), patches in raster order, channels outermost within a patch."""
    B, C, H, W = x_B3HW.shape
    x = x_B3HW.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x_BLD, p, h):
    """(B, h*h, 3 p p) -> (B, 3, h p, h p)."""
    B = x_BLD.shape[0]
    return x_BLD.reshape(B, h, h, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, h * p, h * p)
