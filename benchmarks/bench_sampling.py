"""sample_categorical against VAR's official formulation (models/helpers.py sample_with_top_k_top_p_: topk, then sort
+ softmax + cumsum for top-p, softmax + torch.multinomial; fastar.torch.sampling) at VAR's logits (B*L x 4096, its
demo's top_k 900, top_p 0.96; 680 positions per image, 2 images) and at FractalGen's PixelLoss (rows x 256 per
channel, FractalGen's filter_threshold 1e-4 as min_prob; 4096 rows: one in64 image's pixels at 64 x 64).

FASTAR_BENCH_SAMPLING_SCALE multiplies the row counts (bigger batches on a quiet machine)."""
import os

import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar.torch import sampling as official

SCALE = float(os.environ.get("FASTAR_BENCH_SAMPLING_SCALE", 1))
CASES = {  # name: (rows, V, kwargs)
    "VAR d16 2 images x 680 positions": (int(2 * 680 * SCALE), 4096, dict(top_k=900, top_p=0.96)),
    "FractalGen PixelLoss 4096 pixels": (int(4096 * SCALE), 256, dict(min_prob=1e-4)),
}


def official_label(kw):
    """The official formulation's steps that run for the filters in kw (fastar.torch.sampling.sample_categorical)."""
    steps = (["softmax + threshold mask"] if kw.get("min_prob", 0) > 0 else []) + (
        ["topk"] if kw.get("top_k", 0) > 0 else []) + (["sort + cumsum"] if kw.get("top_p", 1) < 1 else [])
    return f"official ({' + '.join(steps + ['softmax + multinomial'])})"


@pytest.mark.parametrize("case", list(CASES))
def test_sample_categorical(benchmark, case):
    rows, V, kw = CASES[case]
    benchmark.group = f"sample_categorical {case} ({rows} x {V}, {kw}) float32"
    logits = torch.randn(rows, V, generator=torch.Generator().manual_seed(0)) * 3

    def run(fn):
        return lambda: fn(logits, generator=torch.Generator().manual_seed(1), **kw)

    name = official_label(kw)
    compare(benchmark, run(fastar.ops.sample_categorical), {name: run(official.sample_categorical)},
            baseline=name, rounds=7, op="sample_categorical")
