"""fastar.patch.fractalgen() on the official LTH14/fractalgen code, on the CPU (random weights, float32).

  python tools/official_fractalgen_patch.py OFFICIAL_REPO check   # images identical on the same draws
  python tools/official_fractalgen_patch.py OFFICIAL_REPO time    # sampling time, unpatched vs patched

check: FractalMAR and FractalAR at small depths (2, 2, 3 blocks, official widths), B 2, cfg 6.5 linear; the official
sampler (torch.multinomial) against the patched one (fastar.ops.sample_categorical races the exponentials
torch.multinomial draws from the global generator): every pixel must be equal.
time: fractalmar_in64 built by the official builder with main_fractalgen.py's call (num_conds 5), official
multinomial; interleaved rounds (official, patched, ...) in one process, wall and CPU time with the load average.
Knobs (environment): B (1), NUM_ITER ("64,16", the upstream README's), ROUNDS (2), THREADS (torch threads, 1),
LINEAR (1: also the opt-in linear group, fastar.patch.fractalgen's linear=: nn.Linear and timm's Mlp; needs the
model; 0 by default).
The official code calls .cuda(): here it is the identity (tools/official.py). The official code is read from
OFFICIAL_REPO, never copied into fastar."""
import os
import sys
import time

import torch

import fastar
import fastar.patch
from official import LINEAR, load, machine, rounds


def sample(model, labels, num_conds, num_iter, seed):
    torch.manual_seed(seed)
    with torch.no_grad():  # as engine_fractalgen.evaluate: [class embeddings; fake latents], num_conds copies
        emb = torch.cat([model.class_emb(labels), model.fake_latent.repeat(len(labels), 1)])
        return model.sample(cond_list=[emb] * num_conds, num_iter_list=num_iter, cfg=6.5, cfg_schedule="linear",
                            temperature=1.02, filter_threshold=1e-4, fractal_level=0)


def statuses(model):
    return sorted({(f"{row.module}.{row.cls}.{row.attr}", st) for _, row, st in fastar.patch.report(model)})


def statuses_patched(model):
    patch(model)
    try:
        return statuses(model)
    finally:
        fastar.patch.undo()


def patch(model):
    """The classes' rows, and with LINEAR the model's linear group (nn.Linear, timm's Mlp)."""
    fastar.patch.fractalgen()
    if LINEAR:
        fastar.patch.fractalgen(model, attention=False, sampling=False, linear=True)


def check(fractalgen):
    labels = torch.tensor([207, 360])
    for kind, num_conds, num_iter in (("mar", 5, [4, 2]), ("ar", 1, [16, 16])):
        torch.manual_seed(0)
        model = fractalgen.FractalGen(img_size_list=(64, 4, 1), embed_dim_list=(1024, 512, 128),
                                      num_blocks_list=(2, 2, 3), num_heads_list=(16, 8, 4),
                                      generator_type_list=(kind, kind, "ar"), num_conds=num_conds, r_weight=5.0).eval()
        t0 = time.perf_counter()
        want = sample(model, labels, num_conds, num_iter, 1)
        t_official = time.perf_counter() - t0
        fastar.patch.fractalgen()
        t0 = time.perf_counter()
        got = sample(model, labels, num_conds, num_iter, 1)
        t_patched = time.perf_counter() - t0
        rows = statuses(model)
        fastar.patch.undo()
        print(f"{kind}: identical pixel values {(got == want).double().mean().item():.4%}, max |diff| "
              f"{(got - want).abs().max().item():.3g}; official {t_official:.1f} s, patched {t_patched:.1f} s "
              f"(one run each, load {os.getloadavg()}); rows {rows}", flush=True)


def timing(fractalgen):
    B, n_rounds = int(os.environ.get("B", "1")), int(os.environ.get("ROUNDS", "2"))
    num_iter = [int(n) for n in os.environ.get("NUM_ITER", "64,16").split(",")]
    torch.manual_seed(0)
    model = fractalgen.fractalmar_in64(label_drop_prob=0.1, class_num=1000, attn_dropout=0.1, proj_dropout=0.1,
                                       guiding_pixel=False, num_conds=5, r_weight=5.0, grad_checkpointing=False).eval()
    labels = torch.tensor([207, 360, 387, 974]).repeat(B)[:B]
    print(f"fractalmar_in64 (official code, random weights), B {B}, num_iter {num_iter}, cfg 6.5 linear, "
          f"temperature 1.02, float32{', linear group on' if LINEAR else ''}")
    rounds(lambda r: sample(model, labels, 5, num_iter, r + 1), lambda: patch(model), n_rounds)
    print(f"rows (patched): {statuses_patched(model)}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("check", "time"):
        sys.exit(__doc__)
    print(machine())
    (check if sys.argv[2] == "check" else timing)(load(sys.argv[1], "models.fractalgen"))
