"""dropout forward and forward + backward against nn.Dropout (the official codebases' F.dropout: torch's bernoulli_
mask from the global generator, stored for the backward) on an MLP's hidden activations, 8192 x 4096 float32 (a
transformer MLP of width 1024 over 8192 tokens), p 0.1 as FractalGen and MAR train."""
import pytest
import torch
import torch.nn.functional as F

import fastar
from benchmarks.harness import compare

SHAPE = (8192, 4096)
BASELINE = "F.dropout (nn.Dropout, torch backend)"


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_dropout(benchmark, backward):
    benchmark.group = f"dropout p 0.1 {SHAPE[0]} x {SHAPE[1]} float32 {'forward + backward' if backward else 'forward'}"
    x = torch.randn(SHAPE, requires_grad=backward)
    g = torch.ones(SHAPE)

    def run(fn):
        def go():
            out = fn(x, 0.1)
            if backward:
                out.backward(g)
                x.grad = None
            return out
        return go

    compare(benchmark, run(fastar.ops.dropout), {BASELINE: run(F.dropout)}, baseline=BASELINE, rounds=5,
            op="dropout", shape=f"{SHAPE[0]} x {SHAPE[1]}")
