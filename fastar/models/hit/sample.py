"""Sample images with a HiT generator and write them as a PNG grid.

    python -m fastar sample hit --ckpt runs/hit-digits/ckpt.pt --n 32 --out grid.png   # from `fastar train hit`
    python -m fastar sample hit --size 256 --n 4                                        # random weights, says so

The EMA generator of a checkpoint, BatchNorm on the batch's statistics (--running-stats: eval mode, as the
official evaluation after 10^5 steps); outputs clipped to [-1, 1] as the official evaluation does.
"""
import argparse

import torch

from fastar.models.cli import (HelpFormatter, check_out_file, checkpoint_config, load_state, positive_int,
                               read_checkpoint, refuse_superseded, seed, warn_unfinished, wrong_checkpoint)
from fastar.models.hit.generator import CONFIGS, HiTConfig, HiTGenerator
from fastar.models.var.sample import save_grid, seeded


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar sample hit", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", help="a `fastar train hit` ckpt.pt")
    p.add_argument("--size", type=int, choices=sorted(CONFIGS),
                   help="the official config's output size, without --ckpt (default 256; with it, the checkpoint's)")
    p.add_argument("--n", type=positive_int, default=16, help="images")
    p.add_argument("--nrow", type=positive_int, default=8, help="images per row of the grid")
    p.add_argument("--seed", type=seed, default=0, help="the latents, and the random weights without --ckpt")
    p.add_argument("--running-stats", action="store_true",
                   help="BatchNorm on its running statistics (eval mode) instead of the batch's own")
    p.add_argument("--out", default="hit_samples.png", help="the grid's image file (its folder must exist)")
    args = p.parse_args(argv)
    check_out_file(p, args.out)

    if args.ckpt is None:
        args.size = args.size or 256
        with seeded(args.seed):
            G = HiTGenerator(CONFIGS[args.size])
        print(f"RANDOM weights (no --ckpt): the official {args.size} px config, untrained")
    else:
        sd = read_checkpoint(args.ckpt)
        if "cfg" not in sd or "G_ema" not in sd:
            raise wrong_checkpoint(args.ckpt, "a `fastar train hit` ckpt.pt", sd)
        with checkpoint_config(args.ckpt):
            G = HiTGenerator(HiTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in sd["cfg"].items()}))
        refuse_superseded("--size", args.size, G.cfg.output_size, args.ckpt)
        load_state(G, sd["G_ema"], args.ckpt, "its cfg's HiT generator")
        warn_unfinished(sd, args.ckpt)
        print(f"{args.ckpt} (fastar train hit checkpoint, EMA generator, step {sd.get('step', 'unknown')})")
    z = torch.randn(args.n, G.cfg.latent_dim, generator=torch.Generator().manual_seed(args.seed))
    save_grid((G.sample(z, batch_stats=not args.running_stats) + 1) / 2, args.out, nrow=args.nrow)
    print(f"wrote {args.out}")
