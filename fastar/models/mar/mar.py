"""MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization") with LTH14/mar's module names
(models/mar.py): a masked bidirectional encoder over the 64 class-buffer tokens and the visible tokens, a decoder
over all 64 + 256 positions, and per token a condition z for the diffusion head (diffloss.py). Attention runs
through fastar.ops.attention, the head through fastar.ops.diffusion_sample (sampling) and fastar.ops.diffusion_loss
(training). The blocks are timm's pre-norm ViT blocks (fastar.models.fractalgen.blocks, shared with FractalGen's MAR
levels): projection / MLP dropout as the official training (0.1); the fused attention has no dropout on its
probabilities (attn_dropout, 0.1 officially, is said not to apply). mar_base / mar_large / mar_huge take the official
builders' keywords (main_mar.py's call).
"""
import contextlib
import dataclasses
import math
import warnings

import torch
import torch.nn as nn

from fastar.models.fractalgen.blocks import LN_EPS, Block, apply_block
import fastar
from fastar.models.checks import check_count, check_labels, check_number
from fastar.models.layers import Linear, bf16_products, fast_path, rng_device
from fastar.models.mar.diffloss import DiffLoss


PRECISIONS = ("fp32", "bf16")  # sample_tokens' modes


@dataclasses.dataclass(frozen=True)
class MARConfig:
    width: int = 768  # encoder and decoder width (equal in every released model)
    depth: int = 12  # encoder depth = decoder depth
    num_heads: int = 12
    diffloss_d: int = 6  # head of the released checkpoint (the paper's ablation default is d3 w1024)
    diffloss_w: int = 1024
    img_size: int = 256
    vae_stride: int = 16
    vae_embed_dim: int = 16  # KL-16 latent channels = token width (patch_size 1)
    buffer_size: int = 64  # class-embedding buffer tokens in front of the sequence
    class_num: int = 1000
    num_sampling_steps: int = 100
    mask_ratio_min: float = 0.7  # training mask ratios: a normal at 1.0, sd 0.25, truncated to [min, 1]
    label_drop_prob: float = 0.1  # training: the class is replaced by the null class (for CFG)
    diffusion_batch_mul: int = 4  # training: each token's head loss is taken at this many (t, noise) draws
    proj_dropout: float = 0.0  # training: after the attention projection and in the MLP (official training: 0.1)
    attn_dropout: float = 0.0  # on the attention probabilities: not applied (fastar's fused attention has none)
    grad_checkpointing: bool = False  # recompute each block's activations in the backward (torch.utils.checkpoint)

    @property
    def seq_len(self):
        return (self.img_size // self.vae_stride) ** 2

    def __post_init__(self):
        if self.img_size < self.vae_stride or self.img_size % self.vae_stride:
            raise ValueError(f"MARConfig: img_size {self.img_size} must be a positive multiple of vae_stride "
                             f"{self.vae_stride} (it would sample {self.img_size // self.vae_stride * self.vae_stride}"
                             f" px)")
        for name in ("width", "depth", "num_heads", "class_num", "num_sampling_steps", "buffer_size"):
            check_count("MARConfig", name, getattr(self, name))
        if self.width % self.num_heads:
            raise ValueError(f"MARConfig: num_heads {self.num_heads} must divide width {self.width}")


SIZES = {"base": MARConfig(), "large": MARConfig(width=1024, depth=16, num_heads=16, diffloss_d=8, diffloss_w=1280),
         "huge": MARConfig(width=1280, depth=20, num_heads=16, diffloss_d=12, diffloss_w=1536)}


class MAR(nn.Module):
    """MAR (LTH14/mar models/mar.py, same module names): the masked encoder / decoder over the class buffer and the
    (img_size / vae_stride)^2 latent tokens, and the DiffLoss head per token. forward: the training loss of scaled
    latents (B, vae_embed_dim, h, w); sample_tokens: latents of that shape."""

    def __init__(self, cfg: MARConfig = MARConfig()):
        super().__init__()
        self.cfg = cfg
        W, T, S = cfg.width, cfg.vae_embed_dim, cfg.seq_len + cfg.buffer_size
        self.seq_len, self.buffer_size, self.token_embed_dim = cfg.seq_len, cfg.buffer_size, T
        self.class_emb = nn.Embedding(cfg.class_num, W)
        self.fake_latent = nn.Parameter(torch.zeros(1, W))  # the null class of CFG
        self.z_proj = Linear(T, W)
        self.z_proj_ln = nn.LayerNorm(W, eps=LN_EPS)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, S, W))
        if cfg.attn_dropout > 0:
            warnings.warn(f"MAR: attn_dropout={cfg.attn_dropout} is not applied: fastar's fused attention has no dropout "
                          f"on the attention probabilities (proj_dropout is applied)", stacklevel=2)
        block = lambda: Block(W, cfg.num_heads, proj_drop=cfg.proj_dropout)  # noqa: E731
        self.encoder_blocks = nn.ModuleList(block() for _ in range(cfg.depth))
        self.encoder_norm = nn.LayerNorm(W, eps=LN_EPS)
        self.decoder_embed = Linear(W, W)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, W))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, S, W))
        self.decoder_blocks = nn.ModuleList(block() for _ in range(cfg.depth))
        self.decoder_norm = nn.LayerNorm(W, eps=LN_EPS)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, cfg.seq_len, W))
        self.initialize_weights()
        self.diffloss = DiffLoss(T, W, cfg.diffloss_d, cfg.diffloss_w, cfg.num_sampling_steps)

    def initialize_weights(self):
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_mae_encoder(self, x_BLT, mask_BL, class_embedding_BC):
        """Class buffer + visible tokens only (every row has as many masked tokens) -> (B, 64 + visible, W)."""
        x = self.z_proj(x_BLT)
        B, _, W = x.shape
        x = torch.cat([class_embedding_BC[:, None].expand(B, self.buffer_size, W), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = torch.cat([mask_BL.new_zeros(B, self.buffer_size), mask_BL], dim=1) == 0
        x = x[keep].reshape(B, -1, W)
        for block in self.encoder_blocks:
            x = apply_block(block, self.cfg.grad_checkpointing, x)
        return self.encoder_norm(x)

    def forward_mae_decoder(self, x, mask_BL, rows_BL=None):
        """Visible rows back in place, mask_token elsewhere -> z (B, 256, W) per token, buffer stripped.
        rows_BL (B, 256) bool, as many per row (sampling): z[rows_BL] only, (count, W); on fastar's path the last
        block computes only those tokens' outputs (Block.forward_rows), the official code all of them."""
        x = self.decoder_embed(x)
        B, _, W = x.shape
        keep = torch.cat([mask_BL.new_zeros(B, self.buffer_size), mask_BL], dim=1) == 0
        padded = self.mask_token.to(x.dtype).expand(B, keep.shape[1], W).clone()
        padded[keep] = x.reshape(-1, W)
        x = padded + self.decoder_pos_embed_learned
        prune = rows_BL is not None and fast_path(x)
        for block in self.decoder_blocks[:-1] if prune else self.decoder_blocks:
            x = apply_block(block, self.cfg.grad_checkpointing, x)
        if not prune:
            z = self.decoder_norm(x)[:, self.buffer_size:] + self.diffusion_pos_embed_learned
            return z if rows_BL is None else z[rows_BL]
        index = rows_BL.nonzero()[:, 1].view(B, -1)  # row-major, as z[rows_BL]
        x = self.decoder_blocks[-1].forward_rows(x, index + self.buffer_size)
        return (self.decoder_norm(x) + self.diffusion_pos_embed_learned[0, index]).reshape(-1, W)

    def forward(self, latents_BChw, labels_B, generator=None):
        """Training loss of (already scaled) latents (B, C, h, w) and labels (B,): one mask ratio per batch from the
        truncated normal, a random order per image, the class dropped with label_drop_prob, and the head's loss
        on every token repeated diffusion_batch_mul times, averaged over the masked ones."""
        x, L, dtype = latents_BChw, self.seq_len, self.z_proj.weight.dtype
        h = math.isqrt(L)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0 \
                or tuple(x.shape[1:]) != (self.token_embed_dim, h, h) or x.dtype != dtype:
            raise ValueError(f"MAR.forward: latents_BChw must be (B >= 1, {self.token_embed_dim}, {h}, {h}) of the "
                             f"model's {dtype}, got "
                             + (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__))
        B, device = x.shape[0], x.device
        check_labels("MAR.forward", labels_B, B, self.class_emb.num_embeddings, device=self.class_emb.weight.device)
        x_BLT = latents_BChw.flatten(2).transpose(1, 2)  # patchify, patch_size 1
        class_embedding = self.class_emb(labels_B)
        drop = (torch.rand(B, generator=generator, device=rng_device(generator)) < self.cfg.label_drop_prob
                ).to(device, x_BLT.dtype)[:, None]
        class_embedding = drop * self.fake_latent + (1 - drop) * class_embedding
        num_masked = math.ceil(L * self.mask_ratio(generator))
        orders = torch.stack([torch.randperm(L, generator=generator, device=rng_device(generator))
                              for _ in range(B)]).to(device)
        mask = torch.zeros(B, L, device=device).scatter_(1, orders[:, :num_masked], 1.0)
        z = self.forward_mae_decoder(self.forward_mae_encoder(x_BLT, mask, class_embedding), mask)
        k = self.cfg.diffusion_batch_mul
        return self.diffloss(x_BLT.reshape(B * L, -1).repeat(k, 1), z.reshape(B * L, -1).repeat(k, 1),
                             mask.reshape(B * L).repeat(k), generator=generator)

    def mask_ratio(self, generator=None) -> float:
        """One draw of the truncated normal (loc 1, scale 0.25, on [mask_ratio_min, 1]) by inverting its CDF."""
        a = (self.cfg.mask_ratio_min - 1.0) / 0.25
        lo = 0.5 * math.erfc(-a / math.sqrt(2))  # Phi(a); Phi(0) = 0.5
        u = lo + (0.5 - lo) * torch.rand((), generator=generator, dtype=torch.float64, device=rng_device(generator))
        return float(1.0 + 0.25 * torch.special.ndtri(u))

    @torch.no_grad()
    def sample_tokens(self, bsz, num_iter=64, cfg=1.0, cfg_schedule="linear", labels=None, temperature=1.0,
                      generator=None, progress=False, precision="fp32"):
        """Official sampling: cosine mask schedule over a random order per image, Muse's linear CFG ramp.
        Orders come from `generator` (torch.randperm) where the official code uses numpy's global RNG.
        Returns latents (B, vae_embed_dim, img_size / vae_stride, img_size / vae_stride), (B, 16, 16, 16) for the
        released 256 px models (before the VAE's 1 / latent_scale, 0.2325 for KL-16).
        precision: "fp32", or "bf16": the transformer's products on bfloat16 operands (layers.bf16_products; its
        attention then runs on bfloat16 q, k, v) and the head's GEMMs in bfloat16 (diffusion_sample's bf16 mode);
        the residual stream, LayerNorms, the DDPM update and the tokens stay float32. The official code samples
        under fp16 autocast on GPUs. On a CPU without AMX-BF16 or AVX512-BF16 it runs slower than fp32 and warns
        (fastar.check_bf16_gemm).
        Agreement with fp32: tests/test_mar_model.py and benchmarks/bench_mar.py."""
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"sample_tokens: cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
        check_count("MAR.sample_tokens", "num_iter", num_iter)
        check_count("MAR.sample_tokens", "bsz", bsz)
        check_number("MAR.sample_tokens", "cfg", cfg)
        check_number("MAR.sample_tokens", "temperature", temperature, above=0)
        if labels is not None:
            check_labels("MAR.sample_tokens", labels, bsz, self.class_emb.num_embeddings,
                         device=self.class_emb.weight.device)
        if precision not in PRECISIONS:
            raise ValueError(f"sample_tokens: precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16":
            fastar.check_bf16_gemm("MAR.sample_tokens", self.fake_latent.device)
        # the transformer's Linears; the head reads its float32 weights itself (diffusion_sample's bf16 mode)
        with (bf16_products(self.z_proj, self.encoder_blocks, self.decoder_embed, self.decoder_blocks)
              if precision == "bf16" else contextlib.nullcontext()):
            return self._sample_tokens(bsz, num_iter, cfg, cfg_schedule, labels, temperature, generator, progress,
                                       precision)

    def _sample_tokens(self, bsz, num_iter, cfg, cfg_schedule, labels, temperature, generator, progress, precision):
        device, L = self.fake_latent.device, self.seq_len
        mask = torch.ones(bsz, L, device=device)
        tokens = torch.zeros(bsz, L, self.token_embed_dim, device=device, dtype=self.fake_latent.dtype)
        orders = torch.stack([torch.randperm(L, generator=generator, device=rng_device(generator)).to(device)
                              for _ in range(bsz)])
        steps = range(num_iter)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps)
        for step in steps:
            cur_tokens = tokens.clone()
            class_embedding = self.class_emb(labels) if labels is not None else self.fake_latent.expand(bsz, -1)
            if cfg != 1.0:
                tokens = torch.cat([tokens, tokens])
                class_embedding = torch.cat([class_embedding, self.fake_latent.expand(bsz, -1)])
                mask = torch.cat([mask, mask])
            # The next round keeps floor(L cos(pi/2 (step+1)/num_iter)) masked, at least 1, fewer than now.
            mask_len = math.floor(L * math.cos(math.pi / 2 * (step + 1) / num_iter))
            mask_len = max(1, min(int(mask[0].sum().item()) - 1, mask_len))
            mask_next = torch.zeros(bsz, L, device=device).scatter_(1, orders[:, :mask_len], 1.0)
            to_pred = mask[:bsz].bool() if step >= num_iter - 1 else mask[:bsz].bool() ^ mask_next.bool()
            rows = torch.cat([to_pred, to_pred]) if cfg != 1.0 else to_pred
            z = self.forward_mae_decoder(self.forward_mae_encoder(tokens, mask, class_embedding), mask, rows)
            mask = mask_next
            cfg_iter = 1 + (cfg - 1) * (L - mask_len) / L if cfg_schedule == "linear" else cfg
            if cfg_iter == 1.0:  # a cfg within rounding of 1: the head still takes [cond ; uncond] rows
                cfg_iter = math.nextafter(1.0, cfg)
            cur_tokens[to_pred] = self.diffloss.sample(z, temperature, cfg_iter if cfg != 1.0 else 1.0,
                                                       generator=generator, precision=precision)
            tokens = cur_tokens.clone()
        h = int(math.isqrt(L))
        return tokens.reshape(bsz, h, h, self.token_embed_dim).permute(0, 3, 1, 2)  # unpatchify, patch_size 1


def mar(size="base", **overrides) -> MAR:
    """MAR-B / L / H as the released checkpoints build them (SIZES), fields overridable."""
    if size not in SIZES:
        raise ValueError(f"mar: size must be one of {tuple(SIZES)}, got {size!r}")
    return MAR(dataclasses.replace(SIZES[size], **overrides))


# The official MAR.__init__'s defaults for the keywords its builders take (models/mar.py; main_mar.py passes all).
OFFICIAL_DEFAULTS = dict(img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, mask_ratio_min=0.7,
                         label_drop_prob=0.1, class_num=1000, attn_dropout=0.1, proj_dropout=0.1, buffer_size=64,
                         diffloss_d=3, diffloss_w=1024, num_sampling_steps="100", diffusion_batch_mul=4,
                         grad_checkpointing=False)


def official(size, **kwargs) -> MAR:
    """MAR of `size` built as the official mar_base / mar_large / mar_huge(**kwargs): their keywords and defaults
    (OFFICIAL_DEFAULTS: note diffloss_d 3, the released checkpoints use 6 / 8 / 12 as main_mar.py is called with),
    so `mar_base(**same_kwargs)` builds the same modules as the official call and loads its checkpoint strictly."""
    unknown = sorted(set(kwargs) - set(OFFICIAL_DEFAULTS))
    if unknown:
        raise TypeError(f"mar_{size}: unexpected keyword arguments {unknown}; the official builders take "
                        f"{sorted(OFFICIAL_DEFAULTS)}")
    kw = {**OFFICIAL_DEFAULTS, **kwargs}
    if kw.pop("patch_size") != 1:
        raise ValueError(f"mar_{size}: patch_size must be 1 (every released MAR; the tokens are the KL-16 latents), "
                         f"got {kwargs['patch_size']!r}")
    steps = kw.pop("num_sampling_steps")
    try:
        kw["num_sampling_steps"] = int(steps)
    except (TypeError, ValueError):
        raise ValueError(f"mar_{size}: num_sampling_steps must be a step count such as '100' (the official "
                         f"respacing string), got {steps!r}") from None
    return mar(size, **kw)


def mar_base(**kwargs) -> MAR:
    """The official mar_base(**kwargs): width 768, depth 12, 12 heads."""
    return official("base", **kwargs)


def mar_large(**kwargs) -> MAR:
    """The official mar_large(**kwargs): width 1024, depth 16, 16 heads."""
    return official("large", **kwargs)


def mar_huge(**kwargs) -> MAR:
    """The official mar_huge(**kwargs): width 1280, depth 20, 16 heads."""
    return official("huge", **kwargs)
