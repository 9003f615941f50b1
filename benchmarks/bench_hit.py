"""HiT end to end on the CPU: the HiT-256 generator forward and one simultaneous G + D training step of HiT-128
(non-saturating loss + R1, the official recipe; the StyleGAN2 discriminator capped at 64 channels, so that its convolutions, the same in both contenders, leave the generator a visible share on 2 cores)
on fastar's kernels against the same model on the torch backend (use_backend("torch"): partition + SDPA for
the multi-axis attention, SDPA for the cross-attention, i.e. what a PyTorch port runs), random weights, float32,
with where the time goes. Each contender runs once, no warm-up (a HiT-256 forward takes tens of seconds on a loaded
2-core machine; the defaults keep the file near 2 minutes).

Knobs (environment): FASTAR_BENCH_HIT_GEN_B (2; 8 is the issue's shape) and FASTAR_BENCH_HIT_STEP_B (1) size the
batches, FASTAR_BENCH_HIT_SIZE (256) and FASTAR_BENCH_HIT_STEP_SIZE (128) the configs,
FASTAR_BENCH_HIT_D_CHANNELS (64) the discriminator's cap (512: the official width)."""
import os

import torch
import torch.nn.functional as F

import fastar
from benchmarks import bench_var
from benchmarks.harness import compare
from fastar.models.hit import CONFIGS, HiTGenerator, StyleGANDiscriminator
from fastar.models.hit.train import gan_step

SIZE = int(os.environ.get("FASTAR_BENCH_HIT_SIZE", "256"))
STEP_SIZE = int(os.environ.get("FASTAR_BENCH_HIT_STEP_SIZE", "128"))
D_CHANNELS = int(os.environ.get("FASTAR_BENCH_HIT_D_CHANNELS", "64"))
B_GEN, B_STEP = int(os.environ.get("FASTAR_BENCH_HIT_GEN_B", "2")), int(os.environ.get("FASTAR_BENCH_HIT_STEP_B", "1"))
BASELINE = "torch backend"




def on(backend, fn):
    def run():
        with fastar.use_backend(backend):
            return fn()
    return run


class Breakdown(bench_var.Breakdown):
    """ms per part of the generator's forward, per contender: multi-axis self-attention, cross-attention, the
    linear layers (F.linear) and the rest (BatchNorm, GELU, pixel shuffle, embeddings); VAR's timing, HiT's parts."""

    def __init__(self, monkeypatch):
        self.ms, self._spent, self._depth = {}, None, 0
        for part, owner, name in (("multi-axis attention", fastar.ops, "multi_axis_attention"),
                                  ("cross-attention", fastar.ops, "attention"), ("linear layers", F, "linear")):
            monkeypatch.setattr(owner, name, self._timed(part, getattr(owner, name)))


def test_hit_generator_forward(benchmark, monkeypatch):
    torch.manual_seed(0)
    G = HiTGenerator(CONFIGS[SIZE]).train()  # BatchNorm on batch statistics, as in training
    benchmark.group = f"HiT-{SIZE} generator forward B={B_GEN} float32"
    z = torch.randn(B_GEN, G.cfg.latent_dim, generator=torch.Generator().manual_seed(0))
    parts, out = Breakdown(monkeypatch), {}

    def forward(name):
        def run():
            with parts.recording(name), torch.no_grad():
                out[name] = G(z)
        return run

    compare(benchmark, forward("fastar"), {BASELINE: on("torch", forward(BASELINE))}, baseline=BASELINE, rounds=1,
            warmup=0, op="multi_axis_attention")
    benchmark.extra_info["max_abs_diff"] = {BASELINE: (out["fastar"] - out[BASELINE]).abs().max().item()}
    benchmark.extra_info["breakdown"] = parts.ms


def test_hit_gan_step(benchmark):
    torch.manual_seed(0)
    G, D = HiTGenerator(CONFIGS[STEP_SIZE]).train(), StyleGANDiscriminator(STEP_SIZE, max_channels=D_CHANNELS).train()
    benchmark.group = f"HiT-{STEP_SIZE} G + D training step (NS loss + R1, D <= {D_CHANNELS} channels) B={B_STEP} float32"
    g = torch.Generator().manual_seed(1)
    real, z = torch.rand(B_STEP, 3, STEP_SIZE, STEP_SIZE, generator=g) * 2 - 1, torch.randn(B_STEP, G.cfg.latent_dim, generator=g)
    opts = [torch.optim.SGD(m.parameters(), lr=0.0) for m in (G, D)]  # the same weights every round

    def step():
        gan_step(G, D, real, z, *opts, r1=10.0)

    # oneDNN builds its convolution primitives on first use: D's (the same in both contenders) before timing.
    x = torch.cat([real, real]).requires_grad_()
    torch.autograd.grad(D(x).sum(), x, create_graph=True)[0].square().sum().backward()

    compare(benchmark, step, {BASELINE: on("torch", step)}, baseline=BASELINE, rounds=1, warmup=0,
            op="multi_axis_attention")
