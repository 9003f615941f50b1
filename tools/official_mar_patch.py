"""fastar.patch.mar() and fastar.models.mar.mar_base() on the official LTH14/mar code, on the CPU (float32).

  python tools/official_mar_patch.py OFFICIAL_REPO check   # the patched rows against the official methods
  python tools/official_mar_patch.py OFFICIAL_REPO time    # head sampling and MAR-B sampling, unpatched vs patched

Runs in an environment with the official code's imports (timm 0.9, hence torchvision) and fastar built into it,
e.g. `pip install torch==2.14.1 torchvision==0.29.1 timm==0.9.12` and `FASTAR_CUDA=off pip install
--no-build-isolation .` in a second venv.

check, on the official classes with random weights (every parameter redrawn: the official init zeroes the head's
adaLN and output layers, which would make the head's output, and the comparison, trivial):
- DiffLoss.forward (MAR-B head d6 w1024, 64 rows, a mask): loss, every weight gradient and z's gradient, and the
  global generator's state after the call, patched against unpatched on the same seed;
- DiffLoss.sample (100 steps, cfg 2.9 and 1.0, temperature 0.95): the tokens on the same seed (under cfg the
  conditional half, the rows sample_tokens keeps);
- mar_base as main_mar.py calls it: fastar.models.mar.mar_base(**the same keywords) has the official state dict's
  keys and shapes and loads it strictly; the official model's sample_tokens (B 1, 2 iterations, cfg 2.9) patched
  against unpatched on the same seeds (numpy's orders included).
Each comparison prints its largest difference relative to the largest official value and fails above RTOL (1e-4).
time: DiffLoss.sample at MAR-B's head shapes (ROWS 512 = 256 tokens with cfg, 100 steps, cfg 2.9), then MAR-B
sample_tokens (B 1, NUM_ITER 4, cfg 2.9 linear), interleaved rounds in one process (tools/official.py).
Knobs (environment): ROWS (512), B (1), NUM_ITER (4), ROUNDS (2), THREADS (torch threads, 1), MODEL (1: also time
MAR-B), LINEAR (1: also the opt-in linear group, fastar.patch.mar's linear=: nn.Linear and timm's Mlp; 0 by
default).
"""
import os
import sys

import numpy as np
import torch

import fastar.patch
from fastar.models.mar import mar_base
from official import LINEAR, load, machine, rounds

RTOL = 1e-4
MAIN_MAR_KWARGS = dict(img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, mask_ratio_min=0.7,
                       label_drop_prob=0.1, class_num=1000, attn_dropout=0.1, proj_dropout=0.1, buffer_size=64,
                       diffloss_d=6, diffloss_w=1024, num_sampling_steps="100", diffusion_batch_mul=4,
                       grad_checkpointing=False)
failures = []


def compare(what, got, want):
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    ok = err <= RTOL
    print(f"  {what}: max |patched - official| / max |official| = {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        failures.append(what)


def redraw(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.1))


def head(diffloss_mod, seed=0):
    dl = diffloss_mod.DiffLoss(16, 768, 6, 1024, "100")
    redraw(dl, seed)
    return dl


def check_head(diffloss_mod):
    print("DiffLoss (MAR-B head: d6 w1024, z 768, 16 channels), random weights")
    dl = head(diffloss_mod)
    g = torch.Generator().manual_seed(1)
    target, z, mask = torch.randn(64, 16, generator=g), torch.randn(64, 768, generator=g), (torch.rand(64, generator=g) > 0.3).float()

    def forward():
        torch.manual_seed(2)
        dl.zero_grad()
        zz = z.clone().requires_grad_()
        loss = dl(target, zz, mask)
        loss.backward()
        return [loss.detach(), zz.grad] + [p.grad.clone() for p in dl.parameters()], torch.get_rng_state()

    (want, want_rng), rows = forward(), fastar.patch.mar(dl, attention=False, head=False)
    try:
        got, got_rng = forward()
    finally:
        fastar.patch.undo()
    print(f"  forward: rows {[r.attr for r in rows]}")
    compare("loss", got[0], want[0])
    compare("d loss / d z", got[1], want[1])
    compare(f"d loss / d weights ({len(got) - 2} tensors, worst)", *max(
        zip(got[2:], want[2:]), key=lambda gw: ((gw[0] - gw[1]).abs().max() / gw[1].abs().max()).item()))
    print(f"  global generator state after forward: {'equal' if torch.equal(got_rng, want_rng) else 'DIFFERENT'}")
    if not torch.equal(got_rng, want_rng):
        failures.append("generator state")

    for cfg in (2.9, 1.0):
        zs = torch.randn(32, 768, generator=g)

        def sample():
            torch.manual_seed(3)
            with torch.no_grad():
                return dl.sample(zs, temperature=0.95, cfg=cfg)

        want = sample()
        fastar.patch.mar(dl, attention=False, loss=False)
        try:
            got = sample()
        finally:
            fastar.patch.undo()
        # Under cfg the official loop carries both halves but the model reads only the conditional one; its caller
        # (MAR.sample_tokens) keeps that half, the other follows its own noise and is discarded.
        keep = len(zs) // 2 if cfg != 1.0 else len(zs)
        compare(f"sample, 100 steps, cfg {cfg}, {keep} rows kept of {len(zs)}: tokens", got[:keep], want[:keep])


def official_mar_base(mar_mod, seed=0):
    torch.manual_seed(seed)
    model = mar_mod.mar_base(**MAIN_MAR_KWARGS).eval()
    redraw(model.diffloss, seed + 1)
    return model


def sample_tokens(model, seed, num_iter, bsz=1):
    torch.manual_seed(seed)
    np.random.seed(seed)  # the official orders
    with torch.no_grad():
        return model.sample_tokens(bsz, num_iter=num_iter, cfg=2.9, cfg_schedule="linear",
                                   labels=torch.arange(bsz) * 97 % 1000, temperature=1.0)


def check_model(mar_mod):
    print("mar_base as main_mar.py builds it (diffloss d6 w1024)")
    official = official_mar_base(mar_mod)
    with torch.device("meta"):
        ours = mar_base(**MAIN_MAR_KWARGS)
    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    same = shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    print(f"  state dict: {len(shapes)} keys, fastar's keys and shapes {'equal' if same else 'DIFFERENT'}")
    if not same:
        failures.append("mar_base keys")
    ours = mar_base(**MAIN_MAR_KWARGS)
    ours.load_state_dict(official.state_dict(), strict=True)
    print("  fastar mar_base loaded the official state dict strictly")
    want = sample_tokens(official, 4, 2)
    fastar.patch.mar(official)
    try:
        got = sample_tokens(official, 4, 2)
    finally:
        fastar.patch.undo()
    compare("official sample_tokens (B 1, 2 iterations, cfg 2.9), patched: latents", got, want)


def timing(diffloss_mod, mar_mod):
    n, rows = int(os.environ.get("ROUNDS", "2")), int(os.environ.get("ROWS", "512"))
    dl, z = head(diffloss_mod), torch.randn(rows, 768, generator=torch.Generator().manual_seed(5))
    print(f"DiffLoss.sample, MAR-B head (d6 w1024), {rows} rows, 100 steps, cfg 2.9, random weights")

    def run(r):
        torch.manual_seed(r)
        with torch.no_grad():
            dl.sample(z, temperature=1.0, cfg=2.9)

    rounds(run, lambda: fastar.patch.mar(dl), n)
    if os.environ.get("MODEL", "1") == "1":
        num_iter, bsz = int(os.environ.get("NUM_ITER", "4")), int(os.environ.get("B", "1"))
        model = official_mar_base(mar_mod)
        print(f"MAR-B sample_tokens (official code, random weights), B {bsz}, num_iter {num_iter}, cfg 2.9 linear, "
              f"patched rows: head, loss, attention{', linear (nn.Linear, timm Mlp)' if LINEAR else ''}")
        rounds(lambda r: sample_tokens(model, r, num_iter, bsz), lambda: fastar.patch.mar(model, linear=LINEAR), n)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("check", "time"):
        sys.exit(__doc__)
    print(machine())
    diffloss_mod, mar_mod = load(sys.argv[1], "models.diffloss"), load(sys.argv[1], "models.mar")
    if sys.argv[2] == "check":
        check_head(diffloss_mod)
        check_model(mar_mod)
        print("check: " + ("FAILED " + ", ".join(failures) if failures else "all equal within RTOL"))
        sys.exit(1 if failures else 0)
    timing(diffloss_mod, mar_mod)
