"""Train a tiny 3-level FractalGen on scikit-learn's digits (1797 8x8 images, 10 classes), on the CPU.

    python -m fastar train fractalgen --steps 800 --out runs/fractalgen-digits
    torchrun --nproc_per_node 2 -m fastar train fractalgen ...      # DDP (gloo on CPU); --fsdp: FSDP

Levels: 16 patches of 2x2, then 4 pixels, then R, G, B (MAR, MAR, PixelLoss by default; --generators ar,ar for
FractalAR), trained as the official main_fractalgen.py does: one loss at the pixel level, R weighted by r_weight.
Reports the held-out NLL in bits/dim (eval mode: unconditional, random-order masks) before and after; writes ckpt.pt
(weights and config, for sampling: no optimizer state, no resuming; `python -m fastar sample fractalgen --ckpt` reads
it) and samples.png (a patch or pixel a step, cfg 3, temperature
2: the per-pixel R distribution of so small and short a run is wide, and at temperature 1 its draws are noise).
The digits stay at their own 8 x 8: resized to 16 x 16 (4x the pixels, each step 4x the work) the same minute of
training gave blobs; at 8 x 8, 800 steps (~70 s in one process on a Zen 4) give digits a person can name. The
learning rate decays on a cosine after a 40-step warmup: against a constant 6e-3, held-out NLL 0.821 -> 0.802 bits/dim
(seed 0) and 0.798 (seed 1), and at seed 0 most of samples.png's 20 digits nameable, where about half were.
"""
import argparse
import dataclasses
import os

import torch

from fastar.models.fractalgen.fractalgen import FractalGen, FractalGenConfig, bits_per_dim
from fastar.models.fractalgen.pixelloss import PIX_MEAN, PIX_STD
from fastar.models.var.sample import save_grid
from fastar.models.cli import (HelpFormatter, check_warmup, finite_float, nonneg_int, positive_float, positive_int,
                               positive_ints, save_checkpoint)
from fastar.models.var.train import add_run_args, digits, fit, end_run, start_run

HELD_OUT = 197  # the last digits: the NLL set
HEADS = (4, 2, 2)  # per level: level 0, level 1, PixelLoss


@torch.no_grad()
def nll_bits_per_dim(model, images, passes, seed):
    """The official NLL estimate: eval-mode loss (random-order masks) averaged over `passes`, in bits/dim."""
    model.eval()
    torch.manual_seed(seed)
    nll = sum(model(images, torch.zeros(len(images), dtype=torch.long)).item() for _ in range(passes)) / passes
    model.train()
    return bits_per_dim(nll)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar train fractalgen", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--generators", default="mar,mar", choices=["mar,mar", "ar,ar"], metavar="{mar,mar | ar,ar}",
                   help="the two transformer levels")
    p.add_argument("--widths", type=positive_ints, default="64,32,32",
                   help=f"level 0, level 1, PixelLoss widths, each a multiple of 4 x its heads {HEADS} (the AR "
                        "levels' 2D RoPE turns a quarter of a head's channels per axis)")
    p.add_argument("--bs", type=positive_int, default=32, help="images per process")
    p.add_argument("--steps", type=positive_int, default=800, help="training steps")
    p.add_argument("--lr", type=positive_float, default=6e-3, help="AdamW peak learning rate")
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"),
                   help="cosine: down to 0 at the last step, after --warmup (the official trainers' schedule)")
    p.add_argument("--warmup", type=nonneg_int, default=40, help="linear warmup steps of the learning rate")
    p.add_argument("--nll-passes", type=positive_int, default=2, help="forward passes averaged for the NLL estimate")
    p.add_argument("--num-iter", type=positive_ints, default="16,4",
                   help="sampling steps of the two transformer levels for samples.png (a token a step)")
    p.add_argument("--temperature", type=positive_float, default=2.0,
                   help="PixelLoss's temperature for samples.png, multiplying the logits as officially (> 1 sharpens)")
    p.add_argument("--cfg", type=finite_float, default=3.0, help="classifier-free guidance scale (linear schedule)")
    p.add_argument("--num-samples", type=positive_int, default=20, help="images in samples.png (classes 0..9 in turn)")
    add_run_args(p, "runs/fractalgen-digits")
    args = p.parse_args(argv)
    if len(args.widths) != 3 or any(w % (4 * h) for w, h in zip(args.widths, HEADS)):
        p.error(f"--widths must be 3 ints, multiples of {tuple(4 * h for h in HEADS)}, got "
                f"{','.join(map(str, args.widths))}")
    if len(args.num_iter) != 2:
        p.error(f"--num-iter must be 2 step counts, one per transformer level, got "
                f"{','.join(map(str, args.num_iter))}")
    check_warmup(p, args.warmup, args.steps)
    args.fractalgen_steps, args.fractalgen_lr = args.steps, args.lr  # the names fit() reads
    args.fractalgen_lr_schedule, args.fractalgen_warmup = args.lr_schedule, args.warmup

    rank, world = start_run(args)
    x, labels = digits(8)
    mean, std = torch.tensor(PIX_MEAN)[:, None, None], torch.tensor(PIX_STD)[:, None, None]
    x = ((x + 1) / 2 - mean) / std  # [-1, 1] -> ImageNet-normalized, as the official data loader
    train_x, train_y, val_x = x[:-HELD_OUT], labels[:-HELD_OUT], x[-HELD_OUT:]
    cfg = FractalGenConfig((8, 2, 1), tuple(args.widths), (2, 2, 1), HEADS, tuple(args.generators.split(",")),
                           class_num=10,
                           num_conds=5 if args.generators == "mar,mar" else 1, r_weight=5.0, proj_dropout=0.0)
    model = FractalGen(cfg).train()

    def save(state):
        save_checkpoint({"fractalgen_cfg": dataclasses.asdict(cfg), "model": model.state_dict(),
                         "sample_flags": {"num_iter": ",".join(map(str, args.num_iter)), "cfg": args.cfg,
                                          "temperature": args.temperature}, **state},
                        os.path.join(args.out, "ckpt.pt"))

    before = nll_bits_per_dim(model, val_x, args.nll_passes, args.seed)
    first, last = fit("fractalgen", model, lambda m, idx: m(train_x[idx], train_y[idx]), len(train_x), args, rank,
                      world, save)
    after = nll_bits_per_dim(model, val_x, args.nll_passes, args.seed)
    if rank == 0:
        print(f"train loss {first:.4f} -> {last:.4f}; held-out NLL {before:.3f} -> {after:.3f} bits/dim")
        model.eval()
        img = model.generate(torch.arange(args.num_samples) % 10, num_iter_list=args.num_iter,
                             cfg=args.cfg, temperature=args.temperature,
                             generator=torch.Generator().manual_seed(args.seed))
        save_grid(img, os.path.join(args.out, "samples.png"), nrow=10)
        print(f"wrote {args.out}/ckpt.pt and {args.out}/samples.png")
    end_run(world)
