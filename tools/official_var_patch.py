"""fastar.patch.var() on the official FoundationVision/VAR code, on the CPU (random weights, float32).

  python tools/official_var_patch.py OFFICIAL_REPO check     # the same tokens at every scale and the images within
                                                             # the tolerance rule, unpatched vs patched
  python tools/official_var_patch.py OFFICIAL_REPO time      # d16 sampling time, unpatched vs patched
  python tools/official_var_patch.py OFFICIAL_REPO profile   # where a patched d16 sampling run spends its time

OFFICIAL_REPO is a work tree of the official repository (e.g. `git --git-dir=.../FoundationVision+VAR/repo archive
HEAD | tar -x -C /tmp/var`). The models come from the official build_vae_var (d16, the demo's call) with random
weights: VAR by its own init_weights, the VQVAE's layers by torch's default init (the builder turns it off, expecting
a checkpoint). Tokens are read off the codebook lookup autoregressive_infer_cfg makes after each draw.
check: B 2, seeds 0 and 1, cfg 1.5 / top-k 900 / top-p 0.96 (the paper's evaluation) and the demo's cfg 4 / top-p
0.95: every token equal at every scale, and the patched images within the tolerance rule ("vqvae_decode") of the
official decoder run in float64 on the official run's f_hat (the unpatched images: the float32 reference).
time: B 4, cfg 1.5, top-k 900, top-p 0.96, g_seed = the round; interleaved rounds (official, patched, ...) in one
process, wall and CPU time with the load average, best and median (tools/official.py); tokens compared each round.
profile: one patched run under torch.profiler: milliseconds in the linear layers, attention, the quantizer,
the VQVAE decoder, sampling and the rest.
Knobs (environment): DECODER (0: without the decoder rows, on by default), LINEAR (1: the
opt-in nn.Linear row too), B (check 2, time and profile 4), ROUNDS (3), THREADS (torch threads, 1), DEPTH (16; a
smaller one for a quick try of the tool).
The official code calls .cuda(): here it is the identity (tools/official.py). The official code is read from
OFFICIAL_REPO, never copied into fastar."""
import copy
import os
import sys
from collections import defaultdict

import torch
import torch.nn as nn

import fastar
import fastar.patch
from fastar.tolerance import error_and_bound
from official import LINEAR, load, machine, rounds

DECODER = os.environ.get("DECODER", "1") == "1"  # the decoder rows (fastar.patch.var's decoder=)
LABELS = torch.tensor([207, 360, 387, 974, 88, 979, 417, 279])
EVAL = dict(cfg=1.5, top_k=900, top_p=0.96)  # the paper's FID evaluation
DEMO = dict(cfg=4.0, top_k=900, top_p=0.95)  # demo_sample.ipynb


def build(models):
    """The official d16 pair (DEPTH) with random weights (see the module docstring), in eval mode."""
    layers = (nn.Linear, nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d,
              nn.ConvTranspose2d)  # the classes whose reset_parameters build_vae_var replaces by a no-op
    inits = {cls: cls.reset_parameters for cls in layers}
    torch.manual_seed(0)
    vae, var = models.build_vae_var(V=4096, Cvae=32, ch=160, share_quant_resi=4, device="cpu",
                                    patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_classes=1000,
                                    depth=int(os.environ.get("DEPTH", "16")), shared_aln=False)
    for cls, init in inits.items():
        cls.reset_parameters = init
    for m in vae.modules():
        if isinstance(m, layers):
            m.reset_parameters()
    with torch.no_grad():  # oneDNN builds its convolution primitives on first use: not a cost of either contender
        vae.fhat_to_img(torch.zeros(1, vae.Cvae, 16, 16))
    return vae.eval(), var.eval()


class Tokens:
    """The token maps of the last sampling run, read off the codebook lookup that follows each draw; its images and
    the f_hat it decoded them from (read off post_quant_conv's input)."""

    def __init__(self, vae):
        self.maps, self.img, self.f_hat = [], None, None
        vae.quantize.embedding.register_forward_hook(lambda m, args, out: self.maps.append(args[0].clone()))
        vae.post_quant_conv.register_forward_pre_hook(lambda m, args: setattr(self, "f_hat", args[0].clone()))

    def sample(self, var, B, seed, setting):
        self.maps = []
        self.img = var.autoregressive_infer_cfg(B, LABELS[:B], g_seed=seed, more_smooth=False, **setting)
        return self.maps


def same(got, want):
    """'identical at every scale', or the first scale that differs and by how many tokens."""
    for si, (a, b) in enumerate(zip(got, want)):
        if not torch.equal(a, b):
            return f"scale {si} differs in {(a != b).sum().item()} of {a.numel()} tokens"
    return "identical at every scale" if len(got) == len(want) == 10 else f"{len(got)} vs {len(want)} scales"


def statuses(var):
    return sorted({(f"{row.module}.{row.cls}.{row.attr}", st) for _, row, st in fastar.patch.report(var)})


def check(models):
    B, failures = int(os.environ.get("B", "2")), []
    vae, var = build(models)
    tokens = Tokens(vae)
    for seed, (name, setting) in enumerate((("evaluation", EVAL), ("demo", DEMO))):
        want = tokens.sample(var, B, seed, setting)
        want_img, f_hat = tokens.img, tokens.f_hat
        fastar.patch.var(var, linear=LINEAR), fastar.patch.var(vae, decoder=DECODER, linear=LINEAR)
        try:
            got = tokens.sample(var, B, seed, setting)
            rows = statuses(var) + statuses(vae)
        finally:
            fastar.patch.undo()
        verdict = same(got, want)
        with torch.no_grad():  # the official decoder in float64 (unpatched), de-normalized as autoregressive_infer_cfg
            img64 = copy.deepcopy(vae).double().fhat_to_img(f_hat.double()).add_(1).mul_(0.5)
        err, bound, ref_err = error_and_bound("vqvae_decode", tokens.img, img64, want_img)
        failures += [] if verdict.startswith("identical") else [name]
        failures += [] if err <= bound else [f"{name} images"]
        print(f"{name} {setting}, B {B}, g_seed {seed}: tokens {verdict}; distinct tokens in the last scale "
              f"{want[-1].unique().numel()} of {want[-1].numel()}; images: patched max error {err:.3g} against "
              f"the float64 official decoder, unpatched {ref_err:.3g}, bound {bound:.3g}", flush=True)
    print(f"rows (patched): {rows}")
    sys.exit(f"FAILED: {failures}" if failures else 0)


def timing(models):
    B, n_rounds = int(os.environ.get("B", "4")), int(os.environ.get("ROUNDS", "3"))
    vae, var = build(models)
    tokens, runs, rows = Tokens(vae), defaultdict(list), []

    def run(r):
        patched = hasattr(sys.modules["models.var"].sample_with_top_k_top_p_, "__fastar_row__")
        runs["patched" if patched else "official"].append(tokens.sample(var, B, r, EVAL))
        rows[:] = statuses(var) + statuses(vae) if patched else rows

    def patch():
        fastar.patch.var(var, linear=LINEAR), fastar.patch.var(vae, decoder=DECODER, linear=LINEAR)

    print(f"VAR-d{var.depth} (official code, random weights) B {B}, 256 px, {EVAL}, float32")
    rounds(run, patch, n_rounds)
    for r, (got, want) in enumerate(zip(runs["patched"], runs["official"])):
        print(f"round {r}: tokens {same(got, want)}")
    print(f"rows (patched, last round): {rows}")


def profile(models):
    """ms per part of one patched run, from torch.profiler's totals of the labelled calls and of the ops only one
    part runs (aten::linear: the transformer's layers; fastar's ops; aten::exponential_: the race's draws). The
    sampler is not wrapped: called through a wrapper it would decline (its caller must be autoregressive_infer_cfg)."""
    B = int(os.environ.get("B", "4"))
    vae, var = build(models)
    fastar.patch.var(var, linear=LINEAR), fastar.patch.var(vae, decoder=DECODER, linear=LINEAR)
    parts = {"VQVAE decoder": (vae, "fhat_to_img"), "quantizer": (vae.quantize, "get_next_autoregressive_input")}
    for label, (owner, attr) in parts.items():
        setattr(owner, attr, labelled(label, getattr(owner, attr)))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function("total"):
            Tokens(vae).sample(var, B, 0, EVAL)
    rows = statuses(var) + statuses(vae)
    fastar.patch.undo()
    ms = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages()}
    out = {label: ms.get(label, 0.0) for label in parts}
    out["linear layers (aten::linear)"] = ms.get("aten::linear", 0.0)
    out["attention (fastar::attention_decode)"] = ms.get("fastar::attention_decode", 0.0)
    out["sampling (fastar::sample_categorical, aten::exponential_)"] = sum(
        ms.get(k, 0.0) for k in ("fastar::sample_categorical", "aten::exponential_"))
    out["rest (LayerNorm, AdaLN, embeddings, glue)"] = ms["total"] - sum(out.values())
    print(f"patched VAR-d{var.depth} B {B}, {EVAL}, one run under torch.profiler: {ms['total']:.0f} ms")
    for label, t in sorted(out.items(), key=lambda kv: -kv[1]):
        print(f"  {label}: {t:.0f} ms ({t / ms['total']:.1%})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print(f"rows: {rows}")


def labelled(label, fn):
    def call(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    call.__fastar_row__ = getattr(fn, "__fastar_row__", None)  # report() still sees the row under the label
    return call


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("check", "time", "profile"):
        sys.exit(__doc__)
    print(machine())
    {"check": check, "time": timing, "profile": profile}[sys.argv[2]](load(sys.argv[1], "models"))
