"""FractalGen end to end on the CPU: fractalmar_in64 on fastar against the official formulation, in one run: sampling
(num_iter 8,4, cfg 6.5 linear, temperature 1.02, filter_threshold 1e-4) with the time of each level's transformer
passes, and one training step (after one untimed step of each contender, as bench_mar's: the first pays oneDNN's
primitives and first-touch pages; 1.17x cold against 1.37x warm in two runs of 2026-12-05).

Sampling baseline, "official formulation": the torch backend (use_backend("torch"): SDPA where the official code
writes float32 q k^T + softmax) with PixelLoss recomputing its 4 tokens for each of R, G, B as the official code does
(kv_cache=False). "torch backend" is the same model as fastar's (PixelLoss decoding against a KV cache) on the torch
backend: the kernels' share of the gain. Training baseline: the torch backend (the same computation; each level
below the top reseeds torch's RNG, so both draw the same masks and rows, and one more step of each with dropout p 0
compares their losses and gradient norms).

Random weights, official widths. The full shape (B 4, blocks 32,8,3) is ~20 TFLOP per sampling run, many minutes
here, so the default is B 1 with 4 and 2 blocks at levels 0 and 1 (~1 TFLOP): about 2 minutes for the file on a
quiet machine, each contender run once. Knobs (environment): FASTAR_BENCH_FG_B (1; the issue's target shape:
4), FASTAR_BENCH_FG_BLOCKS ("4,2,3"; the model: "32,8,3"), FASTAR_BENCH_FG_TRAIN_B (2), FASTAR_BENCH_FG_NUM_ITER
("8,4")."""
import contextlib
import os
from functools import partial

import pytest
import torch

import fastar
from benchmarks.bench_var import Breakdown
from benchmarks.harness import compare, on, recorded, step_agreement, step_breakdowns, step_figures
from fastar.models.fractalgen import build
from fastar.models.fractalgen.pixelloss import PIX_MEAN, PIX_STD

B_SAMPLE = int(os.environ.get("FASTAR_BENCH_FG_B", "1"))
B_TRAIN = int(os.environ.get("FASTAR_BENCH_FG_TRAIN_B", "2"))
BLOCKS = tuple(int(n) for n in os.environ.get("FASTAR_BENCH_FG_BLOCKS", "4,2,3").split(","))
NUM_ITER = [int(n) for n in os.environ.get("FASTAR_BENCH_FG_NUM_ITER", "8,4").split(",")]
CLASSES = torch.tensor([207, 360, 387, 974]).repeat(B_SAMPLE)[:B_SAMPLE]
BASELINE, SAME_MODEL = "official formulation", "torch backend"
FP32_SAMPLES = {}  # fastar's float32 sampling run, which the bf16 row compares with
SHAPE = f"fractalmar_in64 blocks {','.join(map(str, BLOCKS))}"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("fractalmar_in64", num_blocks_list=BLOCKS)


def levels(model):
    """[(name, transformer module)] from the top level down to PixelLoss."""
    out, node, i = [], model, 0
    while hasattr(node, "generator"):
        out.append((f"level {i} ({type(node.generator).__name__})", node.generator))
        node, i = node.next_fractal, i + 1
    return out + [(f"level {i} (PixelLoss)", node)]


class LevelTimes(Breakdown):
    """ms spent in each level's transformer passes (predict, and PixelLoss's decode: they never call the level
    below), per contender; the rest (masks, CFG, pixel draws, bookkeeping) is 'other'."""

    def __init__(self, monkeypatch, model):  # not Breakdown's own: that one patches VAR's parts
        self.ms, self._spent, self._depth = {}, None, 0
        for name, level in levels(model):
            for method in ("predict", "decode"):
                if hasattr(level, method):
                    monkeypatch.setattr(level, method, self._timed(name, getattr(level, method)))


def sampler(model, monkeypatch, last, name, precision="fp32", recompute=False, parts=None):
    """A contender: model.generate at the benchmark's settings into last[name]; recompute: the official PixelLoss
    (three full forwards); parts: a LevelTimes recording it."""
    pixel = levels(model)[-1][1]

    def run():
        if recompute:
            monkeypatch.setattr(pixel, "sample", partial(type(pixel).sample, pixel, kv_cache=False))
        try:
            with parts.recording(name) if parts else contextlib.nullcontext():
                last[name] = model.generate(CLASSES, num_iter_list=NUM_ITER, cfg=6.5, temperature=1.02,
                                            filter_threshold=1e-4, generator=torch.Generator().manual_seed(0),
                                            precision=precision)
        finally:
            if recompute:
                monkeypatch.delattr(pixel, "sample")
    return run


def test_fractalmar_in64_sample(benchmark, model, monkeypatch):
    model.eval()
    benchmark.group = f"{SHAPE} sampling B={B_SAMPLE} num_iter {NUM_ITER} cfg=6.5 float32"
    parts, last = LevelTimes(monkeypatch, model), {}
    sample = partial(sampler, model, monkeypatch, last, parts=parts)
    contenders = {BASELINE: on("torch", sample(BASELINE, recompute=True)), SAME_MODEL: on("torch", sample(SAME_MODEL))}
    compare(benchmark, sample("fastar"), contenders, baseline=BASELINE, rounds=1, warmup=0, op="attention",
            record="fractalmar sampling")
    FP32_SAMPLES["fastar"] = last["fastar"]  # the bf16 row's float32 reference
    # the share of pixels drawn identically (a rounding difference flips a draw and everything after it)
    benchmark.extra_info["agreement"] = {name: (last["fastar"] == last[name]).float().mean().item()
                                         for name in contenders}
    benchmark.extra_info["breakdown"] = parts.ms


def test_fractalmar_in64_sample_bf16(benchmark, model, monkeypatch, bf16_row):
    """generate(precision="bf16") (the MAR levels' products on bfloat16 operands) against the official formulation in
    float32 (as the row above) and fastar's float32 run; agreement: the share of pixels drawn as fastar's float32
    run drew them. Declined, not timed, on a CPU without bf16 GEMM instructions (VAR's and MAR's rule)."""
    benchmark.group = bf16_row(f"{SHAPE} sampling B={B_SAMPLE} num_iter {NUM_ITER} cfg=6.5, bf16 mode",
                               "fractalmar_in64 sampling")
    model.eval()
    last = {}
    sample = partial(sampler, model, monkeypatch, last)
    base = f"{BASELINE} (torch backend), float32"
    # the float32 runs: the float32 row's, where it ran in this process (the same inputs), else timed here
    measured = recorded("fractalmar sampling", **{base: BASELINE, "fastar fp32": "fastar"})
    if measured:
        last["fastar fp32"] = FP32_SAMPLES["fastar"]
    contenders = {} if measured else {base: on("torch", sample(base, recompute=True)),
                                      "fastar fp32": sample("fastar fp32")}
    compare(benchmark, sample("fastar", "bf16"), contenders, baseline=base, rounds=1, warmup=0, op="attention",
            measured=measured)
    benchmark.extra_info["agreement"] = {"fastar fp32": (last["fastar"] == last["fastar fp32"]).float().mean().item()}


@pytest.mark.train_step("fractalmar_in64")
def test_fractalmar_in64_train_step(benchmark, model):
    model.train()
    benchmark.group = f"{SHAPE} training step (forward + backward) B={B_TRAIN} float32"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(256, (B_TRAIN, 3, 64, 64), generator=g) / 255
    x = (x - torch.tensor(PIX_MEAN)[:, None, None]) / torch.tensor(PIX_STD)[:, None, None]
    labels = torch.randint(1000, (B_TRAIN,), generator=g)

    def step():
        with fastar.cpu_cache_step(torch.device("cpu")):  # fastar's training step; the torch backend's: a no-op
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)  # the same masks for both contenders
            loss = model(x, labels)
            loss.backward()
            return loss.detach()

    # Each level below the top draws its masks (and PixelLoss its jitter) from a seed of its own: the dropouts above
    # it draw one seed per call on fastar, a mask on torch, and would leave the two contenders other masks to draw,
    # other work (2878 against 2763 PixelLoss rows at B 2)
    rows, below = {}, [level for _, level in levels(model)[1:]]
    hooks = [level.register_forward_pre_hook(partial(reseed, rows, i + 1)) for i, level in enumerate(below)]
    step()  # oneDNN's primitives, first-touch pages, autograd's buffers: not a cost of either contender (bench_mar's)
    baseline = {SAME_MODEL: on("torch", step)}
    baseline[SAME_MODEL]()
    compare(benchmark, step, baseline, baseline=SAME_MODEL, rounds=1, warmup=0, op="attention")
    step_breakdowns(benchmark, step, baseline)
    for h in hooks:
        h.remove()
    benchmark.extra_info["rows_per_level"] = rows  # the same for both contenders: asserted
    with no_dropout(model):  # fastar's dropout masks are Philox draws, not torch's: the check steps run without
        params, steps = list(model.parameters()), {"fastar": step, **baseline}
        step_agreement(benchmark, {name: step_figures(fn(), params) for name, fn in steps.items()},
                       "one more step of each after the timed rounds with dropout p 0, same inputs and seed")
    model.zero_grad(set_to_none=True)
    fastar.empty_cpu_cache()


def reseed(rows, level, module, args):
    """A forward pre-hook: seeds torch's RNG with the level's number, and checks that every contender gives the level
    the same rows (rows[level], its first call's count)."""
    torch.manual_seed(level)
    n = args[0].shape[0]
    assert rows.setdefault(level, n) == n, f"level {level}: {n} rows, the first step's {rows[level]}"


@contextlib.contextmanager
def no_dropout(model):
    """model's dropout probabilities 0 inside (its masks then draw nothing), restored after."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    ps = [m.p for m in drops]
    for m in drops:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(drops, ps):
            m.p = p


@pytest.fixture(scope="module")
def fractalar():
    torch.manual_seed(0)
    return build("fractalar_in64").eval()


@pytest.mark.parametrize("level", [0, 1])
def test_fractalar_in64_decode_step(benchmark, fractalar, level):
    """One decode step of fractalar_in64's AR level (B 1 under CFG: 2 rows; level 0: 32 blocks of width 1024, 1.6 GB
    of weights; level 1: 8 blocks of 512, 109 MB), mid-sequence: fastar.ops.transformer_decode (llama blocks, one
    call) against the same blocks called one by one on fastar's kernels and on the torch backend. fractalar samples
    256 level-0 and 4096 level-1 steps an image."""
    ar = fractalar.generator if level == 0 else fractalar.next_fractal.generator
    rows, C, H = 2, ar.pos_embed_learned.shape[-1], ar.num_heads
    benchmark.group = f"fractalar_in64 level {level} decode step: {len(ar.blocks)} llama blocks, {rows} rows, fp32"
    caches = [tuple(torch.randn(rows, H, ar.seq_len, C // H) for _ in range(2)) for _ in ar.blocks]
    x, step = torch.randn(rows, 1, C), ar.seq_len // 2
    with torch.no_grad():
        stack = ar.decode_stack(x)

    def run(st):
        def go():
            with torch.no_grad():
                return ar.transformer(x, step, caches, st)
        return go
    same = torch.equal(run(stack)(), run(None)())
    compare(benchmark, run(stack), {SAME_MODEL: on("torch", run(None)), "fastar kernels, block by block": run(None)},
            baseline=SAME_MODEL, rounds=5 if level == 0 else 15, op="transformer_decode", shape=f"level {level}",
            bitwise_equal_to_blocks=same)
