"""transformer_decode: a stack of pre-norm transformer blocks (GPT-2's and DALL-E's, or LlamaGen's and FractalGen's AR
levels') decoding a few new tokens against per-layer KV caches in one call: the loop in C++ (csrc/torch/transformer_decode.h) on fastar's linear and
attention_decode, so that a decode step is one call instead of ~15 Python-dispatched torch ops per layer."""
import torch

from fastar.ops._checks import check_choice, check_same_device, check_tensor
from fastar.ops._registry import Decline, autograd_decline, kernel, op
from fastar.ops.attention import AttentionMask, max_head_dim
from fastar.reference import transformer_decode as reference
from fastar.reference.transformer_decode import BLOCKS
from fastar.torch import transformer_decode as torch_impl

DTYPES = (torch.float32, torch.float64)


@kernel("transformer_decode")
def _transformer_decode(x, weights, k_caches, v_caches, cache_len, mask_kinds, mask_ints, heads, eps, approximate,
                        block, rope):
    return torch.empty_like(x)  # fake kernel, for torch.compile / opcheck


@op(reference=reference.transformer_decode, torch=torch_impl.transformer_decode)
def transformer_decode(x, layers, k_caches, v_caches, cache_len, masks, *, heads, eps=1e-5, approximate="none",
                       block="gpt2", rope=None):
    """x (B, L, C) float32 / float64 after `len(layers)` pre-norm blocks of kind `block`, each decoding the L new
    tokens against its KV caches:
    - "gpt2" (GPT-2's, DALL-E's, timm's): x += proj(attention(LayerNorm_1(x))), x += fc2(GELU(fc1(LayerNorm_2(x))));
    - "llama" (LlamaGen's, FractalGen's AR levels): x += wo(attention(RoPE(wqkv(RMSNorm(x))))),
      x += w2(SiLU(w1(h)) w3(h)) with h = RMSNorm(x); no biases.

    layers: per layer the tensors of reference.BLOCKS[block] in that order (gpt2: ln_1 weight and bias, qkv (3C, C)
    and bias, proj (C, C) and bias, ln_2, fc1 (F, C) and bias, fc2 (C, F) and bias; llama: attention_norm, wqkv,
    wo, ffn_norm, w1 (F, C), w3 (F, C), w2 (C, F)); the products' weights may be bfloat16 under a float32 x
    (fastar.ops.linear's rule). k_caches, v_caches: per layer (B, heads, Lmax, C / heads) like x, or bfloat16 /
    float16 under a float32 x (half the bytes each step reads: the queries go to attention_decode in the caches'
    dtype, its output comes back in x's); this step's keys and values are written at positions cache_len ..
    cache_len + L - 1 and its queries attend to the first cache_len + L.
    masks: per layer an AttentionMask (or None = full) without key_len, not block_causal. rope (llama only): (L,
    C / heads / 2, 2) [cos, sin] of the new positions, turning interleaved pairs of q and k; None: no rotation.
    The kernel has no backward (inference): under autograd (an input requiring grad) the torch formulation runs,
    differentiable. The fastar backends run every product on fastar.ops.linear's kernel (made for a
    few rows: the caller routes larger L * B elsewhere) and every attention on attention_decode's.
    """
    name = "transformer_decode"
    check_tensor(name, "x", x, dim=3, dtypes=DTYPES)
    check_choice(name, "block", block, tuple(BLOCKS))
    n = len(layers)
    for arg, seq in (("k_caches", k_caches), ("v_caches", v_caches), ("masks", masks)):
        if len(seq) != n:
            raise ValueError(f"{name}: {arg} must have one entry per layer ({n}), got {len(seq)}")
    names = BLOCKS[block]
    for i, w in enumerate(layers):
        if len(w) != len(names):
            raise ValueError(f"{name}: layers[{i}] must hold the {len(names)} tensors {names} of a {block} block, got "
                             f"{len(w)}")
    # here, not only in C++: one meta tensor would send the call to the fake kernel, whose result is garbage; the
    # named check only when a device differs (a decode step is this op's hot path)
    if any(t.device != x.device for ts in (*layers, k_caches, v_caches) for t in ts):
        for i, w in enumerate(layers):
            check_same_device(name, x=x, **{f"layers[{i}][{j}] ({names[j]})": t for j, t in enumerate(w)},
                              **{f"k_caches[{i}]": k_caches[i], f"v_caches[{i}]": v_caches[i]})
    if any(c.dtype != x.dtype for c in (*k_caches, *v_caches)):
        for i, (kc, vc) in enumerate(zip(k_caches, v_caches)):
            ok = (kc.dtype == x.dtype or (x.dtype == torch.float32 and kc.dtype in (torch.bfloat16, torch.float16)))
            if not ok or vc.dtype != kc.dtype:
                raise TypeError(f"{name}: k_caches[{i}] and v_caches[{i}] must both be {x.dtype} as x"
                                f"{' (or both bfloat16, or both float16)' if x.dtype == torch.float32 else ''}, got "
                                f"{kc.dtype} and {vc.dtype}")
    B, L, C = x.shape
    if not isinstance(heads, int) or heads < 1 or C % heads:
        raise ValueError(f"{name}: heads must be a positive int dividing C = {C}, got {heads!r}")
    check_choice(name, "approximate", approximate, ("none", "tanh"))
    if rope is not None:
        check_tensor(name, "rope", rope, dim=3, dtypes=(x.dtype,))
        check_same_device(name, x=x, rope=rope)
        if block != "llama" or tuple(rope.shape) != (L, C // heads // 2, 2) or (C // heads) % 2:
            raise ValueError(f"{name}: rope must be (L, D / 2, 2) = ({L}, {C // heads // 2}, 2) with llama blocks, "
                             f"got {tuple(rope.shape)} with {block}")
    if n and not 0 <= cache_len <= k_caches[0].shape[2] - L:
        raise ValueError(f"{name}: cache_len must be in [0, Lmax - L = {k_caches[0].shape[2] - L}], got {cache_len}")
    kinds, ints = [], []
    for i, m in enumerate(masks):
        m = m if m is not None else AttentionMask.full()
        if not isinstance(m, AttentionMask) or m.kind == "block_causal" or m.key_len is not None:
            raise ValueError(f"{name}: masks[{i}] must be an AttentionMask (not block_causal, no key_len) or None, "
                             f"got {m!r}")
        kind, mask_ints, _, _ = m.op_args(name, B, L, cache_len + L, x.device)
        kinds.append(kind)
        ints += mask_ints
    top = max_head_dim(x.device)  # attention_decode's: wider heads run the torch formulation
    if C // heads > top:
        return x.device, Decline(f"the kernel takes head dims up to {top}, got {C // heads}")
    flat = [t.contiguous() for w in layers for t in w]  # the kernel reads weights row-major (free when they are)
    declined = autograd_decline(name, x, *flat, *k_caches, *v_caches, rope)
    if declined:
        return x.device, declined
    return x.device, lambda ops: ops.transformer_decode(x, flat, list(k_caches), list(v_caches), cache_len, kinds,
                                                        ints, heads, float(eps), approximate, block, rope)
