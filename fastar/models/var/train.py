"""Train a tiny VQVAE + VAR on scikit-learn's digits (1797 8x8 images, 10 classes), on the CPU, in minutes.

    python -m fastar train var --depth 2 --out runs/var-digits
    torchrun --nproc_per_node 2 -m fastar train var ...      # DDP (gloo on CPU); --fsdp: FSDP

Stage 1 trains the VQVAE (L2 reconstruction + the quantizer's VQ loss), since no released tokenizer fits 32 px
digits; stage 2 freezes it and trains VAR on its tokens, teacher-forced, as FoundationVision/VAR's trainer does.
Writes ckpt.pt (both models with their configs, for sampling: no optimizer state, no resuming; `python -m fastar
sample var --ckpt` reads it) and samples.png.
The defaults (150 tokenizer steps, 500 VAR steps: ~100 s under torchrun on 2 Zen 4 cores) give digits that follow
their class; 200 VAR steps gave blurred shapes that did not.
"""
import argparse
import copy
import importlib.util
import math
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import fastar
from fastar.models.cli import (HelpFormatter, check_out_dir, positive_float, positive_int, run_state,
                               save_checkpoint, seed)
from fastar.models.fsdp import full_state_dict, shard
from fastar.models.var.build import build_vae_var
from fastar.models.var.sample import save_grid
from fastar.models.var.vqvae import VQVAEConfig

# a 32 px tokenizer: 3 levels (two halvings) give an 8x8 latent, tokenized at 6 scales
TINY_PATCH_NUMS = (1, 2, 3, 4, 6, 8)
TINY_VAE = VQVAEConfig(vocab_size=256, z_channels=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
                       v_patch_nums=TINY_PATCH_NUMS)
SAMPLE_FLAGS = {"cfg": 2.0, "top_k": 50, "top_p": 0.95}  # samples.png's; saved in ckpt.pt for `fastar sample var`
NO_DECAY = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss")  # as VAR's optimizer: embeddings, scales
GRAD_CLIP = 2.0  # fit's gradient norm clip, as VAR's trainer (tclip 2)


def digits(image_size):
    """(images (N, 3, S, S) in [-1, 1], labels (N,)) from scikit-learn's bundled digits, bilinearly resized."""
    # load_digits reads this file; importing scikit-learn for it took 1.7 s of each run's start, so it is read here.
    spec = importlib.util.find_spec("sklearn")
    path = spec and Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.exists():
        from sklearn.datasets import load_digits  # not installed (a clear ImportError), or its layout has changed
        data = load_digits()
        pixels, target = data.data, data.target
    else:
        table = np.loadtxt(path, delimiter=",")
        pixels, target = table[:, :-1], table[:, -1].astype(np.int64)
    x = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 8, 8) / 16  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).mul(2).sub(1).contiguous(), torch.tensor(target)


def batches(n, bs, steps, seed, rank, world):
    """`steps` index batches; each process takes its share of one shuffled order per epoch: n // world indices,
    every rank as many (the rest of the order unused), so every rank takes the same --bs and as many batches an
    epoch. One process: the whole order."""
    share = n // world
    if not 1 <= bs <= share:
        raise SystemExit(f"--bs {bs}: a batch per process must hold 1 to {share} images (the {n} training images "
                         f"split over {world} process{'es' if world > 1 else ''})")
    g, step = torch.Generator().manual_seed(seed), 0
    while True:
        perm = torch.randperm(n, generator=g)[rank::world][:share]
        for i in range(0, share - bs + 1, bs):
            if step == steps:
                return
            yield step, perm[i:i + bs]
            step += 1


def adamw(model, lr):
    """AdamW (0.9, 0.95) with weight decay on the weight matrices only, as VAR trains."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def lr_at(step, steps, lr, schedule, warmup):
    """The learning rate of `step` (0-based): "constant" lr, or "cosine" (MAR's util/lr_sched.py: a linear warmup
    over `warmup` steps, then a half-cycle cosine from lr down to 0 at `steps`)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_at: schedule must be 'constant' or 'cosine', got {schedule!r}")
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def mean_over_ranks(values, world):
    """The floats `values` averaged over the processes (one all_reduce under torchrun; one process: as they are)."""
    if world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def fit(name, model, loss_fn, n, args, rank, world, save, last_stage=True):
    """Optimizes loss_fn(idx) over `args.<name>_steps` batches at `args.<name>_lr` (scheduled by
    `args.<name>_lr_schedule` and `args.<name>_warmup` where the trainer has them: lr_at), gradient norm clipped at
    GRAD_CLIP, calling save(run_state(...)) every args.ckpt_every steps and at the end (on rank 0); returns the mean
    loss of the first and of the last k = 20 steps (fewer in a short run: the two windows never overlap), averaged
    over the processes. Each step runs in fastar.cpu_cache_step (its tensors of 32 MB and more from the CPU cache,
    warm after the first step), whose blocks go back to the OS at the end.
    Under torchrun the model trains in DDP, or with args.fsdp in FSDP: a sharded copy trains (fsdp.shard), and
    `model` takes its whole weights at every checkpoint and at the end, on every process."""
    lr, schedule = getattr(args, f"{name}_lr"), getattr(args, f"{name}_lr_schedule", "constant")
    warmup = getattr(args, f"{name}_warmup", 0)
    fsdp = getattr(args, "fsdp", False)
    if fsdp:  # the losses here read the outputs (fastar.ops.linear's are views of its GEMM's) without writing them
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    run = shard(copy.deepcopy(model)) if fsdp else DDP(model) if world > 1 else model
    opt = adamw(run if fsdp else model, lr)
    if world > 1:  # each process its own draws from here (masks, noise, label drops), as the official trainers seed
        torch.manual_seed(args.seed + rank)  # seed + rank; the weights were made alike, and DDP broadcasts rank 0's
    losses, steps = [], getattr(args, f"{name}_steps")
    device = next(model.parameters()).device
    bar = tqdm(batches(n, args.bs, steps, args.seed, rank, world), total=steps, desc=f"train {name}",
               disable=rank != 0)
    for step, idx in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, schedule, warmup)
        with fastar.cpu_cache_step(device):
            loss = loss_fn(run, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.parameters(), GRAD_CLIP)
            opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == steps:
            if fsdp:  # a collective: every process gathers, and every `model` holds the weights
                model.load_state_dict(full_state_dict(run))
            if rank == 0:
                save(run_state(name, step + 1, steps, last_stage))
    if fastar.backends()["cpu"]:
        fastar.empty_cpu_cache()
    k = max(1, min(20, len(losses) // 2))
    return mean_over_ranks([sum(losses[:k]) / k, sum(losses[-k:]) / k], world)


def add_run_args(p, out, clips=True, fsdp=True):
    """The options every digits trainer takes: checkpoints, seed, threads, output folder; `clips`: the --help says
    that fit clips the gradient norm; `fsdp`: --fsdp (the trainers that train through fit)."""
    if clips:
        p.epilog = f"Every step clips the gradients' total norm at {GRAD_CLIP}, as VAR's trainer."
    if fsdp:
        p.add_argument("--fsdp", action="store_true",
                       help="under torchrun: FSDP (fastar.models.fsdp, each block sharded) instead of DDP, "
                            "the same weights")
    p.add_argument("--ckpt-every", type=positive_int, default=100, help="steps between checkpoints")
    p.add_argument("--seed", type=seed, default=0, help="initial weights, batch order and draws")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per process: the tiny ops are too small to split, more threads mostly wait")
    p.add_argument("--out", default=out, help="folder for ckpt.pt and samples.png (made if missing)")


def start_run(args):
    """The output folder (made and probed on every process before the process group, so that a refused --out ends
    each at once), threads, the process group under torchrun (gloo) and the seed (the same initial weights on every
    process); returns (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if getattr(args, "fsdp", False) and world == 1:
        raise SystemExit("--fsdp shards over processes: run under torchrun --nproc_per_node N, N >= 2")
    check_out_dir(args.out)
    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(args.seed)
    return (dist.get_rank() if world > 1 else 0), world


def end_run(world):
    """Under torchrun: waits for every rank (rank 0 draws samples.png while the others are done), then leaves the
    process group, so that no rank tears its group down while another still runs, and ends the process (os._exit
    after flushing stdout and stderr): the DDP / FSDP modules still hold the gloo group, whose worker threads were
    torn down at interpreter exit and aborted a rank now and then ('terminate called without an active exception',
    rank 1 of two, after a barrier and destroy_process_group: CI, 2026-12-06; pytorch/pytorch#179291). The call is
    the last of every trainer and test script that makes it."""
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar train var", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--depth", type=positive_int, default=2, help="VAR depth: width 64*depth, depth heads")
    size = 4 * TINY_PATCH_NUMS[-1]  # the tokenizer halves twice, to the last scale's 8 x 8
    p.add_argument("--image-size", type=int, default=size, choices=(size,),
                   help=f"digits resized to this side; the tokenizer's scales {TINY_PATCH_NUMS} take {size} only")
    p.add_argument("--bs", type=positive_int, default=32, help="batch size per process")
    p.add_argument("--vae-steps", type=positive_int, default=150, help="stage 1: tokenizer (VQVAE) steps")
    p.add_argument("--var-steps", type=positive_int, default=500, help="stage 2: VAR steps")
    p.add_argument("--vae-lr", type=positive_float, default=2e-3, help="AdamW learning rate of the VQVAE")
    p.add_argument("--var-lr", type=positive_float, default=1e-3, help="AdamW learning rate of VAR")
    add_run_args(p, "runs/var-digits")
    args = p.parse_args(argv)
    rank, world = start_run(args)
    images, labels = digits(args.image_size)
    vae, var = build_vae_var(depth=args.depth, patch_nums=TINY_PATCH_NUMS, vae_cfg=TINY_VAE, init_adaln_gamma=1e-3,
                             num_classes=10)

    def save(state):
        save_checkpoint({"vae_cfg": asdict(vae.cfg), "var_cfg": asdict(var.cfg), "sample_flags": SAMPLE_FLAGS,
                         "vae": vae.state_dict(), "var": var.state_dict(), **state}, os.path.join(args.out, "ckpt.pt"))

    # stage 1: the tokenizer
    vae.train().requires_grad_(True)

    def vae_loss(model, idx):
        rec, _, vq_loss = model(images[idx])
        return F.mse_loss(rec, images[idx]) + vq_loss

    first, last = fit("vae", vae, vae_loss, len(images), args, rank, world, save, last_stage=False)
    if rank == 0:
        print(f"vae loss {first:.4f} -> {last:.4f}")
    vae.eval().requires_grad_(False)

    # stage 2: VAR on the frozen tokenizer's tokens, each image's extracted once (no augmentation, so they never
    # change), when a batch first draws it: a short run encodes only the images it trains on
    gt_idx_Bl = [torch.empty(len(images), pn * pn, dtype=torch.long) for pn in TINY_PATCH_NUMS]
    encoded = torch.zeros(len(images), dtype=torch.bool)

    @torch.no_grad()
    def tokens(idx):
        new = idx[~encoded[idx]]
        if len(new):
            for t, n in zip(gt_idx_Bl, vae.img_to_idxBl(images[new])):
                t[new] = n
            encoded[new] = True
        return [t[idx] for t in gt_idx_Bl]

    var.train()

    def var_loss(model, idx):
        ms_idx_Bl = tokens(idx)
        x_BLCv = vae.quantize.idxBl_to_var_input(ms_idx_Bl)
        logits_BLV = model(labels[idx], x_BLCv)
        return F.cross_entropy(logits_BLV.flatten(0, 1), torch.cat(ms_idx_Bl, 1).flatten())

    first, last = fit("var", var, var_loss, len(images), args, rank, world, save)
    if rank == 0:
        print(f"var loss {first:.4f} -> {last:.4f}")
        var.eval()
        img = var.autoregressive_infer_cfg(20, torch.arange(20) % 10, g_seed=args.seed, **SAMPLE_FLAGS)
        save_grid(img, os.path.join(args.out, "samples.png"), nrow=10)
        print(f"wrote {args.out}/ckpt.pt and {args.out}/samples.png")
    end_run(world)
