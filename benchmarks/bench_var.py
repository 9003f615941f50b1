"""VAR end to end on the CPU: the same model on fastar's kernels against the torch backend (use_backend("torch"):
SDPA, VAR's quantizer loop, i.e. what the official code runs), in one run: VAR-d16 sampling (B = 4, 256 px,
CFG, float32) with where its time goes, one training step (B = 8), and the VQVAE's encode (B = 1) and decode
(at the sampling batch, with its time per decoder stage).
Random weights: the work is that of the released models. A d16 sampling run takes about a minute here, so each
contender runs once (no warm-up round; the report says so): ~10 minutes for the file.

Knobs (environment): FASTAR_BENCH_VAR_DEPTH (16), FASTAR_BENCH_VAR_B (4, the sampling and decode batch) and
FASTAR_BENCH_VAR_TRAIN_B (8, the training step's batch; the main command runs 2) size a quick check,
FASTAR_BENCH_VAR_DECODE_ROUNDS (2; the main command runs 1) the VQVAE decode's rounds;
FASTAR_BENCH_VAR_TRAIN_ROUNDS (1) the training step's interleaved rounds (more than 1: after a warm-up round of each,
so that fastar's step, in fastar.cpu_cache_step, writes the blocks the one before freed: what a training loop sees.
Its cache then holds the step's peak of tensors of 32 MB and more between its rounds while the torch backend's
rounds run: on a 24 GB machine, with every tensor of 4 MB and more cached (~9 GB at B 8), theirs grew from 51 to 66 s);
FASTAR_BENCH_VAR_CACHE_COLUMN (1; the main command runs 0: at its B 2 the column read 0.96-1.01x, a round of ~12 s
and its warm-up) the training step's column of fastar without fastar.cpu_cache_step;
FASTAR_BENCH_VAR_ORACLE=1 adds the float64-capable reference ops as an extra column (slow)."""
import os
import time
from collections import defaultdict
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import fastar
from benchmarks.harness import compare, on, recorded, save_samples, step_breakdowns
from fastar.models.layers import Linear
from fastar.models.var import build_vae_var
from fastar.models.var import basic_var
from fastar.models.var import var as var_module

DEPTH = int(os.environ.get("FASTAR_BENCH_VAR_DEPTH", "16"))
B_SAMPLE, ROUNDS = int(os.environ.get("FASTAR_BENCH_VAR_B", "4")), 1
B_TRAIN = int(os.environ.get("FASTAR_BENCH_VAR_TRAIN_B", "8"))
TRAIN_ROUNDS = int(os.environ.get("FASTAR_BENCH_VAR_TRAIN_ROUNDS", "1"))
B_VQVAE = {"encode": 1, "decode": B_SAMPLE}  # decode: the sampling row's batch, which warms it; 4: issue 17's
DECODE_ROUNDS = int(os.environ.get("FASTAR_BENCH_VAR_DECODE_ROUNDS", "2"))
ORACLE = os.environ.get("FASTAR_BENCH_VAR_ORACLE") == "1"
CACHE_COLUMN = os.environ.get("FASTAR_BENCH_VAR_CACHE_COLUMN", "1") == "1"
CLASSES = torch.tensor([207, 360, 387, 974]).repeat(B_SAMPLE)[:B_SAMPLE]
BASELINE = "torch backend"
FP32_SAMPLES = {}  # fastar's float32 sampling run (images, maps), which the bf16 row compares with
NO_STEP_CACHE = "fastar, torch's allocator (no cpu_cache_step)"  # the training step's cache share


@pytest.fixture(scope="module")
def d16():
    torch.manual_seed(0)
    vae, var = build_vae_var(depth=DEPTH, init_adaln_gamma=1e-3)
    with torch.no_grad():  # oneDNN builds its convolution primitives on first use: not a cost of either contender
        for backend in ("cpu", "torch"):  # fastar's decoder (channels_last, phase convs) and the torch backend's
            with fastar.use_backend(backend):
                vae.fhat_to_img(torch.zeros(B_SAMPLE, vae.Cvae, 16, 16))
    return vae, var


def contenders(make):
    """{label: run}: make(label) under the torch backend (the baseline) and, with ORACLE, the reference ops."""
    backends = {BASELINE: "torch", **({"reference ops": "reference"} if ORACLE else {})}
    return {label: on(backend, make(label)) for label, backend in backends.items()}


def test_var_d16_sample(benchmark, d16, monkeypatch):
    vae, var = d16
    var.eval()
    benchmark.group = f"VAR-d{DEPTH} sampling B={B_SAMPLE} 256px cfg=4 top-k 900 top-p 0.95 float32"
    maps, last, images = [], {}, {}  # the token maps of a run, read off the codebook lookups (the sampler's only ones)
    hook = vae.quantize.embedding.register_forward_hook(lambda m, args, out: maps.append(args[0].clone()))
    parts = Breakdown(monkeypatch, [*LINEAR_PARTS, ("attention", fastar.ops, "attention_decode"),
                                    ("quantizer ops", fastar.ops, "get_next_autoregressive_input"),
                                    ("VQVAE decoder", vae, "fhat_to_img"),
                                    ("top-k/top-p sampling", var_module, "sample_with_top_k_top_p_")])

    def sample(name):
        def run():
            maps.clear()
            with parts.recording(name):
                images[name] = var.autoregressive_infer_cfg(B_SAMPLE, CLASSES, g_seed=0, cfg=4.0, top_k=900,
                                                            top_p=0.95)
            last[name] = list(maps)
        return run

    compare(benchmark, sample("fastar"), contenders(sample), baseline=BASELINE, rounds=ROUNDS, warmup=0,
            op="attention_decode", record="var sampling")
    FP32_SAMPLES.update(images=images["fastar"], maps=last["fastar"])  # the bf16 row's float32 reference
    # the fraction of tokens equal to fastar's (1.0: identical at every scale), and the first scale that differs:
    # random weights give near-uniform distributions, where a last-bit difference in a logit can move one draw
    agree, notes = {}, []
    for name, maps in last.items():
        if name != "fastar":
            same = [(a == b).sum().item() for a, b in zip(last["fastar"], maps)]
            agree[name] = sum(same) / sum(a.numel() for a in maps)
            first = next((si for si, (n, a) in enumerate(zip(same, maps)) if n != a.numel()), None)
            notes.append(f"{name}: " + ("identical tokens at every scale" if first is None else
                                        f"tokens identical up to scale {first}, which differs in "
                                        f"{maps[first].numel() - same[first]} of {maps[first].numel()}"))
    benchmark.extra_info["agreement"] = agree
    benchmark.extra_info["note"] = "; ".join(notes)
    benchmark.extra_info["breakdown"] = parts.ms
    hook.remove()
    save_samples(images["fastar"], f"var_d{DEPTH}_random_weights")


# The linear layers: F.linear (the torch backend), the models' Linear, VAR's q/k/v projection and its FFN's fc1 + GELU
# (fastar.models.layers.linear and linear_gelu, which bypass F.linear on their oneDNN path)
LINEAR_PARTS = [("linear layers", F, "linear"), ("linear layers", Linear, "forward"),
                ("linear layers", basic_var, "linear"), ("linear layers", basic_var, "linear_gelu")]


class Breakdown:
    """ms per part of the timed runs, per contender: each target (part, object, attribute) is timed where it is
    called (VAR: the linear layers, attention, the quantizer ops, top-k/top-p sampling, the VQVAE decoder), the rest
    is "other" (LayerNorm, AdaLN arithmetic, embeddings). Only the outermost timed call counts (the decoder's
    attention is the decoder's), so the parts add up to the total."""

    def __init__(self, monkeypatch, targets):
        self.ms, self._spent, self._depth = {}, None, 0
        for part, owner, attr in targets:
            monkeypatch.setattr(owner, attr, self._timed(part, getattr(owner, attr)))

    def _timed(self, part, fn):
        def wrapped(*args, **kwargs):
            if self._spent is None or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._spent[part] += time.perf_counter() - t0
                self._depth -= 1
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
            self.ms[contender] = {part: s * 1e3 for part, s in sorted(self._spent.items(), key=lambda kv: -kv[1])}
            self.ms[contender]["total"] = total * 1e3
            self._spent = None


# decode first: right after the sampling row, whose runs decoded at its batch on both backends (fastar's blocks
# in its CPU cache, the torch backend's pages), as a decoder in use is; the training step's end empties that cache
@pytest.mark.parametrize("direction", ["decode", "encode"])
def test_vqvae(benchmark, d16, direction):
    """Encode: image -> tokens of every scale; decode: the last scale's tokens -> image (the decoder's fast path:
    the upsamples as phase convs, in place elementwise; basic_vae.py). Decode records its time per decoder stage."""
    vae, _ = d16
    B = B_VQVAE[direction]
    benchmark.group = f"VQVAE {direction} B={B} 256px float32"
    img = torch.rand(B, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ms_idx_Bl = vae.img_to_idxBl(img)
    fn = {"encode": lambda: vae.img_to_idxBl(img), "decode": lambda: vae.idxBl_to_img(ms_idx_Bl, last_one=True)}
    outs = {}  # each contender's last result, compared after the rounds

    def kept(label):
        return lambda: outs.__setitem__(label, fn[direction]())
    stages = DecoderStages(vae.decoder) if direction == "decode" else None
    timed = (lambda label: stages.timed(label, kept(label))) if stages else kept
    load = os.getloadavg()
    with torch.no_grad():  # decode: no warm-up round (the fixture and the sampling row warmed the decoder)
        compare(benchmark, timed("fastar"), contenders(timed), baseline=BASELINE,
                rounds=3 if direction == "encode" else DECODE_ROUNDS, warmup=1 if direction == "encode" else 0,
                op="f_to_idxBl_or_fhat" if direction == "encode" else "idxBl_to_fhat")
    benchmark.extra_info["load_average"] = {"before": load, "after": os.getloadavg()}
    if direction == "encode":  # the share of tokens equal to fastar's, every scale
        benchmark.extra_info["agreement"] = {name: torch.cat([(a == b).flatten() for a, b in zip(
            outs["fastar"], outs[name])]).float().mean().item() for name in outs if name != "fastar"}
    else:
        benchmark.extra_info["max_abs_diff"] = {name: (outs["fastar"] - outs[name]).abs().max().item()
                                                for name in outs if name != "fastar"}
    if stages:
        benchmark.extra_info["breakdown"] = stages.ms
        stages.remove()


def test_var_d16_sample_bf16(benchmark, request, bf16_row):
    """precision="bf16" sampling on fastar's kernels against the float32 official formulation (the torch backend),
    with fastar's float32 sampling as a second contender and as the reference of the agreement (the torch backend
    draws its own way): tokens per scale and image PSNR. Declined, not timed, on a CPU without bf16 GEMM
    instructions (the emulated path would be slower than float32: not the mode); FASTAR_EMULATED_BF16=1 times it
    anyway, and the group says so."""
    benchmark.group = bf16_row(f"VAR-d{DEPTH} sampling B={B_SAMPLE} 256px cfg=4 top-k 900 top-p 0.95 bf16",
                               f"VAR-d{DEPTH} sampling")
    vae, var = request.getfixturevalue("d16")  # built only when the row runs
    var.eval()
    maps, images, current = {}, {}, []
    hook = vae.quantize.embedding.register_forward_hook(lambda m, args, out: current.append(args[0].clone()))

    def sample(name, precision):
        def run():
            current.clear()
            images[name] = var.autoregressive_infer_cfg(B_SAMPLE, CLASSES, g_seed=0, cfg=4.0, top_k=900, top_p=0.95,
                                                        precision=precision)
            maps[name] = list(current)
        return run

    base = f"{BASELINE}, float32"
    # the float32 runs: the float32 row's, where it ran in this process (the same inputs), else timed here
    measured = recorded("var sampling", **{base: BASELINE, "fastar fp32": "fastar"})
    if measured:
        images["fastar fp32"], maps["fastar fp32"] = FP32_SAMPLES["images"], FP32_SAMPLES["maps"]
    contenders = {} if measured else {base: on("torch", sample(base, "fp32")),
                                      "fastar fp32": sample("fastar fp32", "fp32")}
    compare(benchmark, sample("fastar", "bf16"), contenders, baseline=base, rounds=ROUNDS, warmup=0,
            op="attention_decode", measured=measured)
    hook.remove()
    per_scale = [(a == b).float().mean().item() for a, b in zip(maps["fastar"], maps["fastar fp32"])]
    sizes = [pn * pn for pn in var.patch_nums]
    mse = (images["fastar"] - images["fastar fp32"]).pow(2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse)).mean().item()  # inf where an image's tokens all agree
    benchmark.extra_info["agreement"] = {"fastar fp32": sum(a * n for a, n in zip(per_scale, sizes)) / sum(sizes)}
    benchmark.extra_info["note"] = (f"bf16 vs fastar fp32, same seed: tokens agree per scale "
                                    f"{' '.join(f'{a:.3f}' for a in per_scale)}; image PSNR {psnr:.1f} dB")


@pytest.mark.train_step("VAR-d16")
def test_var_d16_train_step(benchmark, d16):
    vae, var = d16
    var.train()
    benchmark.group = f"VAR-d{DEPTH} training step (forward + backward) B={B_TRAIN} 256px float32"
    g = torch.Generator().manual_seed(0)
    ms_idx_Bl = [torch.randint(4096, (B_TRAIN, pn * pn), generator=g) for pn in var.patch_nums]
    label_B = torch.randint(1000, (B_TRAIN,), generator=g)
    gt_BL = torch.cat(ms_idx_Bl, 1)

    def plain_step():
        var.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # every contender draws the same label drops and drop-path masks (torch RNG on both)
        x_BLCv = vae.quantize.idxBl_to_var_input(ms_idx_Bl)
        logits_BLV = var(label_B, x_BLCv)
        loss = F.cross_entropy(logits_BLV.flatten(0, 1), gt_BL.flatten())
        loss.backward()
        return loss.detach()

    def step():
        with fastar.cpu_cache_step(torch.device("cpu")):  # fastar's training step; the torch backend's: a no-op
            return plain_step()

    baselines = contenders(lambda _: step)
    columns = {**baselines, **({NO_STEP_CACHE: plain_step} if CACHE_COLUMN else {})}
    compare(benchmark, step, columns, baseline=BASELINE, rounds=TRAIN_ROUNDS, warmup=1,
            op="attention")  # a warm step: fastar's first fills its CPU cache
    step_breakdowns(benchmark, step, {BASELINE: baselines[BASELINE]}, params=list(var.parameters()))
    var.zero_grad(set_to_none=True)
    fastar.empty_cpu_cache()  # the step's blocks of 32 MB and more (none at B 2, ~1.5 GB at B 4)


class DecoderStages:
    """ms per stage of the VQVAE decoder in the fastest timed run of each contender: conv_in + the mid block, each
    level (its res blocks, attention and upsample; named by its side), norm_out + conv_out, and the rest (the
    post-quant conv, the quantizer's lookup, the clamp)."""

    def __init__(self, decoder):
        self.ms, self._spent, self._handles = {}, None, []
        stages = [("conv_in + mid", [decoder.conv_in, decoder.mid.block_1, decoder.mid.attn_1, decoder.mid.block_2])]
        for i in reversed(range(len(decoder.up))):
            level = decoder.up[i]
            mods = [*level.block, *level.attn, *([level.upsample] if hasattr(level, "upsample") else [])]
            stages.append((f"up[{i}] (side/{2 ** i}, {level.block[-1].conv2.out_channels} ch)", mods))
        stages.append(("norm_out + conv_out", [decoder.norm_out, decoder.conv_out]))
        for name, mods in stages:
            for m in mods:
                self._hook(name, m)

    def _hook(self, name, module):
        start = {}

        def pre(*_):
            start["t"] = time.perf_counter()

        def post(*_):
            if self._spent is not None:
                self._spent[name] += time.perf_counter() - start["t"]
        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def timed(self, contender, fn):
        def run():
            self._spent = defaultdict(float)
            t0 = time.perf_counter()
            try:
                fn()
            finally:
                total, spent, self._spent = time.perf_counter() - t0, self._spent, None
            if contender not in self.ms or total * 1e3 < self.ms[contender]["total"]:
                self.ms[contender] = {**{k: v * 1e3 for k, v in spent.items()},
                                      "other": (total - sum(spent.values())) * 1e3, "total": total * 1e3}
        return run

    def remove(self):
        for h in self._handles:
            h.remove()
