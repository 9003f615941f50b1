"""Sample class-conditional images with MAR and write them as a PNG grid (decoded by the KL-16 VAE).

    python -m fastar sample mar --size base --ckpt mar_base/checkpoint-last.pth --vae-ckpt kl16.ckpt \\
        --classes 207 360 387 974 --num-iter 64 --cfg 2.9 --out grid.png
    python -m fastar sample mar --precision bf16 ...   # bf16 products (fast with AMX-BF16 / AVX512-BF16)
    python -m fastar sample mar --ckpt runs/mar-digits/ckpt.pt --classes 0 1 2 3   # from `fastar train mar`

Without --ckpt the weights are random (MAR-{size} and the KL-16 VAE, untrained), and it says so.
"""
import argparse

import torch

from fastar.models.cli import (HelpFormatter, checkpoint_config, finite_float, int_in, load_state, positive_float,
                               positive_int, read_checkpoint, refuse_superseded, refuse_vae_ckpt, warn_unfinished,
                               wrong_checkpoint)
from fastar.models.mar.mar import MAR, PRECISIONS, MARConfig, mar
from fastar.reference.diffusion import NUM_TIMESTEPS
from fastar.models.mar.vae import AutoencoderKL, KLConfig
from fastar.models.var.sample import fill_defaults, parse_grid_args, pick_classes, save_grid, seeded


OFFICIAL_FLAGS = {"num_iter": 64, "cfg": 2.9}  # a quicker num_iter than the official evaluation's 256; MAR-B's cfg


def load(ckpt, vae_ckpt, size=None):
    """(vae, mar, what was loaded, its sampling defaults (fill_defaults)). ckpt: a `fastar train mar` checkpoint, or
    an official checkpoint-last.pth (its EMA weights, as the official evaluation samples; the KL-16 VAE then comes
    from vae_ckpt). size: of random weights or an official ckpt (default "base"); None with a `fastar train` one."""
    if ckpt is None:
        refuse_vae_ckpt(vae_ckpt, ckpt, "mar", "checkpoint-last.pth")
        size = size or "base"
        return (AutoencoderKL(), mar(size), f"RANDOM weights (no --ckpt): MAR-{size} and the KL-16 VAE, untrained",
                OFFICIAL_FLAGS)
    sd = read_checkpoint(ckpt)
    if "mar_cfg" in sd:
        refuse_vae_ckpt(vae_ckpt, ckpt, "mar", "checkpoint-last.pth")
        refuse_superseded("--size", size, None, ckpt)
        if not {"vae_cfg", "vae", "mar"} <= set(sd):
            raise wrong_checkpoint(ckpt, "a whole `fastar train mar` ckpt.pt", sd)
        with checkpoint_config(ckpt):
            vae, model = AutoencoderKL(KLConfig(**sd["vae_cfg"])), MAR(MARConfig(**sd["mar_cfg"]))
        load_state(vae, sd["vae"], ckpt, "its vae_cfg's KL VAE")
        load_state(model, sd["mar"], ckpt, "its mar_cfg's MAR")
        warn_unfinished(sd, ckpt)
        return vae, model, f"{ckpt} (fastar train mar checkpoint)", {**OFFICIAL_FLAGS, **sd.get("sample_flags", {})}
    state = sd.get("model_ema", sd.get("model", sd))
    if not isinstance(state, dict) or "z_proj.weight" not in state:
        raise wrong_checkpoint(ckpt, "a `fastar train mar` ckpt.pt nor an official MAR checkpoint-last.pth", sd)
    if vae_ckpt is None:
        raise SystemExit("an official MAR checkpoint needs --vae-ckpt (kl16.ckpt)")
    size = size or "base"
    model = mar(size)
    load_state(model, state, ckpt, f"MAR-{size} (--size)")
    vae = AutoencoderKL()
    vae_sd = read_checkpoint(vae_ckpt, "--vae-ckpt")
    vae_sd = vae_sd.get("model", vae_sd)
    # kl16.ckpt also carries its training loss's weights (LPIPS, discriminator): only the autoencoder's are read.
    load_state(vae, {k: v for k, v in vae_sd.items() if k in vae.state_dict()}, vae_ckpt, "the KL-16 VAE",
               "--vae-ckpt")
    return vae, model, f"{ckpt} + {vae_ckpt}", OFFICIAL_FLAGS


@torch.no_grad()
def generate(vae, model, labels, *, num_iter, cfg, temperature, seed, bs, cfg_schedule="linear", progress=True,
             precision="fp32"):
    """Images (B, 3, H, W) in [0, 1]: sample_tokens per batch of bs labels (in `precision`), then the VAE decode of
    tokens / latent_scale (float32)."""
    out = []
    for i, label_B in enumerate(labels.split(bs)):
        tokens = model.sample_tokens(len(label_B), num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule,
                                     labels=label_B, temperature=temperature,
                                     generator=torch.Generator().manual_seed(seed + i), progress=progress,
                                     precision=precision)
        out.append(vae.decode(tokens / vae.cfg.latent_scale).add(1).div(2).clamp(0, 1))
    return torch.cat(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar sample mar", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--size", choices=("base", "large", "huge"), help="MAR size without --ckpt or with an "
                   "official one (default base; a `fastar train mar` ckpt.pt holds its own)")
    p.add_argument("--ckpt", help="official checkpoint-last.pth or a `fastar train mar` ckpt.pt")
    p.add_argument("--vae-ckpt", help="the KL-16 VAE's kl16.ckpt (with an official --ckpt)")
    p.add_argument("--num-iter", type=positive_int, help="autoregressive steps (default 64, the official evaluation "
                   "256, or what a `fastar train` checkpoint's samples.png used)")
    p.add_argument("--num-steps", type=int_in(2, NUM_TIMESTEPS), help="diffusion steps per token, the "
                   f"{NUM_TIMESTEPS}-step chain respaced (default: the checkpoint's: {NUM_TIMESTEPS} for a `fastar "
                   "train mar` ckpt.pt unless its --num-steps said otherwise, 100 for MAR-B/L/H and random weights)")
    p.add_argument("--cfg", type=finite_float, help="classifier-free guidance (default 2.9, MAR-B's, at every "
                   "--size (the official L: 3.0, H: 3.2), or the checkpoint's)")
    p.add_argument("--cfg-schedule", default="linear", choices=("linear", "constant"),
                   help="guidance ramped linearly over the revealed tokens (Muse's, as officially), or constant")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="scales the diffusion head's noise")
    args = parse_grid_args(p, argv, PRECISIONS, "the transformer's products and the diffusion head's GEMMs on "
                           "bfloat16 operands (float32 accumulation)",
                           "images per sample_tokens call (2x rows with CFG)")
    with seeded(args.seed):
        vae, model, what, defaults = load(args.ckpt, args.vae_ckpt, args.size)
    fill_defaults(args, defaults)
    if args.num_steps is not None:
        model.diffloss.num_sampling_steps = args.num_steps
    print(f"sampling with {what}: num_iter {args.num_iter}, cfg {args.cfg} ({args.cfg_schedule})")
    vae.eval(), model.eval()
    args.classes = pick_classes(p, args.classes, model.class_emb.num_embeddings)
    labels = torch.tensor(args.classes)
    img = generate(vae, model, labels, num_iter=args.num_iter, cfg=args.cfg, temperature=args.temperature,
                   seed=args.seed, bs=args.bs, cfg_schedule=args.cfg_schedule, precision=args.precision)
    save_grid(img, args.out, nrow=args.nrow)
    print(f"wrote {args.out}: {len(labels)} images, classes {args.classes}")
