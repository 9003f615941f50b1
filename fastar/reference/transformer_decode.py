"""transformer_decode in plain torch: a stack of pre-norm blocks decoding new tokens, each layer's caches written in
place. Two block kinds (BLOCKS): gpt2 (GPT-2's, DALL-E's, timm's: LayerNorm, qkv, attention over the layer's KV cache
under its mask, proj, residual; LayerNorm, fc1, GELU, fc2, residual) and llama (LlamaGen's, FractalGen's AR levels:
RMSNorm, qkv without bias, RoPE on q and k, attention, proj, residual; RMSNorm, SwiGLU, residual). The oracle (in
float64 for the tests); fastar/torch/transformer_decode.py runs the same loop on torch's ops."""
import torch
import torch.nn.functional as F

from fastar.reference import attention
from fastar.reference import linear as linear_ref

# A layer's tensors per block kind, in this order (the names of DALL-E's Block and of FractalGen's AR TransformerBlock).
BLOCKS = {"gpt2": ("ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                   "attn.proj.bias", "ln_2.weight", "ln_2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                   "mlp.2.bias"),
          "llama": ("attention_norm.weight", "attention.wqkv.weight", "attention.wo.weight", "ffn_norm.weight",
                    "feed_forward.w1.weight", "feed_forward.w3.weight", "feed_forward.w2.weight")}


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(t_BLHD, rope_L2):
    """Interleaved pairs (t[2i], t[2i+1]) of each head turned by rope (L, D / 2, 2) [cos, sin] of their position."""
    p = t_BLHD.unflatten(-1, (-1, 2))
    c, s = rope_L2[None, :, None, :, 0], rope_L2[None, :, None, :, 1]
    return torch.stack([p[..., 0] * c - p[..., 1] * s, p[..., 1] * c + p[..., 0] * s], dim=-1).flatten(3)


def decode_loop(linear, attention_decode, x, layers, k_caches, v_caches, cache_len, masks, heads, eps, approximate,
                block="gpt2", rope=None):
    """The stack on the given linear and attention_decode (the signatures of fastar.ops')."""
    B, L, C = x.shape
    llama = block == "llama"
    for w, k_cache, v_cache, mask in zip(layers, k_caches, v_caches, masks):
        if llama:
            norm1, qkv_w, proj_w, norm2, w1, w3, w2 = w
            h = rms_norm(x, norm1, eps)
            qkv_b = proj_b = None
        else:
            ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = w
            h = F.layer_norm(x, (C,), ln1_w, ln1_b, eps)
        q, k, v = linear(h, qkv_w, qkv_b).view(B, L, 3, heads, C // heads).unbind(2)  # (B, L, H, D)
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        k_cache[:, :, cache_len:cache_len + L] = k.transpose(1, 2)
        v_cache[:, :, cache_len:cache_len + L] = v.transpose(1, 2)
        # 16-bit caches under a float32 x: the queries in the caches' dtype, the output back in x's
        o = attention_decode(q.transpose(1, 2).to(k_cache.dtype), k_cache, v_cache, cache_len + L, mask).to(x.dtype)
        x = x + linear(o.transpose(1, 2).reshape(B, L, C), proj_w, proj_b)
        if llama:
            h = rms_norm(x, norm2, eps)
            x = x + linear(F.silu(linear(h, w1)) * linear(h, w3), w2)
        else:
            h = F.gelu(linear(F.layer_norm(x, (C,), ln2_w, ln2_b, eps), fc1_w, fc1_b), approximate=approximate)
            x = x + linear(h, fc2_w, fc2_b)
    return x


def transformer_decode(x, layers, k_caches, v_caches, cache_len, masks, *, heads, eps=1e-5, approximate="none",
                       block="gpt2", rope=None):
    return decode_loop(linear_ref.linear, attention.attention_decode, x, layers, k_caches, v_caches, cache_len, masks,
                       heads, eps, approximate, block, rope)
