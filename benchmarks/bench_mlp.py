"""mlp (a transformer MLP in one CPU kernel: x + gelu(x w1^T + b1) w2^T + b2) at the MLP blocks of HiT's
high-resolution stages, without autograd, against what a PyTorch port runs (F.linear, F.gelu, F.linear and the
residual add: the torch backend) and against oneDNN's two GEMMs with the GELU and the residual in their epilogues
(torch.ops.mkldnn._linear_pointwise: fastar's own path for these blocks before this kernel, still its path for wider
ones). The note gives each contender's error against float64 over the torch backend's.

Also the GELU under autograd (fastar.models.layers.gelu: the forward and its derivative in one pass of
fastar.ops.gelu_with_derivative, the backward one product) against F.gelu and its autograd backward (torch's
gelu_backward, which computes the GELU's math again), forward + backward at HiT-128's and VAR-d16's hidden widths,
inside fastar.cpu_cache_all_tensors(keep_peak=True, min_mb=4) for both (as a training step runs them), so that
neither pays fresh pages."""
import pytest
import torch

import fastar
from benchmarks.harness import compare, error_note, kept
from fastar.models.layers import gelu, linear_add, linear_gelu, onednn_inference
from fastar.reference.mlp import mlp as reference

# (name, rows, C): the stage's pixels times the batch, its width (hidden 4 C)
SHAPES = [("HiT-256 64x64 stage, C 128, B 2", 2 * 64 * 64, 128),
          ("HiT-256 128x128 stage, C 64, B 2", 2 * 128 * 128, 64),
          ("HiT-256 256x256 stage, C 64, B 2", 2 * 256 * 256, 64),
          ("HiT-1024 512x512 stage, C 32, B 1", 512 * 512, 32)]
BASELINE = "F.linear + F.gelu + F.linear + add (torch backend)"


@pytest.mark.parametrize("name, N, C", SHAPES, ids=[s[0] for s in SHAPES])
def test_mlp(benchmark, name, N, C, peak_gflops):
    benchmark.group = f"mlp {name} ({N} rows) float32"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, generator=g)
    w1, b1 = torch.randn(4 * C, C, generator=g) / C ** 0.5, torch.randn(4 * C, generator=g) * 0.1
    w2, b2 = torch.randn(C, 4 * C, generator=g) / (4 * C) ** 0.5, torch.randn(C, generator=g) * 0.1
    outs = {}
    contenders = {BASELINE: kept(outs, BASELINE, lambda: reference(x, w1, b1, w2, b2, x))}
    if onednn_inference(x, w1, b1):
        contenders["oneDNN GEMMs with GELU / add epilogues"] = kept(
            outs, "oneDNN", lambda: linear_add(linear_gelu(x, w1, b1), w2, b2, x))
    f = 4 * N * C * 4 * C / 1e9
    compare(benchmark, kept(outs, "fastar", lambda: fastar.ops.mlp(x, w1, b1, w2, b2, x)), contenders,
            baseline=BASELINE, rounds=5, op="mlp", gflop=f, fma_floor_ms=f / peak_gflops * 1e3)
    ref64 = reference(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), x.double())
    benchmark.extra_info["note"] = error_note(outs, ref64, BASELINE, "the torch backend's")


# (name, rows, hidden width, approximate)
GELU_SHAPES = [("HiT-128 128x128 stage MLP, hidden 512, B 1", 128 * 128, 512, "none"),
               ("VAR-d16 FFN, hidden 4096, B 2", 2 * 680, 4096, "tanh")]
GELU_BASELINE = "F.gelu + autograd's gelu_backward"


@pytest.mark.parametrize("name, N, H, approximate", GELU_SHAPES, ids=[s[0] for s in GELU_SHAPES])
def test_gelu_forward_backward(benchmark, name, N, H, approximate):
    benchmark.group = f"GELU forward + backward {name} ({N} x {H}, {approximate}) float32"
    g = torch.Generator().manual_seed(0)
    x, dy = (torch.randn(N, H, generator=g) * 2).requires_grad_(), torch.randn(N, H, generator=g)
    outs = {}

    def step(fn, label):
        def run():
            x.grad = None
            with fastar.cpu_cache_all_tensors(keep_peak=True, min_mb=4):
                fn(x).backward(dy)
            outs[label] = x.grad.clone()
        return run

    compare(benchmark, step(lambda t: gelu(t, approximate), "fastar"),
            {GELU_BASELINE: step(lambda t: torch.nn.functional.gelu(t, approximate=approximate), GELU_BASELINE)},
            baseline=GELU_BASELINE, rounds=7, op="gelu_with_derivative")
    fastar.empty_cpu_cache()
    x64 = x.detach().double().requires_grad_()
    torch.nn.functional.gelu(x64, approximate=approximate).backward(dy.double())
    benchmark.extra_info["note"] = error_note(outs, x64.grad, GELU_BASELINE, "autograd's float32 gradient's")
