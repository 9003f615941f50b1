"""Sample images for captions with DALL-E and write them as a PNG grid.

    python -m fastar sample dalle --ckpt runs/dalle-digits/ckpt.pt --text "a handwritten seven" --n 8
    python -m fastar sample dalle --ckpt runs/dalle-digits/ckpt.pt --text "a handwritten two" --prefix-from 3

Without --ckpt the weights are random (the default DALLEConfig, a 32 x 32 grid, and a tokenizer trained on the
given captions), and it says so. --prefix-rows R with --prefix-from IMAGE_INDEX conditions on the top R token rows
of a digits image (the paper's partial-image completion).
"""
import argparse

import torch
from tqdm import tqdm

from fastar.models.cli import (HelpFormatter, check_out_file, checkpoint_config, load_state, name_overflow, nonneg_int,
                               positive_float, positive_int, read_checkpoint, seed, unit_float, warn_unfinished,
                               wrong_checkpoint)
from fastar.models.dalle.dalle import DALLE, DALLEConfig
from fastar.models.dalle.dvae import DVAE, DVAEConfig
from fastar.models.dalle.text import TextTokenizer
from fastar.models.layers import decode_weights
from fastar.models.var.sample import save_grid, seeded


def load(ckpt, texts):
    """(dvae, dalle, tokenizer, what was loaded)."""
    if ckpt is None:
        cfg = DALLEConfig()
        tok = TextTokenizer.train(texts, 256, cfg.text_len)
        dvae = DVAE(DVAEConfig(n_hid=64, n_blk_per_group=1, vocab_size=cfg.image_vocab))
        dalle = DALLE(DALLEConfig(text_vocab=tok.vocab_size))
        return dvae, dalle, tok, "RANDOM weights (no --ckpt): the default DALLEConfig and a small dVAE, untrained"
    sd = read_checkpoint(ckpt)
    if not {"dvae_cfg", "dalle_cfg", "dvae", "dalle", "tokenizer"} <= set(sd):
        raise wrong_checkpoint(ckpt, "a `fastar train dalle` ckpt.pt", sd)
    with checkpoint_config(ckpt):
        dvae, dalle = DVAE(DVAEConfig(**sd["dvae_cfg"])), DALLE(DALLEConfig(**sd["dalle_cfg"]))
    load_state(dvae, sd["dvae"], ckpt, "its dvae_cfg's dVAE")
    load_state(dalle, sd["dalle"], ckpt, "its dalle_cfg's DALL-E")
    warn_unfinished(sd, ckpt)
    return dvae, dalle, TextTokenizer.from_str(sd["tokenizer"], dalle.cfg.text_len), f"{ckpt} (fastar train dalle)"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastar sample dalle", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", help="a `fastar train dalle` ckpt.pt")
    p.add_argument("--text", nargs="+", default=["a handwritten seven"], help="captions, one row of images each")
    p.add_argument("--n", type=positive_int, default=8, help="images per caption")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="divides the image-token logits")
    p.add_argument("--top-k", type=nonneg_int, default=32, help="keep the k largest logits (0 = off)")
    p.add_argument("--top-p", type=unit_float, default=1.0, help="nucleus mass (1 = off, 0 = the argmax)")
    p.add_argument("--prefix-from", type=nonneg_int, help="index of a digits image whose top rows are given")
    p.add_argument("--prefix-rows", type=positive_int, help="token rows given with --prefix-from (default 3)")
    p.add_argument("--bf16-weights", action="store_true", help="decode steps of up to 8 images (--n <= 8) read "
                   "bfloat16 copies of the weights (half the bytes; a sampling mode with its own tokens)")
    p.add_argument("--cache-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="the KV caches' dtype: 16 bits halve the bytes each step reads (DALL-E ran in float16)")
    p.add_argument("--seed", type=seed, default=0, help="the draws, and the random weights without --ckpt")
    p.add_argument("--out", default="dalle.png", help="the grid's image file (its folder must exist)")
    args = p.parse_args(argv)
    check_out_file(p, args.out)
    if args.prefix_rows is not None and args.prefix_from is None:
        p.error(f"--prefix-rows {args.prefix_rows} needs --prefix-from (the image whose rows are given)")
    args.prefix_rows = 3 if args.prefix_rows is None else args.prefix_rows

    with seeded(args.seed):
        dvae, dalle, tok, what = load(args.ckpt, args.text)
    print(f"sampling with {what}")
    try:
        text_ids = [tok.encode([text] * args.n) for text in args.text]
    except ValueError as e:  # a caption longer than the model's text_len
        p.error(f"--text: {e}")
    dvae.eval(), dalle.eval()
    g = dalle.cfg.grid
    prefix = None
    if args.prefix_from is not None:
        from fastar.models.var.train import digits
        images = digits(g * 2 ** (dvae.cfg.group_count - 1))[0]
        if not 0 <= args.prefix_from < len(images) or args.prefix_rows > g:
            p.error(f"--prefix-from must be in [0, {len(images)}) and --prefix-rows at most the grid's {g} rows, got "
                    f"{args.prefix_from} and {args.prefix_rows}")
        image = (images[args.prefix_from:args.prefix_from + 1] + 1) / 2
        prefix = dvae.img_to_tokens(image).flatten(1)[:, :args.prefix_rows * g].expand(args.n, -1)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for ids in tqdm(text_ids, desc="sample dalle"):
        with (decode_weights(dalle, torch.bfloat16 if args.bf16_weights else torch.float32),
              name_overflow(temperature=args.temperature)):
            tokens = dalle.generate(ids, image_prefix=prefix, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p, generator=gen, progress=True,
                                    cache_dtype=getattr(torch, args.cache_dtype))
        rows.append(dvae.tokens_to_img(tokens.view(-1, g, g)))
    save_grid(torch.cat(rows), args.out, nrow=args.n)
    print(f"wrote {args.out}: {len(args.text)} captions x {args.n} images")
