"""FractalGen (Li, Sun, Fan, He 2025, "Fractal Generative Models") with LTH14/fractalgen's module names: level l is
an AR or MAR transformer over (img[l] / img[l+1])^2 patches whose outputs condition the next level, one batch row
per patch, down to PixelLoss over R, G, B. Training is one forward per level on the gathered rows (breadth-first)
with the loss at the pixel level; sampling is depth-first (each step of a level runs its children to completion)."""
import contextlib
import dataclasses
import math
import warnings
from functools import partial

import torch
import torch.nn as nn

import fastar
from fastar.models.fractalgen.ar import AR
from fastar.models.fractalgen.mar import MAR
from fastar.models.fractalgen.pixelloss import PIX_MEAN, PIX_STD, PixelLoss
from fastar.models.checks import check_labels, check_number, check_values
from fastar.models.layers import bf16_products
from fastar.ops._checks import check_choice

PRECISIONS = ("fp32", "bf16")  # generate's modes

GENERATORS = {"ar": AR, "mar": MAR}


@dataclasses.dataclass(frozen=True)
class FractalGenConfig:
    img_size_list: tuple  # image side per level; the last (1) is the pixel
    embed_dim_list: tuple  # transformer width per level, the last PixelLoss's
    num_blocks_list: tuple
    num_heads_list: tuple
    generator_type_list: tuple  # "ar" or "mar" per transformer level
    label_drop_prob: float = 0.1  # labels replaced by fake_latent in training (the CFG null class)
    class_num: int = 1000
    proj_dropout: float = 0.1  # dropouts after projections and MLPs in training (attention probabilities: none)
    guiding_pixel: bool = False  # levels >= 1 first sample the patch's mean colour (the 256 px models)
    num_conds: int = 1  # conditions per patch read by MAR levels: middle, top, right, bottom, left
    r_weight: float = 1.0  # weight of the R channel's loss in training
    # The official dropout on the attention probabilities of the MAR levels in training: fastar's fused attention
    # has none, so a value > 0 is accepted (the official builders' call) and said not to apply.
    attn_dropout: float = 0.0
    grad_checkpointing: bool = False  # recompute each block's activations in the backward (torch.utils.checkpoint)

    def __post_init__(self):
        n = len(self.img_size_list)
        lists = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_list")}
        if n < 2 or any(len(v) != n for k, v in lists.items() if k != "generator_type_list"):
            raise ValueError(f"FractalGenConfig: the *_list fields must have one entry per level (>= 2), got {lists}")
        if len(self.generator_type_list) < n - 1 or any(t not in GENERATORS for t in self.generator_type_list):
            raise ValueError(f"FractalGenConfig: generator_type_list needs 'ar' or 'mar' for each of the {n - 1} "
                             f"transformer levels, got {self.generator_type_list}")
        if any(a % b for a, b in zip(self.img_size_list, self.img_size_list[1:])):
            raise ValueError(f"FractalGenConfig: each img_size_list entry must divide the one before, got "
                             f"{self.img_size_list}")
        if not 1 <= self.num_conds <= 5:
            raise ValueError(f"FractalGenConfig: num_conds must be in 1..5, got {self.num_conds}")


_IN64 = dict(img_size_list=(64, 4, 1), embed_dim_list=(1024, 512, 128), num_blocks_list=(32, 8, 3),
             num_heads_list=(16, 8, 4), r_weight=5.0)
_IN256 = dict(generator_type_list=("mar", "mar", "mar", "ar"), guiding_pixel=True, num_conds=5, r_weight=5.0)
# LTH14/fractalgen's README training flags (num_conds, guiding_pixel, r_weight), which the released checkpoints
# were built with.
MODELS = {
    "fractalar_in64": FractalGenConfig(generator_type_list=("ar", "ar", "ar"), num_conds=1, **_IN64),
    "fractalmar_in64": FractalGenConfig(generator_type_list=("mar", "mar", "ar"), num_conds=5, **_IN64),
    "fractalmar_base_in256": FractalGenConfig((256, 16, 4, 1), (768, 384, 192, 64), (24, 6, 3, 1), (12, 6, 3, 4),
                                              **_IN256),
    "fractalmar_large_in256": FractalGenConfig((256, 16, 4, 1), (1024, 512, 256, 64), (32, 8, 4, 1), (16, 8, 4, 4),
                                               **_IN256),
    "fractalmar_huge_in256": FractalGenConfig((256, 16, 4, 1), (1280, 640, 320, 64), (40, 10, 5, 1), (16, 8, 4, 4),
                                              **_IN256),
}


class FractalGen(nn.Module):
    """One level of FractalGen (LTH14/fractalgen models/fractalgen.py, same module names): its AR or MAR `generator`
    over the level's patches and `next_fractal`, the next level (a FractalGen) or PixelLoss at the last. forward:
    the loss of images (B, 3, H, W), ImageNet-normalized; generate: images (B, 3, H, W) in [0, 1]."""

    def __init__(self, cfg: FractalGenConfig, fractal_level=0):
        super().__init__()
        self.cfg, self.fractal_level = cfg, fractal_level
        self.num_fractal_levels = n = len(cfg.img_size_list)
        img, dim, lvl = cfg.img_size_list, cfg.embed_dim_list, fractal_level
        if lvl == 0:
            if cfg.attn_dropout > 0:
                warnings.warn(f"FractalGen: attn_dropout={cfg.attn_dropout} is not applied: fastar's fused attention "
                              f"has no dropout on the attention probabilities (proj_dropout is applied)", stacklevel=3)
            self.num_classes = cfg.class_num
            self.class_emb = nn.Embedding(cfg.class_num, dim[0])
            self.fake_latent = nn.Parameter(torch.zeros(1, dim[0]))
            nn.init.normal_(self.class_emb.weight, std=0.02)
            nn.init.normal_(self.fake_latent, std=0.02)
        kw = dict(num_conds=cfg.num_conds, guiding_pixel=cfg.guiding_pixel and lvl > 0) \
            if cfg.generator_type_list[lvl] == "mar" else {}
        self.generator = GENERATORS[cfg.generator_type_list[lvl]](
            seq_len=(img[lvl] // img[lvl + 1]) ** 2, patch_size=img[lvl + 1], cond_embed_dim=dim[max(lvl - 1, 0)],
            embed_dim=dim[lvl], num_blocks=cfg.num_blocks_list[lvl], num_heads=cfg.num_heads_list[lvl],
            proj_dropout=cfg.proj_dropout, grad_checkpointing=cfg.grad_checkpointing, **kw)
        if lvl < n - 2:
            self.next_fractal = FractalGen(cfg, lvl + 1)
        else:
            self.next_fractal = PixelLoss(c_channels=dim[lvl], width=dim[lvl + 1], depth=cfg.num_blocks_list[lvl + 1],
                                          num_heads=cfg.num_heads_list[lvl + 1], r_weight=cfg.r_weight)

    def check_images(self, imgs, labels):
        side = self.cfg.img_size_list[0]
        if not isinstance(imgs, torch.Tensor) or imgs.ndim != 4 or tuple(imgs.shape[1:]) != (3, side, side) \
                or imgs.shape[0] == 0:
            raise ValueError(f"FractalGen: imgs must be (B >= 1, 3, {side}, {side}), got "
                             f"{tuple(imgs.shape) if isinstance(imgs, torch.Tensor) else type(imgs).__name__}")
        if not imgs.is_floating_point():
            raise TypeError(f"FractalGen: imgs must be floating point (ImageNet-normalized), got {imgs.dtype}")
        check_labels("FractalGen", labels, imgs.shape[0], self.num_classes, device=self.class_emb.weight.device)
        mean, std = imgs.new_tensor(PIX_MEAN)[:, None, None], imgs.new_tensor(PIX_STD)[:, None, None]
        check_values("FractalGen", imgs.detach() * std + mean, -0.5 / 255, 255.5 / 255,  # PixelLoss's 0..255
                     "imgs must be ImageNet-normalized pixels of [0, 1] (shown un-normalized)")

    def forward(self, imgs, cond_list):
        """The loss of imgs (B, 3, H, W), ImageNet-normalized; at level 0 cond_list is the labels (B,) int64.
        Training: labels dropped to fake_latent with label_drop_prob, the r_weight-weighted loss. Eval: always
        fake_latent (unconditional NLL) and the plain mean, in nats per dim (bits_per_dim converts)."""
        if self.fractal_level == 0:
            self.check_images(imgs, cond_list)
            emb = self.class_emb(cond_list)
            drop = torch.rand(len(cond_list), device=imgs.device) < self.cfg.label_drop_prob if self.training \
                else torch.ones(len(cond_list), dtype=torch.bool, device=imgs.device)
            emb = torch.where(drop[:, None], self.fake_latent.to(emb.dtype), emb)
            cond_list = [emb] * 5
        imgs, cond_list, gp_loss = self.generator(imgs, cond_list)
        return self.next_fractal(imgs, cond_list) + gp_loss

    @torch.no_grad()
    def sample(self, cond_list, num_iter_list, cfg, cfg_schedule, temperature, filter_threshold, fractal_level=0,
               generator=None, progress=None):
        """The official recursion: this level's generator with the child's sampler; only the top level follows
        cfg_schedule, every child runs "constant" at its parent's current guidance. Returns normalized pixels."""
        child = self.next_fractal.sample
        if fractal_level < self.num_fractal_levels - 2:
            child = partial(child, num_iter_list=num_iter_list, cfg_schedule="constant",
                            fractal_level=fractal_level + 1)
        return self.generator.sample(cond_list, num_iter_list[fractal_level], cfg, cfg_schedule, temperature,
                                     filter_threshold, child, generator=generator, progress=progress)

    def transformer_levels(self):
        """This level's generator (MAR or AR) and those of the levels below it, top first (not PixelLoss)."""
        return [self.generator] + (self.next_fractal.transformer_levels()
                                   if isinstance(self.next_fractal, FractalGen) else [])

    @torch.no_grad()
    def generate(self, labels, *, num_iter_list, cfg=1.0, cfg_schedule="linear", temperature=1.0,
                 filter_threshold=1e-4, generator=None, progress=None, precision="fp32"):
        """Images (B, 3, H, W) in [0, 1] for labels (B,) int64, as the official evaluate() calls sample(): class
        embeddings, [cond; fake_latent] under CFG, num_conds copies.
        precision: "fp32", or "bf16": the transformer levels' products on bfloat16 operands (layers.bf16_products:
        float32 accumulation, autocast's bfloat16 result; their attention then runs on bfloat16 queries against
        float32 KV caches) as the official code samples under autocast on GPUs; PixelLoss, the residual streams and
        every draw stay float32. Decode steps of a few rows (AR levels) keep transformer_decode's float32 weights
        (see decode_weights for those). On a CPU without AMX-BF16 or AVX512-BF16 it runs slower than fp32 and warns
        (fastar.check_bf16_gemm)."""
        op = "FractalGen.generate"
        if progress is not None and not callable(progress):
            raise TypeError(f"{op}: progress must be None or a callable wrapping the top level's steps (e.g. tqdm), "
                            f"got {type(progress).__name__}")
        check_labels(op, labels, None, self.num_classes, device=self.class_emb.weight.device)
        if len(labels) == 0:
            raise ValueError(f"{op}: labels must hold at least one label")
        check_choice(op, "precision", precision, PRECISIONS)
        if (not isinstance(num_iter_list, (list, tuple)) or len(num_iter_list) < self.num_fractal_levels - 1
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in num_iter_list)):
            raise ValueError(f"{op}: num_iter_list needs a positive int count for each of the "
                             f"{self.num_fractal_levels - 1} transformer levels, got {num_iter_list!r}")
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"{op}: cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
        check_number(op, "temperature", temperature, above=0)
        check_number(op, "cfg", cfg)  # any finite scale, as MAR and VAR take (1: no guidance)
        check_number(op, "filter_threshold", filter_threshold, low=0.0, high=1.0)
        emb = self.class_emb(labels.to(self.fake_latent.device))
        if cfg != 1.0:
            emb = torch.cat([emb, self.fake_latent.expand(len(labels), -1)])
        if precision == "bf16":
            fastar.check_bf16_gemm("FractalGen.generate", emb.device)
        with bf16_products(*self.transformer_levels()) if precision == "bf16" else contextlib.nullcontext():
            x = self.sample([emb] * self.cfg.num_conds, list(num_iter_list), cfg, cfg_schedule, temperature,
                            filter_threshold, generator=generator, progress=progress)
        mean, std = x.new_tensor(PIX_MEAN)[:, None, None], x.new_tensor(PIX_STD)[:, None, None]
        return (x * std + mean).clamp(0, 1)


def bits_per_dim(nll_nats):
    """A negative log-likelihood in nats per dim (FractalGen's eval loss) in bits per dim: / ln 2."""
    return nll_nats / math.log(2)


def build(name, **overrides) -> FractalGen:
    """One of MODELS, fields overridable (e.g. num_conds=1 for the official builders' defaults). Takes the official
    builders' keywords (main_fractalgen.py: label_drop_prob, class_num, attn_dropout, proj_dropout, guiding_pixel,
    num_conds, r_weight, grad_checkpointing); attn_dropout > 0 is said not to apply."""
    if name not in MODELS:
        raise ValueError(f"build: name must be one of {tuple(MODELS)}, got {name!r}")
    return FractalGen(dataclasses.replace(MODELS[name], **overrides))


def _builder(name):
    def make(**overrides):
        return build(name, **overrides)
    make.__name__, make.__doc__ = name, f"{name} with LTH14/fractalgen's README flags ({MODELS[name]})."
    return make


fractalar_in64, fractalmar_in64, fractalmar_base_in256, fractalmar_large_in256, fractalmar_huge_in256 = (
    _builder(n) for n in MODELS)
