"""A small DALL-E end to end on the CPU: the same model on fastar's kernels against the torch backend
(use_backend("torch"): SDPA with the dense mask rows, over the cache prefix when sampling, as ru-dalle and
DALLE-pytorch's static-mask layers run), in one run: sampling one image on the KV caches (prefill of the text, then
one image token per step) with where its time goes, and one training step. Random weights.

Knobs (environment): FASTAR_BENCH_DALLE="depth,width,text_len,grid,steps" (default 12,512,256,32,1024: the issue's
model sampling a whole image, ~1 minute for the file on a quiet 2-core machine; steps < grid^2 gives the first
grid^2 - steps tokens and samples the rest) and FASTAR_BENCH_DALLE_B (training batch, 1)."""
import os
from contextlib import nullcontext

import pytest
import torch

import fastar
from benchmarks.bench_var import BASELINE, LINEAR_PARTS, Breakdown
from benchmarks.harness import compare, on, recorded, step_breakdowns
from fastar.models.dalle import DALLE, DALLEConfig
from fastar.models.dalle import dalle as dalle_module
from fastar.models.layers import Linear, decode_weights
from fastar.selftest_bench import dalle_decode_step

DEPTH, WIDTH, TEXT_LEN, GRID, STEPS = (int(x) for x in os.environ.get("FASTAR_BENCH_DALLE",
                                                                     "12,512,256,32,1024").split(","))
B_TRAIN = int(os.environ.get("FASTAR_BENCH_DALLE_B", "1"))
CFG = DALLEConfig(width=WIDTH, depth=DEPTH, heads=WIDTH // 64, text_len=TEXT_LEN, grid=GRID)
SHAPE = f"{DEPTH} layers width {WIDTH} {TEXT_LEN}+{GRID * GRID} tokens"
FP32_SAMPLES = {}  # the float32 row's tokens (the torch backend's, fastar's), which the bfloat16 row compares with


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DALLE(CFG)


def text(B):
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, CFG.text_vocab, (B, TEXT_LEN), generator=g)
    t[:, TEXT_LEN // 2:] = 0  # a padded caption
    return t


class DalleBreakdown(Breakdown):
    """Breakdown's parts for DALL-E: linear layers, attention (prefill and decode), token sampling, the rest."""

    def __init__(self, monkeypatch):
        self.ms, self._spent, self._depth = {}, None, 0
        for _, owner, attr in [*LINEAR_PARTS, (None, Linear, "forward_gelu")]:  # the MLP's fc1 + GELU too
            monkeypatch.setattr(owner, attr, self._timed("linear layers", getattr(owner, attr)))
        monkeypatch.setattr(fastar.ops, "attention_decode", self._timed("attention", fastar.ops.attention_decode))
        monkeypatch.setattr(fastar.ops, "transformer_decode", self._timed(  # fastar's decode steps: one call each
            "decode steps' blocks (transformer_decode)", fastar.ops.transformer_decode))
        monkeypatch.setattr(dalle_module, "sample_categorical",
                            self._timed("token sampling", dalle_module.sample_categorical))


@pytest.mark.parametrize("weights", ["float32", "bfloat16", "bfloat16, bfloat16 caches"])
def test_dalle_sample(benchmark, model, monkeypatch, weights):
    """weights bfloat16: fastar's decode steps read bfloat16 copies of the weights (layers.decode_weights, a
    sampling mode with its own tokens), against the same float32 baseline and fastar in float32; with bfloat16
    caches also the KV caches (generate(cache_dtype=torch.bfloat16)): half the bytes of each step's attention."""
    model.eval()
    caches = torch.bfloat16 if "caches" in weights else None
    mode = {"float32": "", "bfloat16": ", fastar's decode steps on bfloat16 weights"}.get(
        weights, ", fastar's decode steps on bfloat16 weights and KV caches")
    benchmark.group = f"DALL-E sampling B=1 {SHAPE}: text prefill + {STEPS} image tokens on the KV caches{mode}"
    prefix = torch.zeros(1, GRID * GRID - STEPS, dtype=torch.long)  # given tokens: only the last STEPS are sampled
    parts, last = DalleBreakdown(monkeypatch), {}

    def sample(name, dtype=torch.float32, cache_dtype=None):
        """dtype: the decode copies' (None: none, which the torch backend never reads)."""
        def run():
            with parts.recording(name), torch.no_grad(), (decode_weights(model, dtype) if dtype else nullcontext()):
                last[name] = model.generate(text(1), image_prefix=prefix if STEPS < GRID * GRID else None, top_k=64,
                                            generator=torch.Generator().manual_seed(0), cache_dtype=cache_dtype)
        return run

    others, measured = {BASELINE: on("torch", sample(BASELINE, None))}, None
    if weights != "float32":  # its float32 runs: the float32 row's in this process (the same inputs), else here
        measured = recorded("dalle sampling", **{BASELINE: BASELINE, "fastar float32": "fastar"})
        others = {} if measured else {**others, "fastar float32": sample("fastar float32")}
        last.update(FP32_SAMPLES if measured else {})
    compare(benchmark, sample("fastar", getattr(torch, weights.split(",")[0]), caches), others, baseline=BASELINE,
            rounds=1, warmup=0, op="attention_decode", shape=SHAPE, sampled_tokens=STEPS, weights=weights,
            measured=measured, record="dalle sampling" if weights == "float32" else None)
    if weights == "float32":
        FP32_SAMPLES.update({BASELINE: last[BASELINE], "fastar float32": last["fastar"]})
    # share of the sampled tokens equal to each contender's (same seed): a {contender: share} table, as every benchmark
    benchmark.extra_info["agreement"] = {name: (last["fastar"] == last[name]).float().mean().item()
                                         for name in [*others, *(measured or {})]}
    benchmark.extra_info["breakdown"] = parts.ms


def test_dalle_decode_step(benchmark, model):
    """One decode step (B 1, an image token mid-grid) through the 12 blocks: fastar.ops.transformer_decode (the loop
    in C++) against the same blocks called one by one in Python, on fastar's kernels and on the torch backend."""
    model.eval()
    benchmark.group = f"DALL-E decode step B=1 {SHAPE}: the {DEPTH} blocks, one image token against its KV caches"
    one_call, blocks = dalle_decode_step(model, torch.Generator().manual_seed(0))
    same = torch.equal(one_call(), blocks())
    compare(benchmark, one_call, {BASELINE: on("torch", blocks), "fastar kernels, block by block": blocks},
            baseline=BASELINE, rounds=15, op="transformer_decode", shape=SHAPE, bitwise_equal_to_blocks=same)


@pytest.mark.train_step("DALL-E")
def test_dalle_train_step(benchmark, model):
    model.train()
    benchmark.group = f"DALL-E training step (forward + backward) B={B_TRAIN} {SHAPE}"
    image = torch.randint(CFG.image_vocab, (B_TRAIN, GRID * GRID), generator=torch.Generator().manual_seed(1))

    def step():
        with fastar.cpu_cache_step(torch.device("cpu")):  # fastar's training step; the torch backend's: a no-op
            model.zero_grad(set_to_none=True)
            loss = dalle_module.loss(model, text(B_TRAIN), image)[0]
            loss.backward()
            return loss.detach()

    baseline = {BASELINE: on("torch", step)}
    compare(benchmark, step, baseline, baseline=BASELINE, rounds=2, warmup=1, op="attention", shape=SHAPE)
    step_breakdowns(benchmark, step, baseline, params=list(model.parameters()))
    model.zero_grad(set_to_none=True)
    fastar.empty_cpu_cache()
