"""vq_nearest at VAR's tokenizer shape and LlamaGen's, against the reference, cdist and faiss."""
import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar.reference import quantize as ref

try:
    import faiss
except ImportError:  # optional benchmark dependency
    faiss = None

SHAPES = {"VAR N=65536 K=4096 D=32": (65536, 4096, 32), "LlamaGen N=16384 K=16384 D=8": (16384, 16384, 8)}


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_vq_nearest(benchmark, shape, peak_gflops):
    N, K, D = SHAPES[shape]
    benchmark.group = f"vq_nearest {shape}"
    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    x_np, codebook_np = x.numpy(), codebook.numpy()

    def run_faiss():
        index = faiss.IndexFlatL2(D)
        index.add(codebook_np)
        return torch.from_numpy(index.search(x_np, 1)[1][:, 0])

    contenders = {
        "reference": lambda: ref.vq_nearest(x, codebook),
        "cdist+argmin": lambda: torch.cdist(x, codebook).argmin(1),
    }
    if faiss is not None:
        contenders["faiss IndexFlatL2"] = run_faiss

    ours = fastar.ops.vq_nearest(x, codebook)
    agree = {name: (fn() == ours).float().mean().item() for name, fn in contenders.items()}
    flops = 2 * N * K * D
    compare(benchmark, lambda: fastar.ops.vq_nearest(x, codebook), contenders, op="vq_nearest",
            shape=shape, agreement=agree, gflop=flops / 1e9, fma_floor_ms=flops / peak_gflops / 1e6)
