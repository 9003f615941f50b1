"""attention on FractalGen's tiny sequences at huge batch, forward and forward + backward, float32: a level-1 MAR
level (65536 x 8 heads x L 22 x D 64, bidirectional) and PixelLoss (262144 x 4 heads x L 4 x D 32, causal).
Baseline: FractalGen's own manual attention of each level: PixelLoss's (models/pixelloss.py
scaled_dot_product_attention: fp32 matmul, an explicit zero / -inf bias added, softmax, dropout(p=0, train=True),
matmul) and the MAR level's (models/mar.py Attention: fp32 matmul times scale, the row max subtracted, softmax,
matmul; no bias); peer: SDPA (the torch backend).

fastar's outputs and gradients (>= 4 MB) come from its CPU output block cache (fastar.cpu_cache_info): the blocks of
the previous call's freed outputs, where torch's allocator maps fresh pages that the OS faults in and zeroes on each
call. The extra column "fastar, fresh output pages" empties the cache before each call: the kernels alone.

FASTAR_BENCH_TINY_BATCH_DIV divides the batches (default 64: 1024 x 8 x 22 x 64 and 4096 x 4 x 4 x 32, so the
run stays under 2 minutes on 2 loaded cores); 1 runs the issue's full shapes (9 GB of inputs at level 1)."""
import math
import os

import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar import torch as torch_impl
from fastar.ops import AttentionMask

DIV = int(os.environ.get("FASTAR_BENCH_TINY_BATCH_DIV", 64))
CASES = {  # name: (B, H, L, D, causal)
    "FractalGen level 1 (MAR)": (65536 // DIV, 8, 22, 64, False),
    "FractalGen PixelLoss": (262144 // DIV, 4, 4, 32, True),
}
BASELINE = "official manual attention (FractalGen's, per level)"
FRESH = "fastar, fresh output pages (cache emptied)"


def official_attention(query, key, value, is_causal):
    """FractalGen's attention as its models/pixelloss.py writes it (causal, PixelLoss; CPU tensors instead of
    .cuda()), or as its models/mar.py does (bidirectional, the MAR levels)."""
    L, S = query.size(-2), key.size(-2)
    scale_factor = 1 / math.sqrt(query.size(-1))
    if not is_causal:  # mar.py: no bias, the row max subtracted before the softmax
        attn = query @ key.transpose(-2, -1) * scale_factor
        attn = attn - torch.max(attn, dim=-1, keepdim=True)[0]
        return attn.softmax(dim=-1) @ value
    attn_bias = torch.zeros(L, S, dtype=query.dtype)
    if is_causal:
        attn_bias.masked_fill_(torch.ones(L, S, dtype=torch.bool).tril(diagonal=0).logical_not(), float("-inf"))
    attn_weight = query @ key.transpose(-2, -1) * scale_factor
    attn_weight += attn_bias
    attn_weight = torch.softmax(attn_weight, dim=-1)
    attn_weight = torch.dropout(attn_weight, 0.0, train=True)
    return attn_weight @ value


def setup(case, requires_grad):
    B, H, L, D, causal = CASES[case]
    fastar.empty_cpu_cache()  # only this case's blocks: the fresh-pages column then unmaps none of another case's
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).requires_grad_(requires_grad) for _ in range(3))
    mask = AttentionMask.causal() if causal else None
    def ours():
        return fastar.ops.attention(q, k, v, mask)

    attends = {"fastar": ours, BASELINE: lambda: official_attention(q, k, v, causal),
               "SDPA (torch backend)": lambda: torch_impl.attention.attention(q, k, v, mask),
               FRESH: lambda: (fastar.empty_cpu_cache(), ours())[1]}
    return (q, k, v), attends, f"{B} x {H} x L {L} x D {D} {'causal' if causal else 'full'}"


@pytest.mark.parametrize("case", CASES)
def test_tiny_attention_forward(benchmark, case):
    _, attends, shape = setup(case, requires_grad=False)
    benchmark.group = f"tiny attention forward {case} {shape} float32"
    ours = attends.pop("fastar")
    out = ours()
    max_diff = {name: (fn() - out).abs().max().item() for name, fn in attends.items()}
    compare(benchmark, ours, attends, baseline=BASELINE, rounds=5, op="attention", shape=shape, max_abs_diff=max_diff)


@pytest.mark.parametrize("case", CASES)
def test_tiny_attention_forward_backward(benchmark, case):
    qkv, attends, shape = setup(case, requires_grad=True)
    benchmark.group = f"tiny attention forward+backward {case} {shape} float32"
    dout = torch.randn(qkv[0].shape, generator=torch.Generator().manual_seed(1))
    steps = {name: (lambda fn=fn: torch.autograd.grad(fn(), qkv, dout)) for name, fn in attends.items()}
    ours = steps.pop("fastar")
    compare(benchmark, ours, steps, baseline=BASELINE, rounds=5, op="attention", shape=shape)
