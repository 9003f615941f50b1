"""VAR: visual autoregressive modeling by next-scale prediction (Tian et al. 2024; FoundationVision/VAR models/var.py).

The transformer predicts the token map of scale k from the cumulative VQVAE features of scales < k, all tokens of a
scale at once: block-causal attention in training, a KV cache over the earlier scales in inference. Module and
buffer names equal the official checkpoint's keys, so its state dicts load with strict=True.
"""
import itertools
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn

import fastar
from fastar.models.checks import check_count, check_labels, check_number
from fastar.models.layers import Linear
from fastar.models.var.basic_var import AdaLNBeforeHead, AdaLNSelfAttn, KVCache, SharedAdaLin
from fastar.models.var.helpers import gumbel_softmax_with_rng, sample_with_top_k_top_p_

PRECISIONS = ("fp32", "bf16")  # sampling modes: bf16 runs the blocks' attention and FFN on bfloat16 operands


@dataclass
class VARConfig:
    depth: int = 16  # transformer blocks; width 64*depth and depth heads of 64 channels, as build_vae_var sizes them
    patch_nums: tuple = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # side of each scale's token map; the last = VAE latent side
    vocab_size: int = 4096  # VQVAE codebook size V: classes of the head
    Cvae: int = 32  # VQVAE latent channels: word_embed maps these feature vectors, not token ids
    num_classes: int = 1000  # ImageNet; class_emb row num_classes is the null class of CFG
    mlp_ratio: float = 4.0  # FFN hidden = 4C
    norm_eps: float = 1e-6  # LayerNorm eps of the released models
    cond_drop_rate: float = 0.1  # label dropout in training: teaches the null class that CFG subtracts
    drop_path_rate: float = -1.0  # stochastic depth of the last block; < 0: 0.1*depth/24 as the released models
    shared_aln: bool = False  # one AdaLN projection shared by all blocks (VAR-d36-s)

    def __post_init__(self):
        for name in ("depth", "vocab_size", "Cvae", "num_classes"):
            check_count("VARConfig", name, getattr(self, name))
        pns = self.patch_nums
        if not isinstance(pns, (list, tuple)) or not pns or any(
                isinstance(pn, bool) or not isinstance(pn, int) or pn < 1 for pn in pns) or max(pns) > pns[-1]:
            raise ValueError(f"VARConfig: patch_nums must be a non-empty tuple of positive ints, none above the last "
                             f"(the VQVAE latent's side), got {pns!r}")
        check_number("VARConfig", "mlp_ratio", self.mlp_ratio, above=0)
        check_number("VARConfig", "norm_eps", self.norm_eps, above=0)
        check_number("VARConfig", "cond_drop_rate", self.cond_drop_rate, low=0, high=1)

    @property
    def C(self):
        return 64 * self.depth


class VAR(nn.Module):
    """VAR's class-conditional next-scale transformer (FoundationVision/VAR models/var.py, same module names): forward
    gives teacher-forced logits (B, L, V) over the L = sum(pn^2) tokens of all scales; autoregressive_infer_cfg
    samples images (B, 3, H, W) scale by scale through `vae` (a VQVAE) and its quantizer."""

    def __init__(self, vae, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        C, depth = cfg.C, cfg.depth
        self.C, self.Cvae, self.num_classes, self.patch_nums = C, cfg.Cvae, cfg.num_classes, tuple(cfg.patch_nums)
        self.L = sum(pn * pn for pn in self.patch_nums)
        # a tuple, not a submodule: the VQVAE's weights are a separate checkpoint, not keys of VAR's state dict
        self.vae_proxy = (vae,)
        init_std = math.sqrt(1 / C / 3)

        # inputs: class embedding (start token and AdaLN condition), feature embedding, scale and position
        self.word_embed = Linear(cfg.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        for p in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(p, mean=0, std=init_std)

        # blocks
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        dpr = cfg.drop_path_rate if cfg.drop_path_rate >= 0 else 0.1 * depth / 24
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(C, C, depth, cfg.mlp_ratio, cfg.norm_eps, dpr * i / max(depth - 1, 1), cfg.shared_aln)
            for i in range(depth))

        # scale id of every position, and the dense block-causal bias the official code attends with. The bias is
        # kept only because the checkpoints hold it; attention takes fastar's block-causal mask (no L x L tensor).
        lvl_1L = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L)
        self.register_buffer("lvl_1L", lvl_1L)
        bias = torch.where(lvl_1L[:, :, None] >= lvl_1L[:, None, :], 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", bias.view(1, 1, self.L, self.L).contiguous())

        # head
        self.head_nm = AdaLNBeforeHead(C, C, cfg.norm_eps)
        self.head = Linear(C, cfg.vocab_size)

    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1):
        """VAR's init: trunc-normal init_std (< 0: sqrt(1/3C)), residual projections / sqrt(2 depth), small AdaLN
        gammas."""
        init_std = init_std if init_std >= 0 else math.sqrt(1 / self.C / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.head.weight.mul_(init_head)
            self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
            for b in self.blocks:
                b.attn.proj.weight.div_(math.sqrt(2 * len(self.blocks)))
                b.ffn.fc2.weight.div_(math.sqrt(2 * len(self.blocks)))
                gss = b.ada_gss.view(6, self.C) if b.shared_aln else b.ada_lin[-1].weight.view(6, self.C, -1)
                gss[2:].mul_(init_adaln)  # scale and shift chunks
                gss[:2].mul_(init_adaln_gamma)  # gamma chunks: blocks start near identity

    def get_logits(self, h_BLC, head_ada_B12C):
        return self.head(self.head_nm(h_BLC, head_ada_B12C))

    def forward(self, label_B, x_BLCv_wo_first_l):
        """Teacher-forced logits (B, L, V): label_B (B,) int64; x_BLCv_wo_first_l (B, L-1, Cvae) the VQVAE's
        idxBl_to_var_input. In training, labels are replaced by the null class with probability cond_drop_rate."""
        x, dtype = x_BLCv_wo_first_l, self.word_embed.weight.dtype
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != (self.L - 1, self.Cvae) \
                or x.dtype != dtype:
            raise ValueError(f"VAR.forward: x_BLCv_wo_first_l must be (B, L - 1, Cvae) = (B, {self.L - 1}, "
                             f"{self.Cvae}) of the model's {dtype}, got "
                             + (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__))
        B = x.shape[0]
        check_labels("VAR.forward", label_B, B, self.num_classes, null_class=True, device=self.class_emb.weight.device)
        if self.training:
            drop = torch.rand(B, device=label_B.device) < self.cfg.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        sos = cond_BD = self.class_emb(label_B)
        x_BLC = torch.cat((sos.unsqueeze(1) + self.pos_start, self.word_embed(x_BLCv_wo_first_l)), dim=1)
        x_BLC = x_BLC + self.lvl_embed(self.lvl_1L) + self.pos_1LC
        cond_BD_or_gss = self.shared_ada_lin(cond_BD)
        mask = fastar.ops.AttentionMask.block_causal([pn * pn for pn in self.patch_nums])
        for b in self.blocks:
            x_BLC = b(x_BLC, mask=mask, cond_BD_or_gss=cond_BD_or_gss)
        return self.get_logits(x_BLC, self.head_nm.ada(cond_BD))

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0,
                                 more_smooth=False, precision="fp32", progress=False):
        """Samples B images (B, 3, H, W) in [0, 1], scale by scale.

        label_B: (B,) int64, an int for all (< 0: the null class), or None for uniform random classes. g_seed seeds
        every random draw. CFG runs the conditional and null batches as one 2B batch, with a guidance that ramps
        from 0 at the first scale to cfg at the last. top_k / top_p filter the logits (0: off); more_smooth
        replaces the sampled codes by a Gumbel-softmax mixture of codes (for viewing, not for FID).
        progress: a bar over the scales (tqdm, left off the screen when done).
        precision: "fp32", or "bf16": the blocks' attention and FFN weights (copies kept, see with_gemm_dtype) and
        their GEMM operands in bfloat16 with float32 accumulation, the KV cache and fastar's attention in bfloat16,
        the VQVAE decoder under bfloat16 autocast (its convolutions and attention); the residual stream, LayerNorm,
        AdaLN, the head (logits) and the quantizer stay float32.
        On a CPU without AMX-BF16 or AVX512-BF16 it runs slower than fp32 (emulated bf16 GEMMs) and warns
        (fastar.check_bf16_gemm). Agreement with fp32: tests/test_var_bf16.py and the README.
        """
        op = "VAR.autoregressive_infer_cfg"
        if precision not in PRECISIONS:
            raise ValueError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")
        check_count(op, "B", B, low=0)
        check_number(op, "cfg", cfg)
        check_count(op, "top_k", top_k, low=0)
        check_number(op, "top_p", top_p, low=0.0, high=1.0)  # 0: off, as officially
        if g_seed is not None and (isinstance(g_seed, bool) or not isinstance(g_seed, int)
                                   or not -2**63 <= g_seed < 2**64):  # the seeds torch's generators take
            raise ValueError(f"{op}: g_seed must be None or an int in [-2**63, 2**64), got {g_seed!r}")
        device, SN = self.lvl_1L.device, len(self.patch_nums)
        if precision == "bf16":
            fastar.check_bf16_gemm("VAR.autoregressive_infer_cfg", device)
        rng = None if g_seed is None else torch.Generator(device).manual_seed(g_seed)
        if label_B is None:
            label_B = torch.randint(self.num_classes, (B,), generator=rng, device=device)
        elif isinstance(label_B, int):
            label_B = torch.full((B,), self.num_classes if label_B < 0 else label_B, device=device)
        check_labels("VAR.autoregressive_infer_cfg", label_B, B, self.num_classes, null_class=True, device=device)
        vae, quant = self.vae_proxy[0], self.vae_proxy[0].quantize

        sos = cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))  # (2B, C)
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)
        next_token_map = sos.unsqueeze(1) + self.pos_start + lvl_pos[:, :1]  # (2B, 1, C)
        # AdaLN parameters depend on the class only: computed once here, not at every scale
        cond_BD_or_gss = self.shared_ada_lin(cond_BD)
        ada = [b.ada(cond_BD_or_gss) for b in self.blocks]
        head_ada = self.head_nm.ada(cond_BD)
        gemm_dtype = torch.bfloat16 if precision == "bf16" else sos.dtype
        blocks = [with_gemm_dtype(b, gemm_dtype) for b in self.blocks]
        caches = [KVCache(2 * B, b.attn.num_heads, self.L, b.attn.head_dim, like=sos.to(gemm_dtype))
                  for b in self.blocks]

        # channels_last: the layout the quantizer ops update in place
        H = self.patch_nums[-1]
        f_hat = sos.new_zeros(B, self.Cvae, H, H).to(memory_format=torch.channels_last)
        cur_L = 0
        scales = enumerate(self.patch_nums)
        if progress:
            from tqdm import tqdm
            scales = tqdm(scales, total=SN, desc="VAR scales", leave=False)
        for si, pn in scales:
            ratio = si / (SN - 1)
            cur_L += pn * pn
            x_BLC = next_token_map
            for b, ada_B16C, cache in zip(blocks, ada, caches):
                x_BLC = b(x_BLC, ada_B16C, cache=cache)
            logits_2BlV = self.get_logits(x_BLC, head_ada)
            t = cfg * ratio
            logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
            idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
            if more_smooth:  # tau anneals as in MaskGIT
                tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                h_BlC = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau, rng) @ quant.embedding.weight
            else:
                h_BlC = quant.embedding(idx_Bl)
            h_BChw = h_BlC.transpose(1, 2).reshape(B, self.Cvae, pn, pn)
            f_hat, next_BChw = quant.get_next_autoregressive_input(si, SN, f_hat, h_BChw)
            if si != SN - 1:  # the next scale's input: its area-downsampled f_hat, embedded, for both CFG halves
                next_BlC = self.word_embed(next_BChw.flatten(2).transpose(1, 2))
                next_token_map = (next_BlC + lvl_pos[:, cur_L:cur_L + self.patch_nums[si + 1] ** 2]).repeat(2, 1, 1)
        if precision == "bf16":  # the VQVAE decoder's convolutions and attention in bfloat16 too
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return vae.fhat_to_img(f_hat).float().add_(1).mul_(0.5)
        return vae.fhat_to_img(f_hat).add_(1).mul_(0.5)


_gemm_copies = weakref.WeakKeyDictionary()  # block -> (key of its weights, their copies in a GEMM dtype)


def with_gemm_dtype(block, dtype):
    """block's forward (x_BLC, ada_B16C, cache=) with its attention and FFN weights, the GEMMs' operands, in dtype
    (block itself when they already are); the module itself is untouched. The copies are kept while the block lives
    and its weights stay the same, unmodified tensors (key: dtype, data pointers, version counters), so that many
    sample calls convert once: in bf16 they hold half the float32 size of those weights."""
    if block.ffn.fc1.weight.dtype == dtype:
        return block
    tensors = {k: t for k, t in itertools.chain(block.named_parameters(), block.named_buffers())
               if k.startswith(("attn.", "ffn."))}
    key = (dtype, tuple((t.data_ptr(), t._version) for t in tensors.values()))
    cached = _gemm_copies.get(block)
    if cached is None or cached[0] != key:
        cached = _gemm_copies[block] = key, {k: t.to(dtype) for k, t in tensors.items()}
    weights = cached[1]
    return lambda *args, **kwargs: torch.func.functional_call(block, weights, args, kwargs)
