"""MAR-B end to end on the CPU: sample_tokens + the KL-16 VAE decode on fastar's kernels against the same model on
the torch backend (use_backend("torch"): SDPA and the official diffusion loop, i.e. what LTH14/mar runs), in one
run, with where the time goes: the transformer (encoder + decoder), the diffusion head split into its GEMMs and the
rest (the split measured by the profiler on one call of the head at a middle step's row count), the VAE decode.
Random weights (the work is that of the released model: head d6 w1024), cfg 2.9 linear, float32.

The issue's shape is B = 4, num_iter = 16, 100 diffusion steps (~15 minutes for both contenders on a 2-core AVX2
machine); the default is B = 1, num_iter = 4, 10 steps (~1 minute on a quiet one). Knobs: FASTAR_BENCH_MAR_B,
FASTAR_BENCH_MAR_ITER, FASTAR_BENCH_MAR_STEPS; the training step's batch: FASTAR_BENCH_MAR_TRAIN_B (1)."""
import math
import os
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import fastar
from benchmarks.bench_var import Breakdown
from benchmarks.harness import compare, on, op_kind, save_samples, step_breakdowns
from fastar.models.mar import AutoencoderKL, mar
from fastar.models.mar.sample import generate

B = int(os.environ.get("FASTAR_BENCH_MAR_B", "1"))
NUM_ITER = int(os.environ.get("FASTAR_BENCH_MAR_ITER", "4"))
STEPS = int(os.environ.get("FASTAR_BENCH_MAR_STEPS", "10"))
TRAIN_B = int(os.environ.get("FASTAR_BENCH_MAR_TRAIN_B", "1"))
CFG = 2.9
LABELS = torch.tensor([207, 360, 387, 974]).repeat(B)[:B]
BASELINE = "torch backend"


def head_gemm_share(model, backend):
    """Share of one diffusion_sample call spent in matrix products, at a middle AR step's rows ([cond ; uncond])."""
    rows = 2 * B * (model.seq_len // NUM_ITER)
    z = torch.randn(rows, model.cfg.width, generator=torch.Generator().manual_seed(0))
    with fastar.use_backend(backend), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        model.diffloss.sample(z, 1.0, CFG, generator=torch.Generator().manual_seed(1))
        wall = time.perf_counter() - t0
    return sum(e.self_cpu_time_total for e in prof.key_averages() if op_kind(e.key) == "GEMMs") / 1e6 / wall


def test_mar_base_sample(benchmark, monkeypatch):
    torch.manual_seed(0)
    vae, model = AutoencoderKL().eval(), mar("base", num_sampling_steps=STEPS).eval()
    with torch.no_grad():  # oneDNN builds its convolution primitives on first use: not a cost of either contender
        for backend in ("cpu", "torch"):
            with fastar.use_backend(backend):
                vae.decode(torch.zeros(B, 16, 16, 16))
    benchmark.group = (f"MAR-B sample_tokens B={B} num_iter={NUM_ITER} cfg {CFG} linear {STEPS} steps + KL-16 "
                       f"decode float32")
    parts = Breakdown(monkeypatch, [("transformer", model, "forward_mae_encoder"),
                                    ("transformer", model, "forward_mae_decoder"),
                                    ("head", fastar.ops, "diffusion_sample"), ("VAE decode", vae, "decode")])
    last = {}

    def sample(name):
        def run():
            with parts.recording(name):
                last[name] = generate(vae, model, LABELS, num_iter=NUM_ITER, cfg=CFG, temperature=1.0, seed=0,
                                      bs=B, progress=False)
        return run

    compare(benchmark, sample("fastar"), {BASELINE: on("torch", sample(BASELINE))}, baseline=BASELINE, rounds=1,
            warmup=0, op="diffusion_sample")
    for name, backend in (("fastar", "cpu"), (BASELINE, "torch")):
        ms = parts.ms[name]
        share = head_gemm_share(model, backend)
        ms["head GEMMs"], ms["head rest"] = ms["head"] * share, ms["head"] * (1 - share)
        del ms["head"]
    benchmark.extra_info["breakdown"] = parts.ms
    benchmark.extra_info["max_abs_diff"] = (last["fastar"] - last[BASELINE]).abs().max().item()
    save_samples(last["fastar"], "mar_b_random_weights")


@pytest.mark.train_step("MAR-B")
def test_mar_base_train_step(benchmark):
    """One MAR-B training step (forward + backward; mask ratio, orders, label dropout and diffusion_batch_mul 4 from
    one seed, so both contenders draw the same masks) on random latents, against the torch backend (the official
    formulation: the head's loss on every row, the unmasked ones' times 0). fastar's head runs only the masked rows
    (diffloss.head_loss). The mask ratio of the seed is in the group name."""
    torch.manual_seed(0)
    model = mar("base").train()
    latents = torch.randn(TRAIN_B, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(TRAIN_B) * 97 % 1000
    g = torch.Generator().manual_seed(4)  # seed 4: 222 of 256 masked at B 1, about the ratio's mean (0.87)
    torch.rand(TRAIN_B, generator=g)  # forward's label-drop draw, then its mask ratio
    masked = math.ceil(model.seq_len * model.mask_ratio(g))
    benchmark.group = (f"MAR-B training step (forward + backward) B={TRAIN_B} diffusion_batch_mul 4, {masked} of "
                       f"{model.seq_len} tokens masked (fastar's head runs those rows only, the official all), float32")

    def step():
        with fastar.cpu_cache_step(torch.device("cpu")):  # fastar's training step; the torch backend's: a no-op
            model.zero_grad(set_to_none=True)
            loss = model(latents, labels, generator=torch.Generator().manual_seed(4))
            loss.backward()
            return loss.detach()

    step()  # oneDNN's primitives, first-touch pages, autograd's buffers: not a cost of either contender
    baseline = {BASELINE: on("torch", step)}
    baseline[BASELINE]()
    compare(benchmark, step, baseline, baseline=BASELINE, rounds=1, warmup=0, op="diffusion_loss")
    step_breakdowns(benchmark, step, baseline, params=list(model.parameters()))
    model.zero_grad(set_to_none=True)
    fastar.empty_cpu_cache()


def test_mar_base_sample_bf16(benchmark, bf16_row):
    """sample_tokens in the bf16 mode (the transformer's products and the head's GEMMs on bfloat16 operands) against
    the torch backend's float32 run and fastar's float32 one. The head gets random weights (std 0.02) instead of its
    zero init, whose eps = 0 would make the tokens independent of the transformer; agreement is the bf16 tokens'
    largest difference from fastar's float32 ones, relative to their scale. Declined, not timed, on a CPU without
    bf16 GEMM instructions (as VAR's bf16 row); FASTAR_EMULATED_BF16=1 times it anyway, and the group says so."""
    benchmark.group = bf16_row(
        f"MAR-B sample_tokens B={B} num_iter={NUM_ITER} cfg {CFG} linear {STEPS} steps, bf16 mode", "MAR-B sampling")
    torch.manual_seed(0)
    model = mar("base", num_sampling_steps=STEPS).eval()
    with torch.no_grad():
        for p in model.diffloss.parameters():
            p.normal_(0, 0.02)
    last = {}

    def sample(name, precision):
        def run():
            last[name] = model.sample_tokens(B, num_iter=NUM_ITER, cfg=CFG, labels=LABELS, precision=precision,
                                             generator=torch.Generator().manual_seed(0))
        return run

    base = f"{BASELINE}, float32"
    compare(benchmark, sample("fastar", "bf16"), {base: on("torch", sample(base, "fp32")),
                                                  "fastar fp32": sample("fastar fp32", "fp32")},
            baseline=base, rounds=1, warmup=0, op="diffusion_sample")
    ref = last["fastar fp32"]
    err = ((last["fastar"] - ref).abs().max() / ref.abs().max()).item()
    benchmark.extra_info["note"] = f"bf16 tokens vs fastar fp32, same seed: max |difference| {err:.2e} of their scale"
