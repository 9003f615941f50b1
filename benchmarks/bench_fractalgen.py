"""FractalGen end to end on the CPU: fractalmar_in64 on fastar's kernels against the same model on the torch backend
(use_backend("torch"): SDPA for the attention the official code writes as float32 q k^T + softmax, one token per
step recomputed at the AR levels), in one run: sampling (num_iter 8,4, cfg 6.5 linear, temperature 1.02,
filter_threshold 1e-4) with the time of each level's transformer passes, and one training step.

Random weights, official widths. The full shape (B 4, blocks 32,8,3) is ~20 TFLOP per sampling run, many minutes
here, so the default is B 1 with 4 and 2 blocks at levels 0 and 1 (~1 TFLOP): about 2 minutes for the file, each
contender run once. Knobs (environment): FASTAR_BENCH_FG_B (1; the issue's target shape: 4), FASTAR_BENCH_FG_BLOCKS
("4,2,3"; the model: "32,8,3"), FASTAR_BENCH_FG_TRAIN_B (2), FASTAR_BENCH_FG_NUM_ITER ("8,4")."""
import os
import time
from collections import defaultdict
from contextlib import contextmanager

import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar.models.fractalgen import build
from fastar.models.fractalgen.pixelloss import PIX_MEAN, PIX_STD

B_SAMPLE = int(os.environ.get("FASTAR_BENCH_FG_B", "1"))
B_TRAIN = int(os.environ.get("FASTAR_BENCH_FG_TRAIN_B", "2"))
BLOCKS = tuple(int(n) for n in os.environ.get("FASTAR_BENCH_FG_BLOCKS", "4,2,3").split(","))
NUM_ITER = [int(n) for n in os.environ.get("FASTAR_BENCH_FG_NUM_ITER", "8,4").split(",")]
CLASSES = torch.tensor([207, 360, 387, 974]).repeat(B_SAMPLE)[:B_SAMPLE]
BASELINE = "torch backend"
SHAPE = f"fractalmar_in64 blocks {','.join(map(str, BLOCKS))}"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("fractalmar_in64", num_blocks_list=BLOCKS)


def on(backend, fn):
    def run():
        with fastar.use_backend(backend):
            return fn()
    return run


def levels(model):
    """[(name, transformer module)] from the top level down to PixelLoss."""
    out, node, i = [], model, 0
    while hasattr(node, "generator"):
        out.append((f"level {i} ({type(node.generator).__name__})", node.generator))
        node, i = node.next_fractal, i + 1
    return out + [(f"level {i} (PixelLoss)", node)]


class LevelTimes:
    """ms spent in each level's transformer passes (predict: it never calls the level below), per contender; the
    rest (masks, CFG, pixel draws, bookkeeping) is 'other'."""

    def __init__(self, monkeypatch, model):
        self.ms, self._spent = {}, None
        for name, level in levels(model):
            monkeypatch.setattr(level, "predict", self._timed(name, level.predict))

    def _timed(self, part, fn):
        def wrapped(*args, **kwargs):
            if self._spent is None:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._spent[part] += time.perf_counter() - t0
        return wrapped

    @contextmanager
    def recording(self, contender):
        self._spent = defaultdict(float)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            total = time.perf_counter() - t0
            self._spent["other"] = total - sum(self._spent.values())
            self.ms[contender] = {part: s * 1e3 for part, s in self._spent.items()}
            self.ms[contender]["total"] = total * 1e3
            self._spent = None


def test_fractalmar_in64_sample(benchmark, model, monkeypatch):
    model.eval()
    benchmark.group = f"{SHAPE} sampling B={B_SAMPLE} num_iter {NUM_ITER} cfg=6.5 float32"
    parts, last = LevelTimes(monkeypatch, model), {}

    def sample(name):
        def run():
            with parts.recording(name):
                last[name] = model.generate(CLASSES, num_iter_list=NUM_ITER, cfg=6.5, temperature=1.02,
                                            filter_threshold=1e-4, generator=torch.Generator().manual_seed(0))
        return run

    compare(benchmark, sample("fastar"), {BASELINE: on("torch", sample(BASELINE))}, baseline=BASELINE, rounds=1,
            warmup=0, op="attention")
    # the share of pixels drawn identically (a rounding difference flips a draw and everything after it)
    benchmark.extra_info["agreement"] = {BASELINE: (last["fastar"] == last[BASELINE]).float().mean().item()}
    benchmark.extra_info["breakdown"] = parts.ms


def test_fractalmar_in64_train_step(benchmark, model):
    model.train()
    benchmark.group = f"{SHAPE} training step (forward + backward) B={B_TRAIN} float32"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(256, (B_TRAIN, 3, 64, 64), generator=g) / 255
    x = (x - torch.tensor(PIX_MEAN)[:, None, None]) / torch.tensor(PIX_STD)[:, None, None]
    labels = torch.randint(1000, (B_TRAIN,), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same masks for both contenders
        model(x, labels).backward()

    compare(benchmark, step, {BASELINE: on("torch", step)}, baseline=BASELINE, rounds=1, warmup=0, op="attention")
    model.zero_grad(set_to_none=True)
