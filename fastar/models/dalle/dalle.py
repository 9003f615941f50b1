"""DALL-E's transformer (Ramesh et al. 2021): one decoder-only stream of text then image tokens, on fastar ops.

Stream: [bos, text_1..text_T, image_1..image_{N-1}] (N = grid^2; the last image token is only a target), so the
attention masks see a text prefix of T + 1 positions and the image grid after it. Every layer is row, column or
convolutional attention over the image (text causal, every image token sees all text): column where
(i - 2) mod 4 == 0 (1-based), the last layer conv, row otherwise. Text padding (id 0) becomes a padding token of
its own per position; images get broadcast row + column position embeddings. Loss: 1/8 text + 7/8 image
cross-entropy. Training runs fastar.ops.attention under the layer's mask; sampling prefills the text once into
preallocated KV caches and decodes one image token per step with fastar.ops.attention_decode under the same
mask, which reads only the keys it shows; where fastar.ops.linear takes the step's rows (few images, CPU) the whole
stack of a step is one fastar.ops.transformer_decode call.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar
from fastar.models import layers
from fastar.models.checks import check_values
from fastar.models.layers import Linear
from fastar.ops import sample_categorical
from fastar.ops import AttentionMask


@dataclass
class DALLEConfig:
    width: int = 256
    depth: int = 4
    heads: int = 4  # head size width / heads (64 in the paper)
    text_vocab: int = 16384  # BPE vocabulary, id 0 = padding
    text_len: int = 256  # text positions, each with its own padding token
    image_vocab: int = 8192  # the dVAE's codes
    grid: int = 32  # image tokens grid x grid
    conv_kernel: int = 11  # the conv layer's window side
    mlp_ratio: int = 4


# The paper's model: 64 layers, 62 heads of 64, width 3968 (about 12 B parameters).
DALLE_12B = DALLEConfig(width=3968, depth=64, heads=62)


def layer_kind(i, depth):
    """The mask of layer i (0-based) of `depth`: the paper's 1-based (i - 2) mod 4 == 0 is column, the last conv."""
    if i == depth - 1:
        return "conv"
    return "column" if (i + 1 - 2) % 4 == 0 else "row"


class KVCache:
    """Preallocated (B, H, L, D) keys and values of one layer, filled position by position; dtype: like's, or
    bfloat16 / float16 (half the bytes each decode step reads)."""

    def __init__(self, B, H, L, D, like, dtype=None):
        self.k, self.v = (like.new_empty(B, H, L, D, dtype=dtype or like.dtype) for _ in range(2))
        self.len = 0


class Attention(nn.Module):
    def __init__(self, cfg: DALLEConfig, mask: AttentionMask):
        super().__init__()
        self.heads, self.mask = cfg.heads, mask
        self.qkv = Linear(cfg.width, 3 * cfg.width)
        self.proj = Linear(cfg.width, cfg.width)

    def forward(self, x_BLC, cache: KVCache | None = None):
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(x_BLC).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, D)
        if cache is None:
            o = (column_attention if self.mask.kind == "column" else fastar.ops.attention)(q, k, v, self.mask)
        else:  # inference: this step's keys join the cache, its queries are the cache's last L positions
            cache.k[:, :, cache.len:cache.len + L] = k
            cache.v[:, :, cache.len:cache.len + L] = v
            cache.len += L
            o = fastar.ops.attention_decode(q.to(cache.k.dtype).contiguous(), cache.k, cache.v, cache.len,
                                            self.mask).to(x_BLC.dtype)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


def column_attention(q, k, v, mask):
    """Column-masked attention by OpenAI's transpose trick: each column of the (transposed) grid is a sequence of
    grid queries, causal over its text + grid keys (the text keys shared), so no kernel visits the hidden image keys
    between a column's tokens; the text queries run causal over the text. Equal to attention(q, k, v, mask); 1.65x
    faster forward + backward on the CPU at 257 + 1023 tokens (the direct mask leaves every image tile partial).
    q, k, v (B, H, T + n, D), n <= grid^2 image slots."""
    B, H, L, D = q.shape
    T, W = mask.text_len, mask.grid
    n = L - T

    def columns(x):  # (B, H, T + n, D) -> (B * W, H, W, D): column c's tokens in row order; the grid's tail padded
        img = F.pad(x[:, :, T:], (0, 0, 0, W * W - n))
        return img.view(B, H, W, W, D).permute(0, 3, 1, 2, 4).reshape(B * W, H, W, D)

    def with_text(x):  # (B * W, H, T + W, D): every column's keys after the shared text keys
        return torch.cat([x[:, None, :, :T].expand(B, W, H, T, D).reshape(B * W, H, T, D), columns(x)], 2)

    o = fastar.ops.attention(columns(q), with_text(k), with_text(v), AttentionMask.causal())  # (B * W, H, W, D)
    o = o.view(B, W, H, W, D).permute(0, 2, 3, 1, 4).reshape(B, H, W * W, D)[:, :, :n]
    text = slice(0, T)
    return torch.cat([fastar.ops.attention(q[:, :, text], k[:, :, text], v[:, :, text], AttentionMask.causal()), o],
                     2)


class Block(nn.Module):
    """Pre-norm attention + GELU MLP."""

    def __init__(self, cfg: DALLEConfig, mask: AttentionMask):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg, mask)
        self.mlp = nn.Sequential(Linear(cfg.width, cfg.mlp_ratio * cfg.width), nn.GELU(),
                                 Linear(cfg.mlp_ratio * cfg.width, cfg.width))

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        fc1, fc2 = self.mlp[0], self.mlp[2]  # the Sequential keeps the official keys (mlp.0, mlp.2)
        return x + fc2(fc1.forward_gelu(self.ln_2(x)))

    def decode_operands(self):
        """This block as a layer of fastar.ops.transformer_decode (layers.block_decode_operands)."""
        return layers.block_decode_operands(self.ln_1, self.attn.qkv, self.attn.proj, self.ln_2, self.mlp[0],
                                            self.mlp[2])


class DALLE(nn.Module):
    """DALL-E's transformer (Ramesh et al. 2021; see the module docstring): embeddings of text (B, text_len)
    and image tokens (B, grid^2), blocks with row / column / conv masks, and the text and image heads. forward:
    teacher-forced logits; generate: image tokens (B, grid^2) sampled one per step on KV caches."""

    def __init__(self, cfg: DALLEConfig = DALLEConfig()):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"DALLE: width {cfg.width} must be a multiple of heads {cfg.heads}")
        self.cfg = cfg
        C, T = cfg.width, cfg.text_len
        self.bos = nn.Parameter(torch.randn(C) * 0.02)
        self.text_emb = nn.Embedding(cfg.text_vocab + T, C)  # ids >= text_vocab: the padding token of each position
        self.text_pos_emb = nn.Embedding(T + 1, C)  # bos + text
        self.image_emb = nn.Embedding(cfg.image_vocab, C)
        self.image_row_emb, self.image_col_emb = nn.Embedding(cfg.grid, C), nn.Embedding(cfg.grid, C)
        self.masks = [AttentionMask.dalle(layer_kind(i, cfg.depth), T + 1, cfg.grid, cfg.conv_kernel)
                      for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, m) for m in self.masks)
        self.ln_f = nn.LayerNorm(C)
        self.to_text_logits = Linear(C, cfg.text_vocab + T)
        self.to_image_logits = Linear(C, cfg.image_vocab)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---- inputs ----

    def check_text(self, text_BT):
        """Raises a ValueError naming the problem unless text_BT is (B, text_len) int64 ids in [0, text_vocab)."""
        T, V = self.cfg.text_len, self.cfg.text_vocab
        if not isinstance(text_BT, torch.Tensor):
            raise TypeError(f"DALLE: text must be a (B, text_len) int64 tensor, got {type(text_BT).__name__}")
        if text_BT.dim() != 2 or text_BT.dtype != torch.long:
            raise ValueError(f"DALLE: text must be (B, text_len) int64, got {text_BT.dtype} {tuple(text_BT.shape)}")
        if text_BT.shape[1] != T:
            raise ValueError(f"DALLE: text has {text_BT.shape[1]} tokens, the model takes text_len={T} (pad with 0)")
        check_values("DALLE", text_BT, 0, V - 1, f"text token ids must be in [0, {V})")

    def check_image(self, image_BN, max_len, batch=None):
        """Raises a ValueError unless image_BN is (B, n) int64 ids in [0, image_vocab) with n <= max_len and, when
        given, B == batch."""
        N = self.cfg.grid ** 2
        if image_BN.dim() != 2 or image_BN.dtype != torch.long:
            raise ValueError(f"DALLE: image tokens must be (B, n) int64, got {image_BN.dtype} "
                             f"{tuple(image_BN.shape)}")
        if batch is not None and image_BN.shape[0] != batch:
            raise ValueError(f"DALLE: the image tokens' batch {image_BN.shape[0]} must be the text's, {batch}")
        if image_BN.shape[1] > max_len:
            raise ValueError(f"DALLE: got {image_BN.shape[1]} image tokens, the {self.cfg.grid} x {self.cfg.grid} "
                             f"grid takes at most {max_len} here ({N} in all)")
        V = self.cfg.image_vocab
        check_values("DALLE", image_BN, 0, V - 1, f"image token ids must be in [0, {V})")

    def embed_text(self, text_BT):
        """(B, T) ids, 0 = padding -> (B, T + 1, C): bos then text, each padding its position's own token."""
        self.check_text(text_BT)
        B, T = text_BT.shape
        pos = torch.arange(T, device=text_BT.device)
        ids = torch.where(text_BT == 0, self.cfg.text_vocab + pos, text_BT)
        x = torch.cat([self.bos.expand(B, 1, -1), self.text_emb(ids)], 1)
        return x + self.text_pos_emb.weight[None, :T + 1]

    def embed_image(self, image_Bn, start=0):
        """Image tokens at raster positions start.. -> (B, n, C) with row and column embeddings."""
        pos = torch.arange(start, start + image_Bn.shape[1], device=image_Bn.device)
        W = self.cfg.grid
        return self.image_emb(image_Bn) + self.image_row_emb(pos // W) + self.image_col_emb(pos % W)

    # ---- training ----

    def forward(self, text_BT, image_BN):
        """Teacher forcing: (text logits (B, T, text_vocab + T), image logits (B, N, image_vocab))."""
        N, T = self.cfg.grid ** 2, self.cfg.text_len
        self.check_image(image_BN, N, batch=text_BT.shape[0])
        if image_BN.shape[1] != N:
            raise ValueError(f"DALLE: training takes the whole grid, {N} image tokens, got {image_BN.shape[1]}")
        x = torch.cat([self.embed_text(text_BT), self.embed_image(image_BN[:, :-1])], 1)  # (B, T + N, C)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.to_text_logits(x[:, :T]), self.to_image_logits(x[:, T:])

    # ---- sampling ----

    @torch.no_grad()
    def generate(self, text_BT, *, image_prefix=None, temperature=1.0, top_k=0, top_p=1.0, generator=None,
                 progress=False, cache_dtype=None):
        """Image tokens (B, N) after text_BT, one per step on the KV caches; image_prefix (B, m): given first
        tokens (e.g. the top rows of an image), kept. progress: a bar over the tokens (tqdm, left off when done).
        cache_dtype: torch.bfloat16 or torch.float16 keeps the KV caches in 16 bits under a float32 model (DALL-E
        ran in float16): each step reads half the bytes; the queries meet them rounded to that dtype. None: the
        model's dtype."""
        self.check_text(text_BT)  # first: the default prefix takes its batch and device
        B, T, N, W = text_BT.shape[0], self.cfg.text_len, self.cfg.grid ** 2, self.cfg.grid
        prefix = text_BT.new_zeros(B, 0) if image_prefix is None else image_prefix
        self.check_image(prefix, N, batch=B)
        C, H = self.cfg.width, self.cfg.heads
        if cache_dtype not in (None, self.bos.dtype) and not (
                self.bos.dtype == torch.float32 and cache_dtype in (torch.bfloat16, torch.float16)):
            raise ValueError(f"DALLE.generate: cache_dtype must be None, the model's {self.bos.dtype} or (float32 "
                             f"model) torch.bfloat16 / torch.float16, got {cache_dtype}")
        caches = [KVCache(B, H, T + N, C // H, self.bos, cache_dtype) for _ in self.blocks]
        x = torch.cat([self.embed_text(text_BT), self.embed_image(prefix)], 1)  # prefill: text and the prefix
        tokens = [prefix]
        stack = layers.decode_stack(self.blocks, x.new_empty(B, 1, C))  # the decode steps in one call each, or None
        steps = range(prefix.shape[1], N)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="DALL-E tokens", leave=False)
        for j in steps:
            if x.shape[1] == 1 and stack is not None:  # one token per sequence: the stack in one fastar call
                x = fastar.ops.transformer_decode(x, stack, [c.k for c in caches], [c.v for c in caches],
                                                  caches[0].len, self.masks, heads=H, eps=self.blocks[0].ln_1.eps)
                for c in caches:
                    c.len += 1
            else:  # the prefill (text and prefix), and decode steps fastar.ops.linear does not take
                for block, cache in zip(self.blocks, caches):
                    x = block(x, cache)
            logits = self.to_image_logits(self.ln_f(x[:, -1])).float()  # (B, image_vocab)
            nxt = sample_categorical(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            tokens.append(nxt[:, None])
            if j + 1 < N:
                x = self.embed_image(nxt[:, None], start=j)
        return torch.cat(tokens, 1)


def loss(model, text_BT, image_BN):
    """(1/8 text + 7/8 image cross-entropy, text ce, image ce) of model(text, image) (a DALLE, or one wrapped in
    DistributedDataParallel); the text targets include the per-position padding tokens."""
    text_logits, image_logits = model(text_BT, image_BN)
    text_vocab = text_logits.shape[-1] - text_BT.shape[1]
    pos = torch.arange(text_BT.shape[1], device=text_BT.device)
    text_target = torch.where(text_BT == 0, text_vocab + pos, text_BT)
    ce_text = F.cross_entropy(text_logits.flatten(0, 1), text_target.flatten())
    ce_image = F.cross_entropy(image_logits.flatten(0, 1), image_BN.flatten())
    return (ce_text + 7 * ce_image) / 8, ce_text, ce_image


def parameter_count(cfg: DALLEConfig):
    """The layer formulas: embeddings, per block 12 C^2 + 13 C (qkv, proj, MLP of ratio 4, two LayerNorms), heads."""
    C, T, r = cfg.width, cfg.text_len, cfg.mlp_ratio
    emb = C + (cfg.text_vocab + T) * C + (T + 1) * C + cfg.image_vocab * C + 2 * cfg.grid * C
    block = (3 * C * C + 3 * C) + (C * C + C) + (r * C * C + r * C) + (r * C * C + C) + 4 * C
    heads = 2 * C + (C + 1) * (cfg.text_vocab + T) + (C + 1) * cfg.image_vocab
    return emb + cfg.depth * block + heads
