"""attention at VAR-d16's training shapes (block-causal, L = 680) and a DALL-E layer (256 text + 32 x 32 image,
row mask), forward and forward + backward, and VAR's KV-cache decode. Baseline: the torch backend, i.e. SDPA
with the dense boolean mask (over the valid cache prefix for decode), as the official code calls it; peers:
compiled flex_attention (forward only: it has no CPU backward); extra column: the float64-capable reference. Decode
runs at every scale of VAR-d16 sampling."""
import functools

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import fastar
from benchmarks.harness import compare
from fastar import torch as torch_impl
from fastar.ops import AttentionMask
from fastar.reference import attention as ref

BASELINE = "SDPA dense bool mask (torch backend)"
DECODE_BASELINE = "SDPA over the cache prefix (torch backend)"  # full attention: no mask
AGREE = 1e-3  # float32 attention of unit-scale inputs agrees to ~1e-6: a contender past this computes another thing
VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
# name: (B, H, L, D, mask); DALL-E has 62 heads, too many for a 2-core machine: 8 keep the layer's shape.
CASES = {
    "VAR-d16 B=8 H=16 L=680 D=64 block-causal": (8, 16, 680, 64, AttentionMask.block_causal(
        [pn * pn for pn in VAR_PATCH_NUMS])),
    "DALL-E B=1 H=8 L=256+1024 D=64 row": (1, 8, 1280, 64, AttentionMask.dalle("row", 256, 32)),
}


@functools.cache
def compiled_flex():
    """torch.compile(flex_attention), built once per session: compiling takes 20 s on 2 cores."""
    return torch.compile(flex_attention)


def inputs(B, H, L, D, mask, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).requires_grad_(requires_grad) for _ in range(3))
    return q, k, v, ref.dense_mask(mask, L, L)[0]  # dense (L, L) bool for SDPA


def flops(vis, B, H, D):
    return 4 * B * H * D * int(vis.sum())  # two products over the visible (q, k) pairs


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_attention_forward(benchmark, case, peak_gflops):
    B, H, L, D, mask = CASES[case]
    benchmark.group = f"attention forward {case}"
    q, k, v, vis = inputs(B, H, L, D, mask)
    contenders = {
        BASELINE: lambda: torch_impl.attention.attention(q, k, v, mask),
        "reference": lambda: ref.attention(q, k, v, mask),
    }
    if mask.kind == "block_causal":  # one flex compile per session: the VAR case
        # a mask_mod on each query's segment end: indexing the (L, L) mask tensor compiled to wrong results
        # (torch 2.13, CPU: max diff 3.0 on 679 of 680 rows at B 8, H 16; eager flex was right)
        kv_end = vis.int().sum(1)
        block_mask = create_block_mask(lambda b, h, qi, ki: ki < kv_end[qi], None, None, L, L, device="cpu")
        contenders["flex_attention compiled"] = lambda: compiled_flex()(q, k, v, block_mask=block_mask)
    ours = fastar.ops.attention(q, k, v, mask)
    max_diff = {name: (fn() - ours).abs().max().item() for name, fn in contenders.items()}
    assert max(max_diff.values()) < AGREE, f"a contender computes something else: max abs diffs {max_diff}"
    f = flops(vis, B, H, D)
    compare(benchmark, lambda: fastar.ops.attention(q, k, v, mask), contenders, baseline=BASELINE, op="attention",
            shape=case, max_abs_diff=max_diff, gflop=f / 1e9, fma_floor_ms=f / peak_gflops / 1e6)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_attention_forward_backward(benchmark, case, peak_gflops):
    B, H, L, D, mask = CASES[case]
    benchmark.group = f"attention forward+backward {case}"
    q, k, v, vis = inputs(B, H, L, D, mask, requires_grad=True)
    dout = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(1))

    def step(attend):
        return lambda: torch.autograd.grad(attend(), (q, k, v), dout)

    contenders = {BASELINE: step(lambda: torch_impl.attention.attention(q, k, v, mask))}
    ours = step(lambda: fastar.ops.attention(q, k, v, mask))
    max_diff = {BASELINE: max((a - b).abs().max().item() for a, b in zip(ours(), contenders[BASELINE]()))}
    assert max_diff[BASELINE] < AGREE, f"the gradients differ: max abs diff {max_diff}"
    f = 3.5 * flops(vis, B, H, D)  # backward = 2.5 x forward (FlashAttention's count)
    compare(benchmark, ours, contenders, op="attention", shape=case, baseline=BASELINE, max_abs_diff=max_diff,
            gflop=f / 1e9, fma_floor_ms=f / peak_gflops / 1e6)


# VAR-d16 sampling, B = 4 with CFG (8 rows): each scale's pn^2 queries against the keys of every scale so far.
DECODE_SCALES = {f"scale {i} ({pn}x{pn})": (pn * pn, sum(p * p for p in VAR_PATCH_NUMS[:i + 1]))
                 for i, pn in enumerate(VAR_PATCH_NUMS)}


@pytest.mark.parametrize("scale", DECODE_SCALES, ids=list(DECODE_SCALES))
def test_attention_decode(benchmark, scale, peak_gflops):
    """VAR-d16 inference: one scale's queries against the keys cached so far in a preallocated 680-key cache. Extra
    column: the official VAR code's own step, torch.cat of the new keys and values onto its cache, then SDPA."""
    B, H, D, Lmax = 8, 16, 64, 680
    Lq, cache_len = DECODE_SCALES[scale]
    benchmark.group = f"attention_decode VAR-d16 {scale} B={B} H={H} {Lq} queries vs {cache_len} cached keys D={D}"
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, H, Lq, D, generator=g)
    k_cache, v_cache = (torch.randn(B, H, Lmax, D, generator=g) for _ in range(2))
    k_old, v_old = (c[:, :, :cache_len - Lq].contiguous() for c in (k_cache, v_cache))  # the official cache
    k_new, v_new = (c[:, :, cache_len - Lq:cache_len].contiguous() for c in (k_cache, v_cache))

    def official():
        k, v = torch.cat((k_old, k_new), dim=2), torch.cat((v_old, v_new), dim=2)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    contenders = {
        DECODE_BASELINE: lambda: torch_impl.attention.attention_decode(q, k_cache, v_cache, cache_len),
        "SDPA after torch.cat (official VAR)": official,
        "reference": lambda: ref.attention_decode(q, k_cache, v_cache, cache_len),
    }
    f = 4 * B * H * Lq * cache_len * D
    compare(benchmark, lambda: fastar.ops.attention_decode(q, k_cache, v_cache, cache_len), contenders,
            op="attention_decode", baseline=DECODE_BASELINE, gflop=f / 1e9, fma_floor_ms=f / peak_gflops / 1e6)
