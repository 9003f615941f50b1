"""The rows of fastar.patch.fractalgen: LTH14/fractalgen's manual attentions (models/ar.py Attention: causal with 2-D
RoPE, and its KVCache in sampling; models/mar.py Attention: bidirectional; models/pixelloss.py CausalAttention) on
fastar.ops.attention / attention_decode, and PixelLoss.sample as one token per channel against a key/value cache
(attention_decode) with its categorical draws on fastar.ops.sample_categorical.
The contracts (signatures, attributes, the causal 0 / -inf bias, the kv_cache.update protocol) are the official
code's; the bodies are fastar's.

The official attentions compute q k^T in float32 and then P v; fastar's kernels run in the inputs' dtype with float32
accumulation (the same for float32 inputs; under autocast P v is in the autocast dtype either way)."""
import torch

import fastar
from fastar.models.fractalgen.ar import apply_rope
from fastar.models.fractalgen.pixelloss import guided_logits
from fastar.patch._table import Row

CAUSAL = fastar.ops.AttentionMask.causal()
_decode_masks = [None, None]  # [the last KV-cache mask seen, whether it is causal over input_pos]


def _dropout_declines(self):
    p = self.attn_drop.p if hasattr(self, "attn_drop") else self.attn_dropout_p
    if self.training and p > 0:
        return "attention dropout in training (fastar's attention has none)"
    return None


# ---- models/ar.py: Attention.forward(x, freqs_cis, input_pos, mask) ----

def _causal_rows(mask, input_pos, cache_len):
    """Whether mask (L, cache_len) bool is the official causal_mask[input_pos] for contiguous positions p0..p0+L-1
    (AR.predict builds one per step and passes it to every block: checked once)."""
    if _decode_masks[0] is not mask:
        pos = input_pos.reshape(-1).tolist()
        ok = (mask.dtype == torch.bool and tuple(mask.shape) == (len(pos), cache_len)
              and pos == list(range(pos[0], pos[0] + len(pos)))
              and torch.equal(mask, torch.arange(cache_len, device=mask.device)[None] <= input_pos.reshape(-1, 1)
                              .to(mask.device)))
        _decode_masks[:] = mask, ok
    return _decode_masks[1]


def _ar_declines(self, x, freqs_cis=None, input_pos=None, mask=None):
    if freqs_cis is None:
        return "no freqs_cis (the official AR always passes its RoPE table)"
    if self.n_kv_head != self.n_head:
        return f"{self.n_kv_head} kv heads for {self.n_head} query heads (FractalGen's AR has one per head)"
    if self.kv_cache is None:
        if mask is not None:
            return "a mask without the KV cache (the official AR trains with mask=None, causal)"
        return _dropout_declines(self)
    if input_pos is None or mask is None:
        return "the KV cache without input_pos and its causal_mask rows"
    if x.shape[0] > self.kv_cache.k_cache.shape[0] or x.shape[1] != input_pos.numel():
        return f"x {tuple(x.shape)} does not fit the KV cache {tuple(self.kv_cache.k_cache.shape)} at input_pos"
    if not _causal_rows(mask, input_pos, self.kv_cache.k_cache.shape[2]):
        return "mask is not causal_mask[input_pos] over contiguous positions"
    return None


def ar_attention_forward(self, x, freqs_cis=None, input_pos=None, mask=None):
    """Training (no cache): causal attention over the sequence. Sampling (kv_cache set by AR.setup_caches): the new
    keys and values written by the official kv_cache.update, then the queries attend over the first
    input_pos[-1] + 1 cached entries through attention_decode, instead of over the whole max_seq_length cache
    under a -inf bias."""
    B, L, _ = x.shape
    q, k, v = self.wqkv(x).view(B, L, 3, self.n_head, self.head_dim).unbind(2)
    q, k, v = apply_rope(q, freqs_cis).transpose(1, 2), apply_rope(k, freqs_cis).transpose(1, 2), v.transpose(1, 2)
    if self.kv_cache is None:
        o = fastar.ops.attention(q, k, v, CAUSAL).to(v.dtype)
    else:
        k_cache, v_cache = self.kv_cache.update(input_pos, k, v)
        end = int(input_pos.reshape(-1)[-1]) + 1
        o = fastar.ops.attention_decode(q.to(k_cache.dtype), k_cache[:B], v_cache[:B], end, CAUSAL if L > 1 else None)
    return self.resid_dropout(self.wo(o.transpose(1, 2).reshape(B, L, self.dim)))


# ---- models/mar.py: Attention.forward(x), bidirectional ----

def mar_attention_forward(self, x):
    B, N, C = x.shape
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    o = fastar.ops.attention(q, k, v, None, scale=self.scale)
    return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))


# ---- models/pixelloss.py: CausalAttention.forward(x) ----

def causal_attention_forward(self, x):
    B, N, C = x.shape
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    o = fastar.ops.attention(self.q_norm(q), self.k_norm(k), v, CAUSAL)  # the official scale: 1 / sqrt(head_dim)
    return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))


def _module_dropout_declines(self, x):
    return _dropout_declines(self)


# ---- models/pixelloss.py: PixelLoss.sample(cond_list, temperature, cfg, filter_threshold) ----

def pixel_sample(self, cond_list, temperature, cfg, filter_threshold=0):
    """The official R, G, B loop with each channel's logits from one new token against a key/value cache of the
    tokens before it (attention_decode), where the official code reruns predict over all 4 tokens: position i's
    logits see only tokens <= i (causal), so they are the same. Logits times temperature; under cfg the
    unconditional logits lifted where the conditional probability is below filter_threshold, then mixed; each draw
    through fastar.ops.sample_categorical, which races the exponentials torch.multinomial draws from the global
    generator: one seed gives the official pixels; predict's rounding jitter (1e-2 randn, which never moves a whole
    pixel value) is still drawn, so the generator advances as in the official loop."""
    cond = cond_list[0]
    guided = not cfg == 1.0
    rows = cond.size(0)
    bsz = rows // 2 if guided else rows
    pixel_values = torch.zeros(bsz, 3, device=cond.device)
    codebooks, mlms = (self.r_codebook, self.g_codebook, self.b_codebook), (self.r_mlm, self.g_mlm, self.b_mlm)
    caches, prev = [], None
    for i in range(3):
        torch.randn(rows, 3, device=cond.device)  # predict's randn_like(target)
        x = self.ln(self.cond_proj(cond) if i == 0 else codebooks[i - 1](prev))[:, None]  # token i (rows, 1, W)
        for j, block in enumerate(self.blocks):
            x = _decode_block(block, x, caches, j, i)
        with torch.autocast(cond.device.type, enabled=False):  # the official logits are float32
            logits = mlms[i](self.norm(x[:, 0]), codebooks[i].weight) * temperature
        if guided:
            logits = guided_logits(logits[:bsz], logits[bsz:], cfg, filter_threshold)
        ids = fastar.ops.sample_categorical(logits)
        prev = torch.cat([ids, ids]) if guided else ids
        pixel_values[:, i] = (ids.float() / 255 - self.pix_mean[i]) / self.pix_std[i]
    return pixel_values


def _decode_block(block, x, caches, j, pos):
    """CausalBlock.forward for the token at pos alone: its k, v appended to block j's cache (3 slots: the b token
    is never needed), attention over the pos + 1 cached tokens."""
    attn = block.attn
    N, _, C = x.shape
    q, k, v = attn.qkv(block.norm1(x)).reshape(N, 1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if pos == 0:
        caches.append(tuple(k.new_empty(N, attn.num_heads, 3, attn.head_dim) for _ in range(2)))
    k_cache, v_cache = caches[j]
    k_cache[:, :, pos:pos + 1], v_cache[:, :, pos:pos + 1] = k, v
    o = fastar.ops.attention_decode(q, k_cache, v_cache, pos + 1)
    x = x + block.drop_path(attn.proj_drop(attn.proj(o.transpose(1, 2).reshape(N, 1, C))))
    return x + block.drop_path(block.mlp(block.norm2(x)))


def _pixel_declines(self, cond_list, temperature, cfg, filter_threshold=0):
    if self.training and any(b.attn.attn_drop.p > 0 for b in self.blocks):
        return "attention dropout in training (fastar's attention has none)"
    return None


ROWS = (
    Row("attention", "models.ar", "Attention", "forward", ar_attention_forward,
        "one kv head per head, no attention dropout in training; in sampling the official KV cache with "
        "causal_mask[input_pos] over contiguous positions", _ar_declines),
    Row("attention", "models.mar", "Attention", "forward", mar_attention_forward,
        "no attention dropout in training", _module_dropout_declines),
    Row("attention", "models.pixelloss", "CausalAttention", "forward", causal_attention_forward,
        "no attention dropout in training", _module_dropout_declines),
    Row("sampling", "models.pixelloss", "PixelLoss", "sample", pixel_sample,
        "no attention dropout in training", _pixel_declines),
)
