"""Train a tiny HiT GAN on scikit-learn's digits (1797 8x8 images, upsampled to 32 x 32), on the CPU, in minutes.

    python -m fastar train hit --steps 300 --out runs/hit-digits
    torchrun --nproc_per_node 2 -m fastar train hit ...      # DDP (gloo on CPU); BatchNorm statistics per process

The official recipe (google-research/hit-gan): G and D updated simultaneously from one generator forward, Adam
(0.0, 0.99), non-saturating logistic loss, R1 = 10 on reals every step, optional bCR (--consistency), an EMA
generator (from step 10, BatchNorm statistics included; decay 0.999 officially, 0.95 by default here for runs of a
few hundred steps). Digits-scale departures: R1 = 1 by default, and G's output mean starts at the data's
(HiTGenerator.start_at_mean). Under torchrun G's BatchNorm normalizes each process's batch by that batch's own
statistics (no SyncBatchNorm), and its running statistics are rank 0's (DDP broadcasts rank 0's buffers each
forward): a 2-process run is not one run at twice the batch. Writes ckpt.pt (G, EMA G, D and the configs, for
sampling: no optimizer state, no resuming; `python -m fastar sample hit --ckpt` reads it), samples_<step>.png at
every checkpoint (the EMA generator on fixed latents, BatchNorm on batch statistics, so the runs show it improving;
those of an earlier run in --out are removed first) and samples.png.
"""
import argparse
import copy
import os
import re
from dataclasses import asdict

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import fastar
from fastar.models.hit.discriminator import StyleGANDiscriminator
from fastar.models.hit.generator import TINY, HiTGenerator
from fastar.models.hit.losses import consistency, d_loss, ema_update, g_loss, r1_penalty
from fastar.models.var.sample import save_grid
from fastar.models.cli import (HelpFormatter, nonneg_float, positive_float, positive_int, run_state, save_checkpoint,
                               unit_float)
from fastar.models.var.train import add_run_args, batches, digits, end_run, mean_over_ranks, start_run

STEP_SAMPLES = re.compile(r"samples_\d+\.png")  # the grids save() writes, samples_<step>.png


def module(m):
    return m.module if isinstance(m, DDP) else m


def gan_step(G, D, real, z, opt_G, opt_D, r1=10.0, bcr=0.0):
    """One simultaneous update of G and D (either may be DDP-wrapped) from one generator forward; both gradients
    are taken at the current weights, as the official trainer's two GradientTapes. Returns (d_loss, g_loss)."""
    # Its tensors of 4 MB and more warm from the CPU cache after the first step (most of HiT's are 4 to 32 MB).
    with fastar.cpu_cache_step(real.device, min_mb=4):
        fake = G(z)  # (B, 3, S, S)
        real = real.detach().requires_grad_(r1 > 0)
        # D on reals and on fakes apart, as the official trainer, so R1's double backward runs on the reals only
        # (after one forward of both it ran every convolution on the fakes too, for zero gradients). One DDP forward
        # per backward: the fakes' graph feeds the same parameters, whose hooks fire once on the summed gradient.
        real_logits, fake_logits = D(real), module(D)(fake.detach())
        loss_d = d_loss(real_logits, fake_logits)
        if r1 > 0:
            loss_d = loss_d + r1_penalty(real_logits, real, r1)
        if bcr > 0:
            loss_d = loss_d + consistency(module(D), real, fake, real_logits, fake_logits, bcr)
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        module(D).requires_grad_(False)  # the generator's loss leaves D's gradients as they are
        loss_g = g_loss(module(D)(fake))
        opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        module(D).requires_grad_(True)
        opt_D.step()
        opt_G.step()
    return loss_d.item(), loss_g.item()


def sample_grid(G, z, path):
    save_grid((G.sample(z) + 1) / 2, path, nrow=8)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar train hit", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--steps", type=positive_int, default=400, help="training steps (one G and one D update each)")
    p.add_argument("--bs", type=positive_int, default=8,
                   help="batch size per process, BatchNorm's batch under torchrun (no SyncBatchNorm; on digits, 400 "
                        "steps of 8 drew recognisable digits where 200 of 16, the same time, drew blobs)")
    p.add_argument("--lr", type=positive_float, default=5e-4,
                   help="Adam lr of G and D (the official runs: 1e-4 or 5e-5)")
    p.add_argument("--r1", type=nonneg_float, default=1.0,
                   help="R1 weight (official: 10, for 128-256 px and 10^5 steps; 0 = off)")
    p.add_argument("--consistency", type=nonneg_float, default=0.0, help="bCR weight (official faces: 10; 0 = off)")
    p.add_argument("--ema", type=unit_float, default=0.95,
                   help="EMA decay (official: 0.999, for runs of 10^5 steps; at lr 5e-4 G's weights turn over within "
                        "~100 steps, and 0.99 averaged them into one z-blind image)")
    p.add_argument("--d-channels", type=positive_int, default=32, help="cap on the discriminator's channels")
    add_run_args(p, "runs/hit-digits", clips=False, fsdp=False)
    args = p.parse_args(argv)

    rank, world = start_run(args)
    if rank == 0:  # an earlier run's step grids would pass for this run's
        for name in os.listdir(args.out):
            if STEP_SAMPLES.fullmatch(name):
                os.remove(os.path.join(args.out, name))
    images, _ = digits(TINY.output_size)
    G, D = HiTGenerator(TINY), StyleGANDiscriminator(TINY.output_size, max_channels=args.d_channels)
    G.start_at_mean(images.mean().item())
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99))
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.0, 0.99))
    G_run, D_run = (DDP(G), DDP(D)) if world > 1 else (G, D)
    z_fixed = torch.randn(32, TINY.latent_dim, generator=torch.Generator().manual_seed(1234))
    noise = torch.Generator().manual_seed(args.seed * 1000 + rank)

    def save(step):
        save_checkpoint({"cfg": asdict(TINY), "d_channels": args.d_channels, "G": G.state_dict(),
                         "G_ema": G_ema.state_dict(), "D": D.state_dict(), **run_state("hit", step, args.steps)},
                        os.path.join(args.out, "ckpt.pt"))
        sample_grid(G_ema, z_fixed, os.path.join(args.out, f"samples_{step:05d}.png"))

    bar = tqdm(batches(len(images), args.bs, args.steps, args.seed, rank, world), total=args.steps,
               desc="train hit", disable=rank != 0)
    for step, idx in bar:
        G_run.train(), D_run.train()
        z = torch.randn(len(idx), TINY.latent_dim, generator=noise)
        ld, lg = gan_step(G_run, D_run, images[idx], z, opt_G, opt_D, args.r1, args.consistency)
        ema_update(G_ema, G, args.ema if step >= 10 else 0.0)
        bar.set_postfix(d=f"{ld:.3f}", g=f"{lg:.3f}")
        if rank == 0 and ((step + 1) % args.ckpt_every == 0 or step + 1 == args.steps):
            save(step + 1)
    if fastar.backends()["cpu"]:
        fastar.empty_cpu_cache()  # the steps' blocks back to the OS
    ld, lg = mean_over_ranks([ld, lg], world)
    if rank == 0:
        sample_grid(G_ema, z_fixed, os.path.join(args.out, "samples.png"))
        print(f"last step's d loss {ld:.4f} g loss {lg:.4f}; wrote {args.out}/ckpt.pt and {args.out}/samples.png")
    end_run(world)
