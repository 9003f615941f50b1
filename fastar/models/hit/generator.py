"""HiT's generator (Zhao et al., NeurIPS 2021, "Improved Transformer for High-Resolution GANs"), after the
official TensorFlow code (google-research/hit-gan models/generators.py, models/layers.py): facts only, our code.

z -> Dense -> an 8 x 8 map; stages at 8, 16, 32, ... px, each: + a per-pixel position embedding, one
cross-attention block to 16 latent tokens made from z (self-modulation), then N multi-axis self-attention blocks
(first half of the heads inside b x b blocks, second half across blocks: fastar.ops.multi_axis_attention, straight
from the image layout, no block_images copy) or N MLP blocks at 128 px and above; MLP-only stages add SkipToRGB;
PixelShuffle between stages. Tensors are NHWC (B, H, W, C) as in the TF code, so that weights keep their meaning:
PixelShuffle is TF's depth_to_space (input channel (dy * 2 + dx) * C' + c goes to pixel (2y + dy, 2x + dx)),
not torch's pixel_shuffle (c * 4 + dy * 2 + dx). Norms are BatchNorm (the official default), GELU MLPs, multi-query
K/V (one key/value head shared by all heads).

Without autograd (sampling, evaluation) the same math runs in fewer passes over memory: each BatchNorm folded into
the Dense layers that read it (BatchNorm.fold), q, k and v from one GEMM, the MLPs up to 128 wide in one kernel
(fastar.ops.mlp: the hidden activations stay in cache), the cross-attention blocks as that kernel too (the query
and output projections folded with the latents' keys and values, a softmax in place of the GELU:
MultiAxisAttention.cross_folded), wider MLPs (and off the CPU backend the cross-attention) in row chunks of
~16 MB, residuals written over the block's own input, the Dense of a pixel shuffle before its copy and the next
stage's position embedding added in that copy, SkipToRGB's upsampling as a broadcast. Fresh full-size tensors
(page faults on every allocation past glibc's mmap threshold) were 40% of a HiT-256 forward's CPU time. With
autograd each BatchNorm runs as its module, then the Dense layers; the one QKV GEMM, the pixel shuffle's order and
the broadcast upsampling stay.
"""
from dataclasses import dataclass

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar
from fastar import _backend
from fastar.models.checks import check_count
from fastar.models.layers import Linear, linear, linear_add, linear_gelu, onednn_declines, onednn_inference


@dataclass(frozen=True)
class HiTConfig:
    output_size: int = 256
    latent_dim: int = 512
    num_layers: tuple = (2, 2, 2, 2, 1, 1)  # per stage, after its cross-attention block
    channels: tuple = (512, 512, 256, 128, 64, 64)
    heads: tuple = (16, 8, 4, 4, 4, 4)
    block_sizes: tuple = (4, 4, 8, 8, None, None)  # None: MLP-only stage (no self-attention)
    multi_query: bool = True  # the official attn_type="multi_query"

    def __post_init__(self):
        check_count("HiTConfig", "latent_dim", self.latent_dim)
        n = len(self.channels)
        if n < 1 or not len(self.num_layers) == len(self.heads) == len(self.block_sizes) == n:
            raise ValueError(f"HiTConfig: num_layers, channels, heads and block_sizes need one entry per stage (>= 1), "
                             f"got {len(self.num_layers)}, {n}, {len(self.heads)}, {len(self.block_sizes)}")
        for i in range(n):
            check_count("HiTConfig", f"channels[{i}]", self.channels[i])
            check_count("HiTConfig", f"heads[{i}]", self.heads[i])
            check_count("HiTConfig", f"num_layers[{i}]", self.num_layers[i], low=0)
            if self.block_sizes[i] is not None:
                check_count("HiTConfig", f"block_sizes[{i}]", self.block_sizes[i])
            if self.channels[i] % self.heads[i]:
                raise ValueError(f"HiTConfig: heads[{i}] = {self.heads[i]} must divide channels[{i}] = "
                                 f"{self.channels[i]}")


# The one configuration per output size of the official code (HiTGenerator.__init__).
CONFIGS = {
    128: HiTConfig(128, 256, (2, 2, 2, 2, 2), (512, 512, 256, 128, 128), (16, 8, 4, 4, 4), (4, 4, 8, 8, None)),
    256: HiTConfig(),
    1024: HiTConfig(1024, 512, (2, 2, 2, 2, 1, 1, 1, 1), (512, 512, 256, 128, 64, 64, 32, 32),
                    (16, 8, 4, 4, 4, 4, 4, 4), (4, 4, 8, 8, None, None, None, None)),
}
# A 32 px model for scikit-learn's digits (`python -m fastar train hit`): attention at 8 and 16 px (head dim 32, one
# the CUDA kernels are built for), MLP at 32. Widths C, C / 4, C / 16 so that PixelShuffle needs no Dense: with the
# official TruncatedNormal(0.02) init a Dense of fan-in n scales by 0.02 sqrt(n), and the former (128, 64, 32) shrank
# the z-carrying map ~100x by 32 px, under the z-blind position embeddings: 5-8% of the output's variance varied
# with z at init (the official 128 px config: 65%; this one: 95%).
TINY = HiTConfig(32, 64, (1, 1, 1), (256, 64, 16), (8, 2, 4), (4, 4, None))


def trunc_normal_(t):
    """TF's TruncatedNormal(stddev=0.02): resampled beyond 2 standard deviations."""
    return nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04)


class Dense(Linear):
    """Keras Dense as the generator builds it: TruncatedNormal(0.02) kernel, zero bias."""

    def reset_parameters(self):
        trunc_normal_(self.weight)
        nn.init.zeros_(self.bias)


class BatchNorm(nn.BatchNorm1d):
    """Keras BatchNormalization on the last axis of any tensor (statistics over all the other axes); Keras's
    epsilon 1e-3 and momentum 0.99 (torch's 0.01)."""

    def __init__(self, dim):
        super().__init__(dim, eps=1e-3, momentum=0.01)

    def forward(self, x):
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)

    def fold(self, x2, *denses):
        """The Dense layers that read norm(x2) as one (weight, bias) that reads x2 (N, C) itself, without autograd:
        Dense(norm(x)) = x (W diag(s))^T + (W t + b), s = gamma / sqrt(var + eps), t = beta - mean s (torch's CPU
        BatchNorm computes norm(x) as x s + t too), so no normalized copy of x is written. In training mode the
        statistics are the batch's, with the running ones and the counter updated as forward() updates them."""
        if self.training:
            self.num_batches_tracked.add_(1)
            mean, var = torch.batch_norm_update_stats(x2, self.running_mean, self.running_var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        s = self.weight * (var + self.eps).rsqrt()
        w, b = (torch.cat([d.weight for d in denses]), torch.cat([d.bias for d in denses])) if len(denses) > 1 \
            else (denses[0].weight, denses[0].bias)
        return w * s, torch.addmv(b, w, self.bias - mean * s)


def norm_dense(norm, x2, *denses):
    """Dense layers (concatenated outputs) of norm(x2), x2 (N, C): folded into one GEMM on x2 without autograd,
    the modules as they are with it."""
    if not torch.is_grad_enabled():
        w, b = norm.fold(x2, *denses)
        return linear(x2, w, b)
    xn = norm(x2)
    if len(denses) == 1:
        return denses[0](xn)
    return linear(xn, torch.cat([d.weight for d in denses]), torch.cat([d.bias for d in denses]))


def dense_residual(dense, h2, x2, inplace=False):
    """x2 + dense(h2), written once: the residual plus the bias, then the product accumulated into it; over x2
    itself with inplace (without autograd only); on oneDNN without autograd one GEMM with the add in its epilogue."""
    if onednn_inference(h2, dense.weight, dense.bias):
        return linear_add(h2, dense.weight, dense.bias, x2)
    if torch.is_grad_enabled() and onednn_declines(h2, dense.weight) is None:
        return x2 + linear(h2, dense.weight, dense.bias)
    out = x2.add_(dense.bias) if inplace and not torch.is_grad_enabled() else x2 + dense.bias
    return out.addmm_(h2, dense.weight.t())


class PositionEmbedding(nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.embedding_weight = nn.Parameter(trunc_normal_(torch.empty(1, *shape)))

    def forward(self, x):
        return x + self.embedding_weight


# Rows per pass of the per-pixel work without autograd (an MLP's GEMM -> GELU -> GEMM, a cross-attention): ~16 MB
# of the widest intermediate, in one buffer reused from the heap (under glibc's 32 MB mmap ceiling) where a whole
# (N, 4C) tensor would be a fresh mapping, page faults and all (40% of a HiT-256 forward's CPU time before). HiT-256,
# B 2, 1 thread: 1, 4 and 16 MB cost the same CPU time; at 2 threads on a loaded machine fewer, larger chunks win
# (every parallel region waits for a descheduled thread).
CHUNK_BYTES = 16 << 20


def chunk_rows(width, x):
    return max(1, CHUNK_BYTES // (width * x.element_size()))


# Widths up to which the MLP blocks run fastar.ops.mlp without autograd: on an AMD Zen 4, 2 threads, at HiT's stage
# shapes it ran 1.16-2.52x (C 32, 64) and 1.10x (C 128) oneDNN's two GEMMs with their epilogues
# (benchmarks/bench_mlp.py, whole stages); in diagnostic scripts, 1.2-1.6x at C 64 in 16 MB row chunks (as below)
# and ~1x at C 256.
MLP_KERNEL_WIDTH = 128


def mlp_kernel(x2, width=MLP_KERNEL_WIDTH):
    """Whether a block without autograd runs fastar.ops.mlp on x2 (N, C): float32 on the CPU backend, C up to `width`
    (None: any; the torch backend keeps the official formulation's GEMMs and attention)."""
    return ((width is None or x2.shape[-1] <= width) and x2.dtype == torch.float32 and x2.device.type == "cpu"
            and _backend.active(x2.device) == "cpu")


class MLP(nn.Module):
    """x + Dense(C)(gelu(Dense(4C)(norm(x)))), pre-norm with its own residual."""

    def __init__(self, dim, expansion=4):
        super().__init__()
        self.norm_layer = BatchNorm(dim)
        self.fc1, self.fc2 = Dense(dim, dim * expansion), Dense(dim * expansion, dim)

    def forward(self, x, inplace=False):
        """inplace: without autograd, write the result over x (a block's own intermediate)."""
        x2 = x.reshape(-1, x.shape[-1])
        if torch.is_grad_enabled():
            return dense_residual(self.fc2, self.fc1.forward_gelu(self.norm_layer(x2)), x2).view(x.shape)
        # The norm folded into fc1, the rows in chunks, the residual written once. On oneDNN the GELU and the
        # residual ride in the GEMMs' epilogues.
        w1, b1 = self.norm_layer.fold(x2, self.fc1)
        w2, b2 = self.fc2.weight, self.fc2.bias
        if mlp_kernel(x2):  # one kernel, the hidden activations in cache
            return fastar.ops.mlp(x2, w1, b1, w2, b2, x2, out=x2 if inplace else None).view(x.shape)
        rows, fused = chunk_rows(w1.shape[0], x2), onednn_inference(x2, w1, b1)
        if fused and rows >= x2.shape[0]:
            return linear_add(linear_gelu(x2, w1, b1), w2, b2, x2).view(x.shape)
        out = x2 if inplace else torch.empty_like(x2)
        h = None if fused else x2.new_empty(min(rows, x2.shape[0]), w1.shape[0])
        for r in range(0, x2.shape[0], rows):
            xr = x2[r:r + min(rows, x2.shape[0] - r)]
            if fused:
                out[r:r + len(xr)] = linear_add(linear_gelu(xr, w1, b1), w2, b2, xr)
            else:
                hn = torch.ops.aten.gelu_(torch.addmm(b1, xr, w1.t(), out=h[:len(xr)]))
                torch.add(xr, b2, out=out[r:r + len(xr)]).addmm_(hn, w2.t())
        return out.view(x.shape)


class MultiAxisAttention(nn.Module):
    """Query C -> (heads, C / heads); key and value kv_dim -> (1 or heads, C / heads); output back to C.
    Self-attention (latents None): multi-axis over the image. Cross-attention: every pixel to the latent tokens."""

    def __init__(self, dim, heads, kv_dim=None, multi_query=True):
        super().__init__()
        self.heads, self.key_dim = heads, dim // heads
        kv_heads = 1 if multi_query else heads
        self.query_dense = Dense(dim, heads * self.key_dim)
        self.key_dense = Dense(kv_dim or dim, kv_heads * self.key_dim)
        self.value_dense = Dense(kv_dim or dim, kv_heads * self.key_dim)
        self.output_dense = Dense(heads * self.key_dim, dim)

    def forward(self, x, norm, block_size=None, latents=None, inplace=False):
        """x + attention(norm(x)[, latents]): x (B, H, W, C), norm the block's BatchNorm (folded into the
        projections without autograd: norm_dense). inplace: without autograd, write the result over x."""
        B, H, W, C = x.shape
        x2, D = x.reshape(-1, C), self.key_dim
        if latents is None:  # q, k and v from one GEMM, read in place by the kernel (any row stride)
            qkv = norm_dense(norm, x2, self.query_dense, self.key_dense, self.value_dense)
            q, k, v = qkv.split([self.query_dense.out_features, self.key_dense.out_features,
                                 self.value_dense.out_features], 1)
            out = fastar.ops.multi_axis_attention(*(t.view(B, H, W, -1, D) for t in (q, k, v)), block_size)
            return dense_residual(self.output_dense, out.view(-1, C), x2, inplace).view(x.shape)
        L = latents.shape[1]
        k, v = (d(latents).view(B, L, -1, D).transpose(1, 2) for d in (self.key_dense, self.value_dense))
        if torch.is_grad_enabled():
            out = self.cross(norm_dense(norm, x2, self.query_dense).view(B, H * W, C), k, v)
            return dense_residual(self.output_dense, out.view(-1, C), x2).view(x.shape)
        # Without autograd, the pixels of each image in chunks: projection, attention and output in cache.
        w, b = norm.fold(x2, self.query_dense)
        x3 = x2.view(B, H * W, C)
        out = x3 if inplace else torch.empty_like(x3)
        if mlp_kernel(x2, width=None):
            return self.cross_folded(x3, w, b, k, v, out).view(x.shape)
        rows, wo, bo = chunk_rows(C, x2), self.output_dense.weight, self.output_dense.bias
        for i in range(B):
            for r in range(0, H * W, rows):
                xr = x3[i, r:r + rows]
                o = self.cross(linear(xr, w, b)[None], k[i:i + 1], v[i:i + 1])
                if onednn_inference(o, wo, bo):
                    out[i, r:r + rows] = linear_add(o[0], wo, bo, xr)
                else:
                    torch.add(xr, bo, out=out[i, r:r + rows]).addmm_(o[0], wo.t())
        return out.view(x.shape)

    def cross_folded(self, x3, w, b, k, v, out):
        """out = x3 + the cross-attention (x3 (B, n, C), the query's BatchNorm folded into w, b; k, v (B, 1 or heads,
        L, D)), per image as one fastar.ops.mlp with a softmax over each head's L scores: head h's scores
        (x w_h^T + b_h) k_h^T / sqrt(D) are x A_h^T + c_h with A_h = k_h w_h / sqrt(D) (L x C) and c_h = k_h b_h /
        sqrt(D), and its share of the output Dense, (p_h v_h) Wo_h^T, is p_h M_h^T with M_h = Wo_h v_h^T (C x L): two
        products of heads L columns (64 to 256 in HiT) where the query and output projections had C (64 to 512), and
        the scores never leave the cache."""
        B, n, C = x3.shape
        heads, D, L = self.heads, self.key_dim, k.shape[2]
        wq, bq = w.view(heads, D, C), b.view(heads, D)
        wo = self.output_dense.weight.view(C, heads, D)
        for i in range(B):
            kh, vh = k[i].expand(heads, L, D), v[i].expand(heads, L, D)
            a = torch.einsum("hld,hdc->hlc", kh, wq).reshape(heads * L, C) * D ** -0.5
            c = torch.einsum("hld,hd->hl", kh, bq).reshape(heads * L) * D ** -0.5
            m = torch.einsum("chd,hld->chl", wo, vh).reshape(C, heads * L)
            fastar.ops.mlp(x3[i], a, c, m, self.output_dense.bias, x3[i], out=out[i], softmax_group=L)
        return out

    def cross(self, q, k, v):
        """Attention of q (B, n, C) (n pixels) to the latents' k, v (B, 1 or heads, L, D) -> (B, n, C)."""
        B, n, C = q.shape
        if k.shape[1] == 1:  # multi-query: every (pixel, head) is a query row of one head, no transposes
            return fastar.ops.attention(q.reshape(B, 1, n * self.heads, self.key_dim), k, v).view(B, n, C)
        q = q.view(B, n, self.heads, self.key_dim).transpose(1, 2)
        return fastar.ops.attention(q, k, v).transpose(1, 2).reshape(B, n, C)


class Block(nn.Module):
    """x + attention(norm(x)[, latents]), then MLP; the latents are normalized once, by the embedding."""

    def __init__(self, dim, heads, block_size=None, kv_dim=None, multi_query=True):
        super().__init__()
        self.block_size = block_size
        self.norm = BatchNorm(dim)
        self.attention_layer = MultiAxisAttention(dim, heads, kv_dim, multi_query)
        self.mlp_block = MLP(dim)

    def forward(self, x, latents=None, inplace=False):
        """inplace: without autograd, write the result over x."""
        x = self.attention_layer(x, self.norm, self.block_size, latents, inplace)
        return self.mlp_block(x, inplace=True)


class PixelShuffle(nn.Module):
    """TF depth_to_space(2) on NHWC, then Dense to the next stage's width when C / 4 differs."""

    def __init__(self, dim, out_dim):
        super().__init__()
        self.dense_layer = Dense(dim // 4, out_dim) if dim // 4 != out_dim else None

    def forward(self, x, position=None):
        """x (B, H, W, C) -> (B, 2H, 2W, out_dim), plus the next stage's position embedding (1, 2H, 2W, out_dim)
        when given. The Dense acts per pixel, so it runs before the shuffle, on x's own layout; the shuffle's copy
        is the addition of the embedding."""
        B, H, W, C = x.shape
        x = x.view(B, H, W, 4, C // 4)
        if self.dense_layer is not None:
            x = self.dense_layer(x)
        x = x.view(B, H, W, 2, 2, -1).permute(0, 1, 3, 2, 4, 5)
        if position is not None:  # the embedding first: the sum takes its (contiguous) layout
            x = position.view(1, H, 2, W, 2, -1) + x
        return x.reshape(B, 2 * H, 2 * W, -1)


class SkipToRGB(nn.Module):
    """Dense(3)(norm(x)) plus the previous stage's RGB, nearest-upsampled x2."""

    def __init__(self, dim, out_dim=3):
        super().__init__()
        self.norm = BatchNorm(dim)
        self.dense = Dense(dim, out_dim)

    def forward(self, x, skip=None):
        B, H, W, C = x.shape
        rgb = norm_dense(self.norm, x.reshape(-1, C), self.dense)
        if skip is not None:  # nearest upsampling as a broadcast, never materialized
            rgb.view(B, H // 2, 2, W // 2, 2, -1).add_(skip.view(B, H // 2, 1, W // 2, 1, -1))
        return rgb.view(B, H, W, -1)


class Stage(nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        C, res, b = cfg.channels[i], 8 * 2 ** i, cfg.block_sizes[i]
        self.position_embedding = PositionEmbedding(res, res, C)
        self.cross_block = Block(C, cfg.heads[i], kv_dim=cfg.channels[0], multi_query=cfg.multi_query)
        self.layers = nn.ModuleList(MLP(C) if b is None else Block(C, cfg.heads[i], b, multi_query=cfg.multi_query)
                                    for _ in range(cfg.num_layers[i]))
        self.to_rgb = SkipToRGB(C) if b is None else None

    def forward(self, x, latents, images, inplace=False):
        """x already carries the position embedding (added by the previous stage's PixelShuffle). inplace:
        without autograd, the blocks write over x."""
        x = self.cross_block(x, latents, inplace)
        for layer in self.layers:  # x is now the cross block's own output: the layers write over it
            x = layer(x, inplace=True)
        return x, (self.to_rgb(x, images) if self.to_rgb is not None else images)


class HiTGenerator(nn.Module):
    """HiT's generator (hit-gan models/generators.py, HiTGenerator): latents z (B, latent_dim) -> a Dense to 8 x 8,
    then stages from 8 px, each after the first doubling the side, up to output_size: cross-attention to the latents,
    then num_layers multi-axis attention blocks (MLP-only where block_sizes is None). forward: images (B, 3, S, S);
    sample: clipped to [-1, 1]."""

    def __init__(self, cfg: HiTConfig):
        super().__init__()
        n = len(cfg.channels)
        if 8 * 2 ** (n - 1) != cfg.output_size or cfg.block_sizes[-1] is not None:
            raise ValueError(f"HiTGenerator: {n} stages from 8 px make {8 * 2 ** (n - 1)} px, not output_size "
                             f"{cfg.output_size}, or the last stage is not MLP-only (it must emit RGB)")
        self.cfg = cfg
        C0 = cfg.channels[0]
        self.dense_layer = Dense(cfg.latent_dim, 8 * 8 * C0)
        self.embedding_layer = Dense(cfg.latent_dim, 16 * C0)  # 16 latent tokens of width C0
        self.embedding_position = PositionEmbedding(16, C0)
        self.embedding_norm = BatchNorm(C0)
        self.stages = nn.ModuleList(Stage(cfg, i) for i in range(n))
        self.upsamplings = nn.ModuleList(PixelShuffle(cfg.channels[i], cfg.channels[i + 1]) for i in range(n - 1))

    def forward(self, z):
        """z (B, latent_dim) -> images (B, 3, S, S), unbounded (the official code clips to [-1, 1] at eval). Without
        autograd on fastar's CPU backend its activations of 4 MB and more come from the CPU cache's warm blocks
        (fastar.cpu_cache_all_tensors, as VAR's VQVAE decoder): HiT-256 at B 8, 1.41 -> 1.30 s (Zen 4, 2 threads, a
        diagnostic script; the stages' pixel shuffles write 134 MB a batch at 256 px)."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] < 1 or z.shape[1] != self.cfg.latent_dim \
                or z.dtype != self.dense_layer.weight.dtype:
            raise ValueError(f"HiTGenerator: z must be (B >= 1, latent_dim={self.cfg.latent_dim}) of the model's "
                             f"{self.dense_layer.weight.dtype}, got "
                             + (f"{z.dtype} {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__))
        if not torch.is_grad_enabled() and z.device.type == "cpu" and _backend.active(z.device) == "cpu":
            with _backend.cpu_cache_all_tensors():
                return self._forward(z)
        return self._forward(z)

    def _forward(self, z):
        B = z.shape[0]
        x = self.dense_layer(z).view(B, 8, 8, -1)  # (B, 8, 8, C0) NHWC
        latents = self.embedding_norm(self.embedding_position(self.embedding_layer(z).view(B, 16, -1)))  # (B, 16, C0)
        images = None
        for i, stage in enumerate(self.stages):
            pos = stage.position_embedding
            x = pos(x) if i == 0 else self.upsamplings[i - 1](x, pos.embedding_weight)
            x, images = stage(x, latents, images, inplace=True)  # x is this forward's own
        return images.permute(0, 3, 1, 2)

    @torch.no_grad()
    def start_at_mean(self, mean):
        """Sets the mean of the images over a batch's pixels to `mean` (the data's mean, before a short run). With
        BatchNorm on batch statistics before each RGB Dense, that mean is exactly the sum of their biases (zero at
        init), and Adam moves a bias about lr per step: at lr 5e-4 a 200-step run can't reach the ~-0.4 of the digits
        and every sample stays grey. The official 10^5-step runs don't need it."""
        if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
            raise TypeError(f"start_at_mean: mean must be a finite number, got {mean!r}")
        rgb = [stage.to_rgb.dense.bias for stage in self.stages if stage.to_rgb is not None]
        for b in rgb:
            b.fill_(mean / len(rgb))

    @torch.no_grad()
    def sample(self, z, batch_stats=True):
        """Images in [-1, 1] (clipped, as the official evaluation). batch_stats: BatchNorm on the batch's own
        statistics, from a copy, so the running ones stay; they follow Keras's momentum (0.01 per step) and need far
        more steps than a short run to settle. batch_stats=False: eval mode, the running statistics."""
        if not isinstance(batch_stats, bool):
            raise TypeError(f"HiTGenerator.sample: batch_stats must be a bool, got {batch_stats!r}")
        G = copy.deepcopy(self).train() if batch_stats else self.eval()
        return G(z).clamp(-1, 1)
