"""Sample class-conditional images with FractalGen and write them as a PNG grid.

    python -m fastar sample fractalgen --model fractalmar_in64 --ckpt checkpoint-last.pth --classes 207 360 --out g.png
    python -m fastar sample fractalgen --ckpt runs/fractalgen-digits/ckpt.pt --classes 0 1 2 3   # `fastar train`

Without --ckpt the weights are random (the named model's official shapes), and it says so. Per-model defaults of
--num-iter, --cfg, --temperature are LTH14/fractalgen's README evaluation flags, and for a `fastar train` checkpoint
those its samples.png used; the progress bar counts the top level's steps.
"""
import argparse

import torch
from tqdm import tqdm

from fastar.models.cli import (HelpFormatter, checkpoint_config, finite_float, load_state, name_overflow,
                               positive_float, positive_ints, read_checkpoint, refuse_superseded, unit_float,
                               warn_unfinished, wrong_checkpoint)
from fastar.models.fractalgen.fractalgen import MODELS, PRECISIONS, FractalGen, FractalGenConfig, build
from fastar.models.layers import decode_weights
from fastar.models.var.sample import fill_defaults, parse_grid_args, pick_classes, save_grid, seeded

# README evaluation flags (num_iter_list, cfg, temperature; linear cfg schedule, filter_threshold 1e-4); base: the
# README's best-FID cfg with the 256 px temperature
README_FLAGS = {name: dict(zip(("num_iter", "cfg", "temperature"), flags)) for name, flags in {
    "fractalar_in64": ("64,16", 11.0, 1.03), "fractalmar_in64": ("64,16", 6.5, 1.02),
    "fractalmar_base_in256": ("64,16,16", 29.0, 1.1), "fractalmar_large_in256": ("64,16,16", 21.0, 1.1),
    "fractalmar_huge_in256": ("64,16,16", 19.0, 1.1)}.items()}


def load(name, ckpt):
    """(model, what was loaded, its sampling defaults (fill_defaults)). ckpt: a `fastar train fractalgen` checkpoint
    (what its samples.png used) or an official checkpoint-*.pth ({'model': state_dict, 'args': ...}) of the model
    `name` (the README's flags; default fractalmar_in64; None with a `fastar train` checkpoint, which holds its own)."""
    if ckpt is None:
        name = name or "fractalmar_in64"
        return build(name), f"RANDOM weights (no --ckpt): {name}, untrained", README_FLAGS[name]
    sd = read_checkpoint(ckpt)  # the official checkpoints pickle their args (an argparse.Namespace)
    if "fractalgen_cfg" in sd:
        refuse_superseded("--model", name, None, ckpt)
        if "model" not in sd:
            raise wrong_checkpoint(ckpt, "a whole `fastar train fractalgen` ckpt.pt", sd)
        with checkpoint_config(ckpt):
            model = FractalGen(FractalGenConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in sd["fractalgen_cfg"].items()}))
        load_state(model, sd["model"], ckpt, "its fractalgen_cfg's FractalGen")
        warn_unfinished(sd, ckpt)
        levels = model.num_fractal_levels - 1  # checkpoints from before sample_flags: a short default
        flags = sd.get("sample_flags", {"num_iter": ",".join(["4"] * levels), "cfg": 2.0, "temperature": 1.0})
        return model, f"{ckpt} (fastar train fractalgen checkpoint)", flags
    state = sd.get("model", sd)
    if not isinstance(state, dict) or "class_emb.weight" not in state:
        raise wrong_checkpoint(ckpt, "a `fastar train fractalgen` ckpt.pt nor an official FractalGen checkpoint", sd)
    name = name or "fractalmar_in64"
    model = build(name)
    load_state(model, state, ckpt, f"{name} (--model)")
    return model, f"{ckpt} ({name})", README_FLAGS[name]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar sample fractalgen", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", choices=list(MODELS), help="the official model whose shapes --ckpt holds (random "
                   "weights without it; default fractalmar_in64; a `fastar train fractalgen` ckpt.pt holds its own)")
    p.add_argument("--ckpt", help="an official checkpoint-*.pth of --model, or a `fastar train fractalgen` ckpt.pt")
    p.add_argument("--num-iter", type=positive_ints, help="steps per transformer level, comma-separated (AR levels "
                   "take one per patch; default: the upstream README's for --model, or the checkpoint's)")
    p.add_argument("--cfg", type=finite_float, help="classifier-free guidance at the end of the linear schedule "
                   "(default: the upstream README's for --model, or the checkpoint's)")
    p.add_argument("--cfg-schedule", default="linear", choices=["linear", "constant"],
                   help="guidance ramped linearly over the generated tokens, or constant")
    p.add_argument("--temperature", type=positive_float, help="multiplies the pixel logits (> 1 sharpens), as "
                   "officially (default: the upstream README's for --model, or the checkpoint's)")
    p.add_argument("--filter-threshold", type=unit_float, default=1e-4,
                   help="CFG leaves values below this probability")
    p.add_argument("--bf16-weights", action="store_true", help="decode steps of up to 8 rows (--bs 4 with CFG) read "
                   "bfloat16 copies of the weights (half the bytes; a sampling mode with its own draws)")
    args = parse_grid_args(p, argv, PRECISIONS, "the transformer levels' products on bfloat16 operands (float32 "
                           "accumulation)", "images per batch (2x rows with CFG)")
    with seeded(args.seed):
        model, what, defaults = load(args.model, args.ckpt)
    model.eval()
    fill_defaults(args, defaults)
    num_iter = args.num_iter if isinstance(args.num_iter, list) else positive_ints(args.num_iter)  # a default: str
    levels = model.num_fractal_levels - 1
    if len(num_iter) != levels:
        p.error(f"--num-iter needs one step count for each of the model's {levels} transformer levels, got "
                f"{','.join(map(str, num_iter))}")
    cfg, temperature = args.cfg, args.temperature
    print(f"sampling with {what}: num_iter {num_iter}, cfg {cfg} ({args.cfg_schedule}), temperature {temperature}")
    args.classes = pick_classes(p, args.classes, model.num_classes)
    labels = torch.tensor(args.classes)
    out = []
    for i, label_B in enumerate(labels.split(args.bs)):
        progress = lambda steps: tqdm(steps, desc=f"sample fractalgen batch {i + 1}")  # noqa: E731
        with (decode_weights(model, torch.bfloat16 if args.bf16_weights else torch.float32),
              name_overflow(cfg=cfg, temperature=temperature)):
            out.append(model.generate(label_B, num_iter_list=num_iter, cfg=cfg, cfg_schedule=args.cfg_schedule,
                                      temperature=temperature, filter_threshold=args.filter_threshold,
                                      generator=torch.Generator().manual_seed(args.seed + i), progress=progress,
                                      precision=args.precision))
    save_grid(torch.cat(out), args.out, nrow=args.nrow)
    print(f"wrote {args.out}: {len(labels)} images, classes {args.classes}")
