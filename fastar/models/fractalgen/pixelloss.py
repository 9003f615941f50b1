"""PixelLoss, FractalGen's last level (LTH14/fractalgen models/pixelloss.py names): a 4-token causal transformer
[cond_proj(middle condition), r, g, b] whose positions 0, 1, 2 give 256-way logits for R, G, B, each a dot product
with its channel's embedding table (weight-tied) plus a bias. Inputs and outputs are pixels in the ImageNet-normalized
space of the data loader."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar.ops
from fastar.models.fractalgen.blocks import LN_EPS, Block, init_weights
from fastar.models.layers import Linear, decode_stack
from fastar.ops import sample_categorical

PIX_MEAN = (0.485, 0.456, 0.406)
PIX_STD = (0.229, 0.224, 0.225)


class MlmLayer(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, vocab_size))

    def forward(self, x_NC, word_embeddings_VC):
        return x_NC.to(word_embeddings_VC.dtype) @ word_embeddings_VC.T + self.bias  # x: bfloat16 in bf16_products


class PixelLoss(nn.Module):
    def __init__(self, c_channels, width, depth, num_heads, r_weight=1.0):
        super().__init__()
        self.cond_proj = Linear(c_channels, width)
        self.r_codebook = nn.Embedding(256, width)
        self.g_codebook = nn.Embedding(256, width)
        self.b_codebook = nn.Embedding(256, width)
        self.ln = nn.LayerNorm(width, eps=LN_EPS)
        self.blocks = nn.ModuleList(Block(width, num_heads, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=LN_EPS)
        self.r_weight = r_weight
        self.r_mlm, self.g_mlm, self.b_mlm = MlmLayer(256), MlmLayer(256), MlmLayer(256)
        for table in (self.r_codebook, self.g_codebook, self.b_codebook):
            nn.init.normal_(table.weight, std=0.02)
        init_weights(self)

    def to_ids(self, pixels_N3):
        """Normalized pixels -> (N, 3) int64 in [0, 255]; the 1e-2 jitter (training, as the official code) keeps
        round-half-to-even from skewing the targets."""
        std, mean = pixels_N3.new_tensor(PIX_STD), pixels_N3.new_tensor(PIX_MEAN)
        x = (pixels_N3 * std + mean) * 255
        jitter = torch.randn(x.shape, device=x.device).to(x.dtype)  # float32 draws: the same in a float64 run
        return (x + 1e-2 * jitter).round().long()

    def predict(self, ids_N3, cond_NC):
        """Logits (N, 3, 256) of R, G, B given the middle condition and the ids before each channel."""
        codebooks = (self.r_codebook, self.g_codebook, self.b_codebook)
        x = torch.cat([self.cond_proj(cond_NC)[:, None]] + [cb(ids_N3[:, i:i + 1]) for i, cb in enumerate(codebooks)],
                      dim=1)  # (N, 4, W)
        x = self.ln(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return torch.stack([mlm(x[:, i], cb.weight) for i, (mlm, cb) in
                            enumerate(zip((self.r_mlm, self.g_mlm, self.b_mlm), codebooks))], dim=1)

    def forward(self, target_N3, cond_list):
        """Training: (r_weight CE_R + CE_G + CE_B) / (r_weight + 2); in eval mode the plain mean (NLL, nats/dim)."""
        ids = self.to_ids(target_N3.reshape(target_N3.shape[0], 3))
        logits = self.predict(ids, cond_list[0])
        loss_N3 = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view(-1, 3)
        w = loss_N3.new_tensor([self.r_weight if self.training else 1.0, 1.0, 1.0])
        return (loss_N3 @ w / w.sum()).mean()

    def decode(self, ids_N3, cond_NC, i, caches, stack=None):
        """Logits (N, 256) of channel i from token i alone, keys and values of tokens < i read from caches. stack:
        the blocks' fastar.ops.transformer_decode layers, which then run them in one call."""
        codebooks = (self.r_codebook, self.g_codebook, self.b_codebook)
        x = self.ln(self.cond_proj(cond_NC) if i == 0 else codebooks[i - 1](ids_N3[:, i - 1]))[:, None]  # (N, 1, W)
        if stack is not None and self.blocks:
            x = fastar.ops.transformer_decode(x, stack, [k for k, _ in caches], [v for _, v in caches], i,
                                              [None] * len(self.blocks), heads=self.blocks[0].attn.num_heads,
                                              eps=self.blocks[0].norm1.eps)
        else:
            for block, (k_cache, v_cache) in zip(self.blocks, caches):
                x = block(x, (k_cache, v_cache, i))
        return (self.r_mlm, self.g_mlm, self.b_mlm)[i](self.norm(x[:, 0]), codebooks[i].weight)

    @torch.no_grad()
    def sample(self, cond_list, temperature, cfg, filter_threshold=0.0, generator=None, kv_cache=True):
        """R, then G, then B. kv_cache: one token per channel against cached keys and values (fastar); False: the
        official three forwards over all 4 tokens. Under CFG the rows are [cond; uncond] and the unconditional
        logits are lifted where the conditional probability is below filter_threshold. Returns (N, 3) normalized
        pixels (N = the conditional rows)."""
        cond = cond_list[0]
        guided = not cfg == 1.0
        rows = cond.shape[0]
        n = rows // 2 if guided else rows
        ids = torch.zeros(rows, 3, dtype=torch.long, device=cond.device)
        width, heads = self.cond_proj.out_features, self.blocks[0].attn.num_heads if self.blocks else 1
        caches = [tuple(cond.new_empty(rows, heads, 3, width // heads) for _ in range(2)) for _ in self.blocks]
        # a few rows (small batches: fractalar's pixels one at a time): the blocks of a step in one fastar call
        stack = decode_stack(self.blocks, cond.new_empty(rows, 1, width)) if kv_cache else None
        for i in range(3):
            logits = self.decode(ids, cond, i, caches, stack) if kv_cache else self.predict(ids, cond)[:, i]
            logits = logits * temperature  # the official temperature multiplies
            if guided:
                logits = guided_logits(logits[:n], logits[n:], cfg, filter_threshold)
            drawn = sample_categorical(logits.float(), generator=generator)  # a float64 model's too
            ids[:, i] = torch.cat([drawn, drawn]) if guided else drawn
        mean, std = cond.new_tensor(PIX_MEAN), cond.new_tensor(PIX_STD)
        return (ids[:n].to(cond.dtype) / 255 - mean) / std


def guided_logits(cond_NV, uncond_NV, cfg, filter_threshold):
    """uncond + cfg (cond - uncond), with uncond raised to cond's shape where cond's probability is tiny, so that
    guidance does not amplify values the conditional model rules out."""
    low = cond_NV.softmax(-1) < filter_threshold
    lifted = torch.maximum(uncond_NV, cond_NV - cond_NV.amax(-1, keepdim=True) + uncond_NV.amax(-1, keepdim=True))
    uncond_NV = torch.where(low, lifted, uncond_NV)
    return uncond_NV + cfg * (cond_NV - uncond_NV)
