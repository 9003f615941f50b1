"""diffusion_sample at MAR-B's head shapes (width 1024, depth 6, z 768, 16 channels; 512 rows = 256 tokens with cfg,
float32) against the official loop: fastar.reference.diffusion_sample run in float32 is DiffLoss.sample's
formulation (bit-identical to it on the CPU), every step recomputing the condition and time embeddings of all rows
and running ~40 separate torch ops. Same weights, z and generator seed for both.

The training loss (test_diffusion_loss, FASTAR_BENCH_DIFFUSION_LOSS_ROWS rows) runs forward + backward through the head.

FASTAR_BENCH_DIFFUSION_STEPS narrows the 100 steps for a quick run on a loaded machine (the ratio is per step,
less the one-off setup that 100 steps amortize)."""
import os

import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar.reference import diffusion as ref

WIDTH, DEPTH, Z, C = 1024, 6, 768, 16  # MAR-B's released head (d6 w1024) on its 768-wide decoder
ROWS, CFG = 512, 2.9
STEPS = int(os.environ.get("FASTAR_BENCH_DIFFUSION_STEPS", 100))
# the baselines: the torch backend of diffusion_sample / diffusion_loss is the reference run in float32, i.e. the
# official DiffLoss loop and loss terms
OFFICIAL_LOOP = "official loop (torch backend: fastar.reference.diffusion_sample), float32"
OFFICIAL_LOSS = "official formulation (torch backend: fastar.reference.diffusion_loss), float32"


def head(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * (0.02 if len(s) == 2 else 0.01)
            for k, s in ref.head_shapes(DEPTH, WIDTH, C, Z).items()}


def gflop(rows, steps):
    """Matrix-product work of the official loop: per row and step 2 (time MLP) + cond + 3 per block + final."""
    per_row = ref.FREQ_DIM * WIDTH + WIDTH * WIDTH + Z * WIDTH + DEPTH * (3 * WIDTH + 2 * WIDTH) * WIDTH + 2 * WIDTH * WIDTH
    return 2 * rows * steps * per_row / 1e9



# The second row: 24 rows (12 tokens with cfg), as MAR-B's sample_tokens at B 4 calls the head in its first
# iterations (8 to 200 rows a call), at the full 100 steps: the once-a-call weight reorder of the float32 oneDNN
# path (blas::PackedWeight) is amortized as in sampling, and the row costs seconds.
@pytest.mark.parametrize("rows, steps", [(ROWS, STEPS), (24, 100)])
def test_diffusion_sample(benchmark, rows, steps, peak_gflops):
    benchmark.group = f"diffusion_sample MAR-B head w{WIDTH} d{DEPTH} {rows} rows cfg {CFG} {steps} steps float32"
    w, z = head(), torch.randn(rows, Z, generator=torch.Generator().manual_seed(1))

    def run(fn):
        return lambda: fn(z, w, num_steps=steps, cfg=CFG, generator=torch.Generator().manual_seed(2))

    contenders = {OFFICIAL_LOOP: run(ref.diffusion_sample)}
    # Agreement on the first 2 steps only: one more full run of each would double the benchmark's time.
    ours = fastar.ops.diffusion_sample(z, w, num_steps=2, cfg=CFG, generator=torch.Generator().manual_seed(2))
    max_diff = (ref.diffusion_sample(z, w, num_steps=2, cfg=CFG, generator=torch.Generator().manual_seed(2))
                - ours).abs().max().item()
    f = gflop(rows, steps)
    compare(benchmark, run(fastar.ops.diffusion_sample), contenders, baseline=OFFICIAL_LOOP,
            rounds=2, warmup=0, op="diffusion_sample", max_abs_diff=max_diff, max_abs=ours.abs().max().item(),
            gflop=f, fma_floor_ms=f / peak_gflops * 1e3)


@pytest.mark.parametrize("steps", [STEPS])
def test_diffusion_sample_bf16(benchmark, steps, bf16_row, bf16_peak_gflops):
    """precision="bf16" (GEMMs on bfloat16 operands, float32 accumulation) against the same float32 official loop,
    fastar float32 as a second contender; the error of each against the float64 reference is reported (same weights,
    z and noise). Declined, not timed, on a CPU without bf16 GEMM instructions (the issue's rule for bf16 modes)."""
    benchmark.group = bf16_row(
        f"diffusion_sample MAR-B head w{WIDTH} d{DEPTH} {ROWS} rows cfg {CFG} {steps} steps bf16", "diffusion_sample")
    w, z = head(), torch.randn(ROWS, Z, generator=torch.Generator().manual_seed(1))
    out = {}

    def run(name, fn, **kw):
        def call():
            out[name] = fn(z, w, num_steps=steps, cfg=CFG, generator=torch.Generator().manual_seed(2), **kw)
        return call

    base = OFFICIAL_LOOP
    contenders = {base: run(base, ref.diffusion_sample), "fastar fp32": run("fastar fp32", fastar.ops.diffusion_sample)}
    f = gflop(ROWS, steps)  # the share of the bf16 dot-product peak where it is measured (AVX512-BF16)
    peak = dict(gflop=f, fma_floor_ms=f / bf16_peak_gflops * 1e3, peak="bf16") if bf16_peak_gflops else {}
    compare(benchmark, run("fastar", fastar.ops.diffusion_sample, precision="bf16"), contenders, baseline=base,
            rounds=2, warmup=0, op="diffusion_sample", **peak)
    exact = ref.diffusion_sample(z.double(), {k: v.double() for k, v in w.items()}, num_steps=steps, cfg=CFG,
                                 generator=torch.Generator().manual_seed(2))
    err = {name: (o.double() - exact).abs().max().item() for name, o in out.items()}
    benchmark.extra_info["max_abs_diff"] = err["fastar"]
    benchmark.extra_info["max_abs"] = exact.abs().max().item()
    benchmark.extra_info["note"] = (f"max |x - float64 reference| over the tokens (max |x| {exact.abs().max():.2f}): "
                                    + ", ".join(f"{n} {e:.2e}" for n, e in err.items()))


LOSS_ROWS = int(os.environ.get("FASTAR_BENCH_DIFFUSION_LOSS_ROWS", 1024))  # 64 tokens x diffusion_batch_mul 4, 4 images


def test_diffusion_loss(benchmark):
    """DiffLoss.forward's training loss, forward + backward through the head (module) at MAR-B's head shapes, float32:
    fastar.ops.diffusion_loss (the loss terms and their gradient in one pass) against the official formulation of
    the terms (fastar.reference.diffusion_loss in float32: iDDPM's ~40 elementwise autograd ops), same head, t, noise."""
    from fastar.models.mar.diffloss import SimpleMLPAdaLN
    benchmark.group = f"diffusion_loss MAR-B head w{WIDTH} d{DEPTH} {LOSS_ROWS} rows forward + backward float32"
    g = torch.Generator().manual_seed(3)
    net = SimpleMLPAdaLN(C, WIDTH, Z, DEPTH)
    with torch.no_grad():  # the official init zeroes the adaLN and output layers: redraw so the terms are not trivial
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.01))
    x, z, noise = (torch.randn(LOSS_ROWS, n, generator=g) for n in (C, Z, C))
    t = torch.randint(0, 1000, (LOSS_ROWS,), generator=g)

    def run(fn):
        def step():
            net.zero_grad(set_to_none=True)
            loss = fn(x, z, net, t=t, noise=noise).mean()
            loss.backward()
            return loss
        return step

    ours, theirs = run(fastar.ops.diffusion_loss), run(ref.diffusion_loss)
    with torch.no_grad():  # per-row losses of both
        max_diff = (fastar.ops.diffusion_loss(x, z, net, t=t, noise=noise)
                    - ref.diffusion_loss(x, z, net, t=t, noise=noise)).abs().max().item()
    compare(benchmark, ours, {OFFICIAL_LOSS: theirs}, baseline=OFFICIAL_LOSS, rounds=3, warmup=1, op="diffusion_loss",
            max_abs_diff=max_diff)
