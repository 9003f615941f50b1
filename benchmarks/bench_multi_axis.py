"""multi_axis_attention at HiT-256's attention stages (multi-query K/V, float32), forward and forward + backward.
Baseline: the torch backend, i.e. what PyTorch ports run (timm's maxxvit window / grid partition: permute each
half of the heads into groups, SDPA, permute back); peer: SDPA over the whole image with a dense per-head mask
(stages up to 32 x 32: at 64 x 64 its 4096 x 4096 scores per head do not fit a loaded 2-core machine's budget).
Also HiT's cross-attention of every pixel to the 16 latent tokens: fastar.ops.attention against SDPA, which tells
the model which one to call. FASTAR_BENCH_HIT_B sets the batch (default 8, the issue's)."""
import os

import pytest
import torch
import torch.nn.functional as F

import fastar
from benchmarks.harness import compare
from fastar import torch as torch_impl

BASELINE = "partition + SDPA (torch backend, timm maxxvit)"
DENSE = "SDPA dense per-head mask"
B = int(os.environ.get("FASTAR_BENCH_HIT_B", "8"))
# name: (H = W, heads, D, block size); C = heads * D.
STAGES = {
    f"HiT-256 16x16 C512 8 heads b4 B={B}": (16, 8, 64, 4),
    f"HiT-256 32x32 C256 4 heads b8 B={B}": (32, 4, 64, 8),
    f"HiT-256 64x64 C128 4 heads b8 B={B}": (64, 4, 32, 8),
}


def inputs(H, heads, D, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, H, heads, D, generator=g).requires_grad_(requires_grad)
    k, v = (torch.randn(B, H, H, 1, D, generator=g).requires_grad_(requires_grad) for _ in range(2))
    return q, k, v


def dense_sdpa(H, heads, b):
    """SDPA over all H * H pixels with a (heads, L, L) mask: regional heads see their block, dilated heads their
    offset lattice."""
    y, x = torch.arange(H).repeat_interleave(H), torch.arange(H).repeat(H)
    same_block = ((y // b)[:, None] == (y // b)[None]) & ((x // b)[:, None] == (x // b)[None])
    same_offset = ((y % b)[:, None] == (y % b)[None]) & ((x % b)[:, None] == (x % b)[None])
    mask = torch.stack([same_block] * (heads // 2) + [same_offset] * (heads // 2))  # (heads, L, L)

    def run(q, k, v):
        qs, ks, vs = (t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))  # (B, heads or 1, L, D)
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
        return out.transpose(1, 2).unflatten(1, (H, H))
    return run


def flops(H, heads, D, b):
    tokens = b * b, (H // b) ** 2  # per group, regional and dilated
    return sum(4 * B * H * H * (heads // 2) * n * D for n in tokens)


@pytest.mark.parametrize("stage", STAGES, ids=list(STAGES))
def test_multi_axis_forward(benchmark, stage, peak_gflops):
    H, heads, D, b = STAGES[stage]
    benchmark.group = f"multi_axis_attention forward {stage}"
    q, k, v = inputs(H, heads, D)
    contenders = {BASELINE: lambda: torch_impl.multi_axis.multi_axis_attention(q, k, v, b)}
    if H <= 32:
        contenders[DENSE] = lambda: dense_sdpa(H, heads, b)(q, k, v)
    ours = fastar.ops.multi_axis_attention(q, k, v, b)
    max_diff = {name: (fn() - ours).abs().max().item() for name, fn in contenders.items()}
    f = flops(H, heads, D, b)
    compare(benchmark, lambda: fastar.ops.multi_axis_attention(q, k, v, b), contenders, baseline=BASELINE,
            op="multi_axis_attention", shape=stage, max_abs_diff=max_diff, gflop=f / 1e9,
            fma_floor_ms=f / peak_gflops / 1e6)


@pytest.mark.parametrize("stage", STAGES, ids=list(STAGES))
def test_multi_axis_forward_backward(benchmark, stage, peak_gflops):
    H, heads, D, b = STAGES[stage]
    benchmark.group = f"multi_axis_attention forward+backward {stage}"
    q, k, v = inputs(H, heads, D, requires_grad=True)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))

    def step(attend):
        return lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), dout)

    contenders = {BASELINE: step(lambda q, k, v: torch_impl.multi_axis.multi_axis_attention(q, k, v, b))}
    if H <= 16:
        contenders[DENSE] = step(dense_sdpa(H, heads, b))
    f = 3.5 * flops(H, heads, D, b)  # backward = 2.5 x forward (FlashAttention's count)
    compare(benchmark, step(lambda q, k, v: fastar.ops.multi_axis_attention(q, k, v, b)), contenders,
            baseline=BASELINE, op="multi_axis_attention", shape=stage, gflop=f / 1e9,
            fma_floor_ms=f / peak_gflops / 1e6)


# HiT-256's cross-attention: every pixel of a stage (C / heads = D) to the 16 latent tokens, one K/V head.
CROSS = {f"HiT-256 cross {H}x{H} {heads} heads D{D} -> 16 latents B={B}": (H, heads, D)
         for H, heads, D in ((16, 8, 64), (32, 4, 64), (64, 4, 32), (128, 4, 16))}


@pytest.mark.parametrize("case", CROSS, ids=list(CROSS))
def test_hit_cross_attention(benchmark, case):
    H, heads, D = CROSS[case]
    benchmark.group = f"attention forward+backward {case}"
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, heads, H * H, D, generator=g).requires_grad_()
    k, v = (torch.randn(B, 1, 16, D, generator=g).requires_grad_() for _ in range(2))
    dout = torch.randn(q.shape, generator=g)

    def step(attend):
        return lambda: torch.autograd.grad(attend(q, k, v), (q, k, v), dout)

    sdpa = "SDPA (torch backend)"
    compare(benchmark, step(fastar.ops.attention), {sdpa: step(torch_impl.attention.attention)}, baseline=sdpa,
            op="attention", shape=case)
