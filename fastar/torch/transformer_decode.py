"""transformer_decode as the official codebases run a decode step: block by block in Python, F.linear and SDPA over
the cache prefix (fastar/reference/transformer_decode.py's loop on fastar/torch's linear and attention_decode)."""
from fastar.reference.transformer_decode import decode_loop
from fastar.torch import attention, linear


def transformer_decode(x, layers, k_caches, v_caches, cache_len, masks, *, heads, eps=1e-5, approximate="none",
                       block="gpt2", rope=None):
    return decode_loop(linear.linear, attention.attention_decode, x, layers, k_caches, v_caches, cache_len, masks,
                       heads, eps, approximate, block, rope)
