"""Train a tiny KL VAE + MAR on scikit-learn's digits (1797 8x8 images, 10 classes), on the CPU, in minutes.

    python -m fastar train mar --out runs/mar-digits
    torchrun --nproc_per_node 2 -m fastar train mar ...      # DDP (gloo on CPU)

Stage 1 trains the KL VAE (L2 reconstruction + a small KL weight, as LDM's KL autoencoders) on 16 px digits, and
sets its latent scale to 1 / std of the posterior samples (what 0.2325 is for KL-16); stage 2 freezes it and trains
MAR on posterior samples times that scale (mask ratio, label dropout, diffusion_batch_mul as the official trainer).
Writes ckpt.pt (both models with their configs; `python -m fastar sample mar --ckpt` reads it) and samples.png.
"""
import argparse
import dataclasses
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastar.models.mar.mar import MAR, MARConfig
from fastar.models.mar.sample import generate
from fastar.models.mar.vae import AutoencoderKL, KLConfig
from fastar.models.var.sample import save_grid
from fastar.models.var.train import add_run_args, digits, fit, start_run

TINY_VAE = KLConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)  # 16 px -> 8x8 latents, 64 tokens
KL_WEIGHT = 1e-4


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar train mar", description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=96, help="MAR encoder / decoder width")
    p.add_argument("--depth", type=int, default=2, help="encoder depth = decoder depth")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--bs", type=int, default=32, help="batch size per process")
    p.add_argument("--vae-steps", type=int, default=200)
    p.add_argument("--mar-steps", type=int, default=400)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--mar-lr", type=float, default=1e-3)
    p.add_argument("--num-iter", type=int, default=8, help="autoregressive steps of the final samples")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance of the final samples")
    add_run_args(p, "runs/mar-digits")
    args = p.parse_args(argv)
    rank, world = start_run(args)
    images, labels = digits(args.image_size)
    vae = AutoencoderKL(TINY_VAE)
    stride = 2 ** (len(TINY_VAE.ch_mult) - 1)
    mar_cfg = MARConfig(width=args.width, depth=args.depth, num_heads=args.width // 32, diffloss_d=2,
                        diffloss_w=args.width, img_size=args.image_size, vae_stride=stride,
                        vae_embed_dim=TINY_VAE.embed_dim, buffer_size=4, class_num=10, num_sampling_steps=50)
    model = MAR(mar_cfg)

    def save():
        torch.save({"vae_cfg": dataclasses.asdict(vae.cfg), "mar_cfg": dataclasses.asdict(model.cfg),
                    "vae": vae.state_dict(), "mar": model.state_dict()}, os.path.join(args.out, "ckpt.pt"))

    # stage 1: the tokenizer
    vae.train().requires_grad_(True)

    def vae_loss(m, idx):
        rec, kl = m(images[idx])
        return F.mse_loss(rec, images[idx]) + KL_WEIGHT * kl.mean() / images[idx][0].numel()

    first, last = fit("vae", vae, vae_loss, len(images), args, rank, world, save)
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
    if world > 1:
        dist.destroy_process_group()
