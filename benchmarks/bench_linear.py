"""linear at decode shapes: one token step through a transformer's linear layers, M rows (the batch, one token
each) against every layer's weights, float32. The weights (the DALL-E benchmark model's 151 MB, VAR-d16's 805 MB)
exceed the L3 cache, as in sampling, so each step reads them from memory. Contenders: F.linear (nn.Linear, the
official codebases' formulation: torch's addmm, the torch backend) and oneDNN's matmul (the path
fastar.models.layers.linear takes with more rows); one row reads bfloat16 weights (half the bytes), against the same
float32 contenders and fastar's float32 weights. A further column reads the weights as decode_weights packs them (the
DALL-E and FractalGen samplers' path): copies in one allocation on transparent huge pages, for the sets within its cap
(a quarter of the CPU block cache's limit: not VAR-d16's). Each contender's max abs diff is over every layer's output
against fastar's, from one untimed pass (with bfloat16 weights: that mode's rounding)."""
import pytest
import torch
import torch.nn.functional as F

import fastar
from benchmarks.harness import compare, max_abs_diff
from fastar.models.layers import _onednn, _packed_copies

BASELINE = "F.linear (nn.Linear, torch backend)"
# name: (layers, [(in, out) of each layer's linear layers])
MODELS = {"DALL-E 12 layers width 512": (12, [(512, 1536), (512, 512), (512, 2048), (2048, 512)]),
          "VAR-d16": (16, [(1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024), (1024, 6144)])}


@pytest.mark.parametrize("model,M,bf16", [("DALL-E 12 layers width 512", 1, False),
                                          ("DALL-E 12 layers width 512", 4, False), ("VAR-d16", 2, False),
                                          ("DALL-E 12 layers width 512", 1, True)])
def test_linear_decode(benchmark, model, M, bf16):
    """bf16: fastar reads the weights rounded to bfloat16 (another mode: half the bytes), the others float32."""
    layers, shapes = MODELS[model]
    g = torch.Generator().manual_seed(0)
    weights = [(torch.randn(n, k, generator=g) / k ** 0.5, torch.randn(n, generator=g))
               for _ in range(layers) for k, n in shapes]
    xs = {k: torch.randn(M, k, generator=g) for k, _ in shapes}
    mb = sum(w.numel() for w, _ in weights) * 4 / 2 ** 20
    benchmark.group = (f"linear decode step {model}: {M} row(s) through {len(weights)} layers ({mb:.0f} MB) float32"
                       + (", fastar with bfloat16 weights" if bf16 else ""))

    def step(fn, ws=weights):
        def run():
            for w, b in ws:
                fn(xs[w.shape[1]], w, b)
        return run

    dtype = torch.bfloat16 if bf16 else torch.float32
    mine = (fastar.ops.linear, [(w.bfloat16(), b) for w, b in weights] if bf16 else weights)
    others = {BASELINE: (F.linear, weights), "oneDNN matmul": (_onednn, weights)}  # name: (fn, its layers' weights)
    packed = list(zip(_packed_copies([w for w, _ in weights], dtype), (b for _, b in weights)))
    if len({w.untyped_storage().data_ptr() for w, _ in packed}) == 1:  # within decode_weights' cap (VAR's 1.1 GB: not)
        packed_name = f"fastar, {'bfloat16' if bf16 else 'float32'} weights packed on huge pages"
        others[packed_name] = (fastar.ops.linear, packed)
    if bf16:
        others["fastar, float32 weights"] = (fastar.ops.linear, weights)

    def outputs(fn, ws):  # every layer's output, untimed
        return [fn(xs[w.shape[1]], w, b) for w, b in ws]
    ours = outputs(*mine)
    diffs = {name: max_abs_diff(outputs(*c), ours) for name, c in others.items()}
    compare(benchmark, step(*mine), {name: step(*c) for name, c in others.items()}, baseline=BASELINE, rounds=7,
            op="linear", shape=f"{model} M={M}", weights="bfloat16" if bf16 else "float32", max_abs_diff=diffs)


# A Linear's weight gradient grad^T x in training: (name, rows, in, out) of a layer's input x (rows, in) and output
# gradient (rows, out).
GRAD_SHAPES = [("HiT-128 64x64 stage MLP fc1, B 4", 4 * 64 * 64, 128, 512),
               ("HiT-256 256x256 stage MLP fc2, B 1", 256 * 256, 256, 64),
               ("VAR-d16 FFN fc1, B 8", 8 * 680, 1024, 4096), ("VAR-d16 FFN fc2, B 8", 8 * 680, 4096, 1024),
               ("DALL-E 12 x 512 MLP fc1, B 2", 2 * 1280, 512, 2048)]
GRAD_BASELINE = "torch.mm(grad.t(), x) (F.linear's autograd, torch backend)"


@pytest.mark.parametrize("name, M, K, N", GRAD_SHAPES, ids=[s[0] for s in GRAD_SHAPES])
def test_linear_weight_grad(benchmark, name, M, K, N, peak_gflops):
    """fastar.ops.linear_weight_grad (the models' Linear backward on oneDNN) against torch.mm of the transposed
    gradient, what F.linear's autograd runs (MKL's sgemm); max abs diff from one untimed call of each."""
    benchmark.group = f"linear_weight_grad {name}: ({M} x {N})^T ({M} x {K}) float32"
    g = torch.Generator().manual_seed(0)
    grad, x = torch.randn(M, N, generator=g), torch.randn(M, K, generator=g)
    f = 2 * M * N * K / 1e9
    ours, theirs = lambda: fastar.ops.linear_weight_grad(grad, x), lambda: torch.mm(grad.t(), x)
    compare(benchmark, ours, {GRAD_BASELINE: theirs}, baseline=GRAD_BASELINE, rounds=7, op="linear_weight_grad",
            gflop=f, fma_floor_ms=f / peak_gflops * 1e3, max_abs_diff={GRAD_BASELINE: max_abs_diff(theirs(), ours())})
