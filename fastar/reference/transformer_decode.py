"""transformer_decode in plain torch: a stack of pre-norm blocks (GPT-2's and DALL-E's: LayerNorm, qkv, attention
over the layer's KV cache under its mask, proj, residual; LayerNorm, fc1, GELU, fc2, residual) decoding new tokens,
each layer's caches written in place. The oracle (in float64 for the tests); fastar/torch/transformer_decode.py runs
the same loop on torch's ops."""
import torch.nn.functional as F

from fastar.reference import attention
from fastar.reference import linear as linear_ref

# A layer's weights, in this order (the names of DALL-E's Block, fastar/models/dalle).
WEIGHTS = ("ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
           "ln_2.weight", "ln_2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")


def decode_loop(linear, attention_decode, x, layers, k_caches, v_caches, cache_len, masks, heads, eps, approximate):
    """The stack on the given linear and attention_decode (the signatures of fastar.ops')."""
    B, L, C = x.shape
    for w, k_cache, v_cache, mask in zip(layers, k_caches, v_caches, masks):
        ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = w
        h = F.layer_norm(x, (C,), ln1_w, ln1_b, eps)
        q, k, v = linear(h, qkv_w, qkv_b).view(B, L, 3, heads, C // heads).permute(2, 0, 3, 1, 4)  # (B, H, L, D)
        k_cache[:, :, cache_len:cache_len + L] = k
        v_cache[:, :, cache_len:cache_len + L] = v
        o = attention_decode(q, k_cache, v_cache, cache_len + L, mask)
        x = x + linear(o.transpose(1, 2).reshape(B, L, C), proj_w, proj_b)
        h = F.gelu(linear(F.layer_norm(x, (C,), ln2_w, ln2_b, eps), fc1_w, fc1_b), approximate=approximate)
        x = x + linear(h, fc2_w, fc2_b)
    return x


def transformer_decode(x, layers, k_caches, v_caches, cache_len, masks, *, heads, eps=1e-5, approximate="none"):
    return decode_loop(linear_ref.linear, attention.attention_decode, x, layers, k_caches, v_caches, cache_len, masks,
                       heads, eps, approximate)
