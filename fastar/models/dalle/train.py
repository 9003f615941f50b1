"""Train a tiny dVAE + DALL-E on scikit-learn's digits with captions ("a handwritten seven"), on the CPU, in minutes.

    python -m fastar train dalle --out runs/dalle-digits
    torchrun --nproc_per_node 2 -m fastar train dalle ...      # DDP (gloo on CPU); --fsdp: FSDP

Stage 1 trains the dVAE (gumbel-softmax relaxation, logit-Laplace loss, KL to the uniform prior, tau and beta
annealed over the run); stage 2 trains a BPE tokenizer on the captions and the transformer on (caption, argmax
tokens) pairs. Writes ckpt.pt (models, configs, tokenizer, for sampling: no optimizer state, no resuming; `python -m
fastar sample dalle --ckpt` reads it) and samples.png: two rows, column c captioned "a handwritten <c>" (zero ...
nine).
"""
import argparse
import os
from dataclasses import asdict

import torch

from fastar.models.dalle.dalle import DALLE, DALLEConfig, loss as dalle_loss_of
from fastar.models.dalle.dvae import DVAE, DVAEConfig, beta_schedule, tau_schedule
from fastar.models.dalle.text import MAX_TEXT_LEN, TextTokenizer
from fastar.models.var.sample import save_grid
from fastar.models.cli import (HelpFormatter, int_in, multiple_of, nonneg_int, positive_float, positive_int,
                               save_checkpoint)
from fastar.models.var.train import add_run_args, digits, fit, end_run, start_run

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Caption templates: the tokenizer learns the shared words, the digit's name carries the class.
TEMPLATES = ("a handwritten {}", "the digit {} written by hand", "a small picture of a {}")
TINY_DVAE = DVAEConfig(n_hid=16, n_blk_per_group=1, group_count=3, vocab_size=128, n_init=32)  # 32 px -> 8 x 8


def caption(label, template=0):
    return TEMPLATES[template].format(NAMES[label])


def tiny_dalle(text_vocab, args):
    return DALLEConfig(width=args.width, depth=args.depth, heads=args.width // 32, text_vocab=text_vocab,
                       text_len=args.text_len, image_vocab=TINY_DVAE.vocab_size, grid=8, conv_kernel=5)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar train dalle", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--width", type=multiple_of(32), default=128, help="transformer width (heads of 32)")
    p.add_argument("--depth", type=positive_int, default=4, help="transformer layers (row, column, row, conv)")
    p.add_argument("--text-len", type=int_in(1, MAX_TEXT_LEN), default=8,
                   help="text positions (at least the longest caption's tokens: 8 at --text-vocab 64, 6 at 128)")
    p.add_argument("--text-vocab", type=positive_int, default=64, help="BPE vocabulary size")
    p.add_argument("--bs", type=positive_int, default=32, help="batch size per process")
    p.add_argument("--dvae-steps", type=positive_int, default=300, help="stage 1: dVAE steps")
    p.add_argument("--dalle-steps", type=positive_int, default=400, help="stage 2: transformer steps")
    p.add_argument("--dvae-lr", type=positive_float, default=2e-3, help="AdamW learning rate of the dVAE")
    p.add_argument("--dalle-lr", type=positive_float, default=1e-3, help="AdamW learning rate of the transformer")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature of samples.png")
    p.add_argument("--top-k", type=nonneg_int, default=32, help="top-k of samples.png (0 = off)")
    add_run_args(p, "runs/dalle-digits")
    args = p.parse_args(argv)
    # the tokenizer first: a --text-len too short for its captions is refused before any training
    captions = [caption(c, t) for c in range(10) for t in range(len(TEMPLATES))]
    tokenizer = TextTokenizer.train(captions, args.text_vocab, args.text_len)
    longest = max(len(enc.ids) for enc in tokenizer.tokenizer.encode_batch(captions))
    if longest > args.text_len:
        p.error(f"--text-len {args.text_len}: the longest caption takes {longest} tokens at --text-vocab "
                f"{args.text_vocab}")

    rank, world = start_run(args)
    images, labels = digits(32)
    images = (images + 1) / 2  # (N, 3, 32, 32) in [0, 1]: the dVAE's map_pixels input
    dvae = DVAE(TINY_DVAE)
    dalle = DALLE(tiny_dalle(tokenizer.vocab_size, args))

    def save(state):
        save_checkpoint({"dvae_cfg": asdict(dvae.cfg), "dalle_cfg": asdict(dalle.cfg), "dvae": dvae.state_dict(),
                         "dalle": dalle.state_dict(), "tokenizer": tokenizer.to_str(), **state},
                        os.path.join(args.out, "ckpt.pt"))

    # stage 1: the dVAE, tau 1 -> 1/16 over the run, beta 0 -> 6.6 over its first third
    step = iter(range(10**9))
    gen = torch.Generator().manual_seed(args.seed + rank)

    def dvae_loss(model, idx):
        s = next(step)
        return model(images[idx], tau_schedule(s, args.dvae_steps), beta_schedule(s, args.dvae_steps // 3), gen)[0]

    first, last = fit("dvae", dvae, dvae_loss, len(images), args, rank, world, save, last_stage=False)
    if rank == 0:
        print(f"dvae loss {first:.4f} -> {last:.4f}")
    dvae.eval().requires_grad_(False)

    # stage 2: the transformer on the frozen dVAE's argmax tokens and a random caption template per image
    with torch.no_grad():
        image_tokens = torch.cat([dvae.img_to_tokens(x).flatten(1) for x in images.split(256)])  # (N, 64)
    texts = torch.stack([tokenizer.encode([caption(int(c), t) for c in labels])
                         for t in range(len(TEMPLATES))], 1)  # (N, templates, text_len)
    dalle.train()

    def dalle_loss(model, idx):
        t = torch.randint(len(TEMPLATES), (len(idx),), generator=gen)
        return dalle_loss_of(model, texts[idx, t], image_tokens[idx])[0]

    first, last = fit("dalle", dalle, dalle_loss, len(images), args, rank, world, save)
    if rank == 0:
        print(f"dalle loss {first:.4f} -> {last:.4f}")
        dalle.eval()
        text = tokenizer.encode([caption(c) for _ in range(2) for c in range(10)])
        tokens = dalle.generate(text, temperature=args.temperature, top_k=args.top_k,
                                generator=torch.Generator().manual_seed(args.seed))
        save_grid(dvae.tokens_to_img(tokens.view(-1, 8, 8)), os.path.join(args.out, "samples.png"), nrow=10)
        print(f"wrote {args.out}/ckpt.pt and {args.out}/samples.png (columns: zero..nine)")
    end_run(world)
