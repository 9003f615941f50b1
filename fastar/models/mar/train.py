"""Train a tiny KL VAE + MAR on scikit-learn's digits (1797 8x8 images, 10 classes), on the CPU, in minutes.

    python -m fastar train mar --out runs/mar-digits
    torchrun --nproc_per_node 2 -m fastar train mar ...      # DDP (gloo on CPU); --fsdp: FSDP

Stage 1 trains the KL VAE (L2 reconstruction + a small KL weight, as LDM's KL autoencoders) on 16 px digits, and
sets its latent scale to 1 / std of the posterior samples (what 0.2325 is for KL-16); stage 2 freezes it and trains
MAR on posterior samples times that scale (mask ratio, label dropout, diffusion_batch_mul as the official trainer),
its learning rate on the official cosine schedule after a warmup (util/lr_sched.py).
Writes ckpt.pt (both models with their configs, for sampling: no optimizer state, no resuming; `python -m fastar
sample mar --ckpt` reads it) and samples.png.

The samples run the head on the unrespaced 1000-step chain (--num-steps). On MAR's cosine chain the first sampling
step (t = 999, alphas_cumprod 2.4e-9) multiplies the head's eps error by sqrt(alphas_cumprod of the next step /
2.4e-9): 632 when respaced to 50 steps, 316 at MAR's 100, 32 at 1000. A head trained for minutes predicts eps at
t = 999 to ~0.03 (RMS), so a respaced chain leaves the data range at that step and every token diverges (noise
blobs; LTH14/mar issue 70: black images in the first epochs); the full chain keeps the error under the noise.
"""
import argparse
import dataclasses
import os

import torch
import torch.nn.functional as F

from fastar.models.mar.mar import MAR, MARConfig
from fastar.models.mar.sample import generate
from fastar.models.mar.vae import AutoencoderKL, KLConfig
from fastar.models.var.sample import save_grid
from fastar.models.cli import (HelpFormatter, check_warmup, finite_float, int_in, multiple_of, nonneg_int,
                               positive_float, positive_int, save_checkpoint)
from fastar.reference.diffusion import NUM_TIMESTEPS
from fastar.models.var.train import add_run_args, digits, fit, end_run, start_run

TINY_VAE = KLConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)  # 16 px -> 8x8 latents, 64 tokens
KL_WEIGHT = 1e-4
# The head's precision at t = 999 grows with its training steps: one (t, noise) draw per token (official 4) makes
# a step ~2x cheaper, and the larger, cosine-decayed learning rate reaches a lower error in as many steps.
MAR_LR = 2e-3
DIFFUSION_BATCH_MUL = 1
CFG = 1.5


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar train mar", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--width", type=multiple_of(32), default=96, help="MAR encoder / decoder width (heads of 32)")
    p.add_argument("--depth", type=positive_int, default=2, help="encoder depth = decoder depth")
    stride = 2 ** (len(TINY_VAE.ch_mult) - 1)
    p.add_argument("--image-size", type=multiple_of(stride), default=16,
                   help=f"digits resized to this side (a multiple of the VAE's stride {stride}: one token per "
                        f"{stride} x {stride} pixels)")
    p.add_argument("--bs", type=positive_int, default=32, help="batch size per process")
    p.add_argument("--vae-steps", type=positive_int, default=150, help="stage 1: KL VAE steps")
    p.add_argument("--mar-steps", type=positive_int, default=900, help="stage 2: MAR steps")
    p.add_argument("--vae-lr", type=positive_float, default=2e-3, help="AdamW learning rate of the VAE")
    p.add_argument("--mar-lr", type=positive_float, default=MAR_LR, help="AdamW peak learning rate of MAR")
    p.add_argument("--mar-lr-schedule", default="cosine", choices=("constant", "cosine"),
                   help="cosine: down to 0 at the last step, after --mar-warmup (util/lr_sched.py)")
    p.add_argument("--mar-warmup", type=nonneg_int, default=20, help="linear warmup steps of the MAR learning rate")
    p.add_argument("--diffusion-batch-mul", type=positive_int, default=DIFFUSION_BATCH_MUL,
                   help="(t, noise) draws per token for the head's loss (official: 4)")
    p.add_argument("--num-iter", type=positive_int, default=8, help="autoregressive steps of the final samples")
    p.add_argument("--num-steps", type=int_in(2, NUM_TIMESTEPS), default=NUM_TIMESTEPS, help="diffusion steps per "
                   f"token of the final samples (and the checkpoint's default): {NUM_TIMESTEPS} = the training "
                   "chain, unrespaced")
    p.add_argument("--cfg", type=finite_float, default=CFG, help="guidance of the final samples")
    add_run_args(p, "runs/mar-digits")
    args = p.parse_args(argv)
    check_warmup(p, args.mar_warmup, args.mar_steps, "--mar-warmup", "--mar-steps")
    rank, world = start_run(args)
    images, labels = digits(args.image_size)
    vae = AutoencoderKL(TINY_VAE)
    mar_cfg = MARConfig(width=args.width, depth=args.depth, num_heads=args.width // 32, diffloss_d=2,
                        diffloss_w=args.width, img_size=args.image_size, vae_stride=stride,
                        vae_embed_dim=TINY_VAE.embed_dim, buffer_size=4, class_num=10,
                        num_sampling_steps=args.num_steps, diffusion_batch_mul=args.diffusion_batch_mul)
    model = MAR(mar_cfg)

    def save(state):
        save_checkpoint({"vae_cfg": dataclasses.asdict(vae.cfg), "mar_cfg": dataclasses.asdict(model.cfg),
                         "sample_flags": {"num_iter": args.num_iter, "cfg": args.cfg},  # samples.png's, for sampling
                         "vae": vae.state_dict(), "mar": model.state_dict(), **state},
                        os.path.join(args.out, "ckpt.pt"))

    # stage 1: the tokenizer
    vae.train().requires_grad_(True)

    def vae_loss(m, idx):
        rec, kl = m(images[idx])
        return F.mse_loss(rec, images[idx]) + KL_WEIGHT * kl.mean() / images[idx][0].numel()

    first, last = fit("vae", vae, vae_loss, len(images), args, rank, world, save, last_stage=False)
    if rank == 0:
        print(f"vae loss {first:.4f} -> {last:.4f}")
    vae.eval().requires_grad_(False)

    # stage 2: MAR on the frozen tokenizer's posterior (fresh samples every step, as the official trainer)
    with torch.no_grad():
        mean, logvar = (torch.cat(t) for t in zip(*(vae.encode(x) for x in images.split(256))))
        scale = 1.0 / vae.sample(mean, logvar, torch.Generator().manual_seed(args.seed)).std().item()
    vae.cfg = dataclasses.replace(vae.cfg, latent_scale=scale)
    model.train()

    def mar_loss(m, idx):
        return m(vae.sample(mean[idx], logvar[idx]) * scale, labels[idx])

    first, last = fit("mar", model, mar_loss, len(images), args, rank, world, save)
    if rank == 0:
        print(f"mar loss {first:.4f} -> {last:.4f} (latent scale {scale:.4f})")
        model.eval()
        img = generate(vae, model, torch.arange(20) % 10, num_iter=args.num_iter, cfg=args.cfg, temperature=1.0,
                       seed=args.seed, bs=20, progress=False)
        save_grid(img, os.path.join(args.out, "samples.png"), nrow=10)
        print(f"wrote {args.out}/ckpt.pt and {args.out}/samples.png")
    end_run(world)
