"""Sample class-conditional images with VAR and write them as a PNG grid.

    python -m fastar sample var --depth 16 --ckpt var_d16.pth --vae-ckpt vae_ch160v4096z32.pth \\
        --classes 207 360 387 974 --cfg 4 --top-k 900 --top-p 0.95 --out grid.png
    python -m fastar sample var --precision bf16 ...   # bf16 transformer (fast with AMX-BF16 / AVX512-BF16)
    python -m fastar sample var --ckpt runs/var-digits/ckpt.pt --classes 0 1 2 3   # from `fastar train var`

Without --ckpt the weights are random (the released VQVAE config and VAR-d{depth}), and it says so.
"""
import argparse
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import fastar
from fastar.models.cli import (HelpFormatter, check_out_file, checkpoint_config, finite_float, load_state,
                               name_overflow, nonneg_int, positive_int, read_checkpoint, refuse_superseded,
                               refuse_vae_ckpt, seed, unit_float, warn_unfinished, wrong_checkpoint)
from fastar.models.var.build import PATCH_NUMS, build_vae_var
from fastar.models.var.var import PRECISIONS, VAR, VARConfig
from fastar.models.var.vqvae import VQVAE, VQVAEConfig


@contextmanager
def seeded(seed):
    """Random weights made inside are `seed`'s (torch's global generator forked, seeded, then restored), so two
    runs of a sample CLI without --ckpt draw the same untrained model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def parse_grid_args(p, argv, precisions, precision_help, bs_help):
    """Adds the options every class-conditional sample CLI takes (the classes, the seed, the precision, whose bf16
    mode does `precision_help`, images per batch, the grid's columns and its file), parses argv, and warns up front
    (before any loading) that a bf16 mode is slower than fp32 on a CPU without bf16 GEMM instructions."""
    p.add_argument("--classes", type=int, nargs="+",
                   help="one image per class (default: ImageNet's 207 360 387 974, or 0-9 of a smaller model)")
    p.add_argument("--seed", type=seed, default=0,
                   help="the random weights without --ckpt, and the draws (batch i: seed + i)")
    p.add_argument("--precision", choices=precisions, default="fp32",
                   help=f"bf16: {precision_help}; fast with AMX-BF16 or AVX512-BF16 on a CPU, slower than fp32 "
                        "without them (emulated bf16 GEMMs; it warns)")
    p.add_argument("--bs", type=positive_int, default=4, help=bs_help)
    p.add_argument("--nrow", type=positive_int, default=8, help="images per row of the grid")
    p.add_argument("--out", default="grid.png", help="the grid's image file (its folder must exist)")
    args = p.parse_args(argv)
    check_out_file(p, args.out)
    if args.precision == "bf16":
        fastar.check_bf16_gemm(p.prog, torch.device("cpu"))
    return args


IMAGENET_CLASSES = [207, 360, 387, 974]


def pick_classes(p, classes, num_classes):
    """--classes checked against the model's num_classes (p.error), or by default ImageNet's 207 360 387 974 for a
    1000-class model and 0 .. 9 (at most) for a smaller one (a digits checkpoint)."""
    if classes is None:
        return IMAGENET_CLASSES if num_classes >= 1000 else list(range(min(num_classes, 10)))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        p.error(f"--classes must be in [0, {num_classes}) for this model, got {bad}")
    return classes


def fill_defaults(args, defaults):
    """The sampling options left unset on the command line (None) take `defaults` ({option: value}): the official
    evaluation's for released weights, and for a `fastar train` checkpoint those its samples.png used (saved in it
    as sample_flags). Returns args."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def save_grid(img_B3HW, path, nrow=8, pad=2, min_cell=64):
    """Images in [0, 1] tiled row-major, nrow per row, with `pad` white pixels between them, saved as a PNG. Images
    smaller than `min_cell` pixels are enlarged by a whole factor (nearest neighbour: each pixel a square, nothing
    smoothed) so that an 8 x 8 digit is judged at 64 x 64, not at the size of a letter. Images with NaN or inf are
    refused, nothing written."""
    if img_B3HW.dim() != 4 or img_B3HW.shape[1] != 3 or img_B3HW.shape[0] == 0:
        raise ValueError(f"save_grid: img_B3HW must be (B >= 1, 3, H, W), got {tuple(img_B3HW.shape)}")
    if nrow < 1 or pad < 0 or min_cell < 1:
        raise ValueError(f"save_grid: nrow >= 1, pad >= 0 and min_cell >= 1 expected, got {nrow}, {pad}, {min_cell}")
    img_B3HW = img_B3HW.float().cpu()
    bad = (~img_B3HW.isfinite()).flatten(1).any(1).nonzero().flatten().tolist()
    if bad:  # clamp keeps NaN and the uint8 cast made it black: a grid that looks drawn
        raise ValueError(f"save_grid: images {bad[:8]}{' ...' if len(bad) > 8 else ''} of {len(img_B3HW)} hold NaN "
                         f"or inf (the sampling overflowed: a huge guidance or temperature?); {path} not written")
    scale = -(-min_cell // max(img_B3HW.shape[-2:]))
    if scale > 1:
        img_B3HW = img_B3HW.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    B, _, H, W = img_B3HW.shape
    ncol = min(nrow, B)
    nrows = -(-B // ncol)
    grid = torch.ones(3, nrows * (H + pad) + pad, ncol * (W + pad) + pad)
    for i, img in enumerate(img_B3HW):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = img
    Image.fromarray((grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


OFFICIAL_FLAGS = {"cfg": 4.0, "top_k": 900, "top_p": 0.95}  # VAR's demo sampling of the released models


def load(ckpt, vae_ckpt, depth=None):
    """(vae, var, what was loaded, its sampling defaults (fill_defaults)). ckpt: a `fastar train var` checkpoint or
    an official var_d*.pth state dict (depth, shared AdaLN and resolution are read off its keys; the official VAE
    then comes from vae_ckpt). depth: random weights' (default 16); with a ckpt it must be the ckpt's, or None."""
    if ckpt is None:
        refuse_vae_ckpt(vae_ckpt, ckpt, "var", "var_d*.pth")
        depth = 16 if depth is None else depth
        vae, var = build_vae_var(depth=depth)
        return (vae, var, f"RANDOM weights (no --ckpt): VAR-d{depth} and the released VQVAE config, untrained",
                OFFICIAL_FLAGS)
    sd = read_checkpoint(ckpt)
    if "var_cfg" in sd:
        refuse_vae_ckpt(vae_ckpt, ckpt, "var", "var_d*.pth")
        if not {"vae_cfg", "vae", "var"} <= set(sd):
            raise wrong_checkpoint(ckpt, "a whole `fastar train var` ckpt.pt", sd)
        with checkpoint_config(ckpt):
            vae = VQVAE(VQVAEConfig(**sd["vae_cfg"])).eval().requires_grad_(False)
            var = VAR(vae, VARConfig(**sd["var_cfg"]))
        refuse_superseded("--depth", depth, var.cfg.depth, ckpt)
        load_state(vae, sd["vae"], ckpt, "its vae_cfg's VQVAE")
        load_state(var, sd["var"], ckpt, "its var_cfg's VAR")
        warn_unfinished(sd, ckpt)
        return vae, var, f"{ckpt} (fastar train var checkpoint)", {**OFFICIAL_FLAGS, **sd.get("sample_flags", {})}
    if "pos_1LC" not in sd or "pos_start" not in sd:
        raise wrong_checkpoint(ckpt, "a `fastar train var` ckpt.pt nor an official var_d*.pth", sd)
    refuse_superseded("--depth", depth, sd["pos_start"].shape[-1] // 64, ckpt)
    if vae_ckpt is None:
        raise SystemExit("an official VAR checkpoint needs --vae-ckpt (vae_ch160v4096z32.pth)")
    L = sd["pos_1LC"].shape[1]
    patch_nums = next((pn for pn in PATCH_NUMS.values() if sum(p * p for p in pn) == L), None)
    if patch_nums is None:
        raise SystemExit(f"--ckpt {ckpt}: {L} tokens match no released resolution's patch_nums {PATCH_NUMS}")
    vae, var = build_vae_var(depth=sd["pos_start"].shape[-1] // 64, patch_nums=patch_nums,
                             shared_aln="shared_ada_lin.1.weight" in sd)
    load_state(vae, read_checkpoint(vae_ckpt, "--vae-ckpt"), vae_ckpt, "the released VQVAE", "--vae-ckpt")
    load_state(var, sd, ckpt, f"VAR-d{var.cfg.depth}")
    return vae, var, f"{ckpt} + {vae_ckpt}", OFFICIAL_FLAGS


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar sample var", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--depth", type=positive_int, help="VAR depth when no --ckpt is given (default 16; with "
                   "--ckpt, the checkpoint's)")
    p.add_argument("--ckpt", help="official var_d*.pth or a `fastar train var` ckpt.pt")
    p.add_argument("--vae-ckpt", help="official vae_ch160v4096z32.pth (with an official --ckpt)")
    p.add_argument("--cfg", type=finite_float, help="classifier-free guidance at the last scale (default 4, or what a "
                   "`fastar train` checkpoint's samples.png used)")
    p.add_argument("--top-k", type=nonneg_int, help="keep the k largest logits, 0 = off (default 900, or the "
                   "checkpoint's)")
    p.add_argument("--top-p", type=unit_float, help="nucleus mass in [0, 1], 0 = off as officially (default 0.95, or "
                   "the checkpoint's)")
    p.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax code mixtures (smoother images)")
    args = parse_grid_args(p, argv, PRECISIONS, "the transformer's attention and FFN (float32 accumulation) and the "
                           "VQVAE decoder in bfloat16", "images per forward pass (2x with CFG)")
    with seeded(args.seed):
        vae, var, what, defaults = load(args.ckpt, args.vae_ckpt, args.depth)
    fill_defaults(args, defaults)
    print(f"sampling with {what}: cfg {args.cfg}, top-k {args.top_k}, top-p {args.top_p}")
    var.eval()
    args.classes = pick_classes(p, args.classes, var.num_classes)
    labels = torch.tensor(args.classes)
    out = []
    with name_overflow(cfg=args.cfg):
        for i, label_B in enumerate(tqdm(labels.split(args.bs), desc="sample var")):
            out.append(var.autoregressive_infer_cfg(len(label_B), label_B, g_seed=args.seed + i, cfg=args.cfg,
                                                    top_k=args.top_k, top_p=args.top_p, more_smooth=args.more_smooth,
                                                    precision=args.precision, progress=True))
    save_grid(torch.cat(out), args.out, nrow=args.nrow)
    print(f"wrote {args.out}: {len(labels)} images, classes {args.classes}")
