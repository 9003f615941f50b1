"""VAR's transformer block (FoundationVision/VAR models/basic_var.py): AdaLN self-attention with cosine attention.

Module names equal the official checkpoint's keys (attn.mat_qkv, attn.q_bias, attn.zero_k_bias, ffn.fc1, ada_lin.1).
Every attention of the VAR models goes through `attention` / `attention_decode` below, i.e. through fastar.ops.
"""
import dataclasses
import math

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

import fastar
from fastar.models.layers import Linear, fast_path, linear, linear_gelu


def attention(q, k, v, mask=None, *, scale):
    """q (B, H, Lq, D), k/v (B, H, Lk, D) -> (B, H, Lq, D); mask a fastar.ops.AttentionMask or None (full)."""
    return fastar.ops.attention(q, k, v, mask, scale=scale)


class KVCache:
    """A preallocated (B, H, L, D) key/value cache filled scale by scale: no concatenation per scale."""

    def __init__(self, B, H, L, D, like):
        self.k = like.new_empty(B, H, L, D)
        self.v = like.new_empty(B, H, L, D)
        self.len = 0

    def append(self, l):
        """Views (B, H, l, D) of the next l positions of k and v, for this scale's keys and values to be written
        into in place (no copy through a temporary)."""
        k, v = self.k[:, :, self.len:self.len + l], self.v[:, :, self.len:self.len + l]
        self.len += l
        return k, v


def unit(x, s, out=None):
    """F.normalize(x, dim=-1) * s in one pass over x (the norms are the small tensor): into `out` when given, which
    lays q out contiguously for the kernel and writes k straight into its cache slot. Under torch.compile the write
    is a copy (Dynamo does not trace out= into a non-contiguous slot; the compiler fuses the product into the copy)."""
    f = s / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
    if out is None:
        return x * f
    return out.copy_(x * f) if torch.compiler.is_compiling() else torch.mul(x, f, out=out)


class _UnitQKV(torch.autograd.Function):
    """(unit(q, scale_mul), unit(k, 1), v) from qkv (B, L, 3, H, D) under autograd, q and k laid out (B, H, L, D) and
    v a view of qkv. The backward writes d q, d k and d v straight into qkv's gradient: autograd's own (the products'
    and the norms' gradients, summed, then unbind's copy of the three) made ~7 passes over each and fresh tensors
    for most (VAR-d16, B 8, in a profile: ~3 s of a 47 s training step)."""

    @staticmethod
    def forward(ctx, qkv, scale_mul):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        fq = scale_mul / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)  # (B, H, L, 1)
        fk = 1.0 / torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(1e-12)
        qn, kn = q * fq, k * fk
        ctx.save_for_backward(qn, kn, fq, fk, scale_mul)
        return qn, kn, v

    @staticmethod
    @once_differentiable  # its out= products record no graph
    def backward(ctx, gq, gk, gv):
        qn, kn, fq, fk, scale_mul = ctx.saved_tensors
        dqkv = torch.empty(qn.shape[0], qn.shape[2], 3, qn.shape[1], qn.shape[3], dtype=qn.dtype, device=qn.device)
        dq, dk, dv = dqkv.permute(2, 0, 3, 1, 4).unbind(0)
        # y = s x / |x|: d x = f (g - y <g, y> / s^2) with f = s / |x|; d s = <g, y> / s summed over B, L
        dot_q = torch.mul(gq, qn, out=dq).sum(-1, keepdim=True)
        dot_k = torch.mul(gk, kn, out=dk).sum(-1, keepdim=True)
        s2 = scale_mul * scale_mul
        torch.mul(gq, fq, out=dq).addcmul_(qn, fq * dot_q / s2, value=-1.0)
        torch.mul(gk, fk, out=dk).addcmul_(kn, fk * dot_k, value=-1.0)
        dv.copy_(gv)
        d_scale = dot_q.sum((0, 2), keepdim=True) / scale_mul if ctx.needs_input_grad[1] else None
        return dqkv, d_scale


class SelfAttention(nn.Module):
    """Cosine attention: q and k are L2-normalized and q is scaled by a learned per-head temperature exp(s_h),
    s_h <= log 100, so logits are bounded (VAR's attn_l2_norm, on in every released model)."""

    def __init__(self, C, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, C // num_heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.max_scale_mul = math.log(100)
        self.mat_qkv = Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))  # k has no bias, but the checkpoint stores a zero one
        self.proj = Linear(C, C)

    def forward(self, x_BLC, mask=None, cache: KVCache | None = None):
        """mask: fastar.ops.AttentionMask over x's own tokens (training); cache: keys/values of the earlier scales
        (inference), which this call's keys/values join and its queries attend to."""
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D), strided views of qkv
        scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
        if cache is None and torch.is_grad_enabled() and qkv.requires_grad and fast_path(qkv):
            o = attention(*_UnitQKV.apply(qkv, scale_mul), mask, scale=1.0)
        elif cache is None:
            o = attention(unit(q, scale_mul), unit(k, 1.0), v, mask, scale=1.0)
        else:  # inference (no autograd): q laid out contiguously, k and v written into the cache in place
            k_slot, v_slot = cache.append(L)
            unit(k, 1.0, out=k_slot), v_slot.copy_(v)
            q = unit(q, scale_mul, out=q.new_empty(B, self.num_heads, L, self.head_dim))
            o = fastar.ops.attention_decode(q, cache.k, cache.v, cache.len, scale=1.0)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.fc1, self.fc2 = Linear(C, hidden), Linear(hidden, C)

    def forward(self, x):
        return self.fc2(linear_gelu(x, self.fc1.weight, self.fc1.bias, approximate="tanh"))


class SharedAdaLin(Linear):
    """The one AdaLN projection all blocks share in VAR-d36-s; each block adds its own ada_gss to it."""

    def forward(self, cond_BD):
        return super().forward(cond_BD).view(-1, 1, 6, self.out_features // 6)  # (B, 1, 6, C)


class AdaLNSelfAttn(nn.Module):
    """x + gamma1 * attn(LN(x)(1+scale1)+shift1), then the same with the FFN; the 6 AdaLN chunks come in VAR's
    order gamma1, gamma2, scale1, scale2, shift1, shift2 (not DiT's)."""

    def __init__(self, C, D, num_heads, mlp_ratio, norm_eps, drop_path, shared_aln):
        super().__init__()
        self.C, self.shared_aln, self.drop_path = C, shared_aln, drop_path
        self.attn = SelfAttention(C, num_heads)
        self.ffn = FFN(C, round(C * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(D, 6 * C))

    def ada(self, cond_BD_or_gss):
        """The block's (B, 1, 6, C) AdaLN parameters: computed once per condition, reused at every scale."""
        if self.shared_aln:
            return self.ada_gss + cond_BD_or_gss
        return self.ada_lin(cond_BD_or_gss).view(-1, 1, 6, self.C)

    def forward(self, x_BLC, ada_B16C=None, mask=None, cache=None, *, cond_BD_or_gss=None):
        """ada_B16C: the block's AdaLN parameters from ada() (sampling computes them once per condition), or
        cond_BD_or_gss, from which the block computes them here (training: where FSDP has gathered its weights)."""
        if (ada_B16C is None) == (cond_BD_or_gss is None):
            raise TypeError("AdaLNSelfAttn.forward: give one of ada_B16C and cond_BD_or_gss")
        if ada_B16C is None:
            ada_B16C = self.ada(cond_BD_or_gss)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada_B16C.unbind(2)  # each (B, 1, C)
        dtype = self.ffn.fc1.weight.dtype  # the GEMMs' operands: bfloat16 in bf16 sampling, where x stays float32

        def attn(x, scale, shift, m):
            return self.attn(modulate(self.ln_wo_grad(x), scale, shift).to(dtype), m, cache)

        def ffn(x, scale, shift, _):
            return self.ffn(modulate(self.ln_wo_grad(x), scale, shift).to(dtype))
        x_BLC = self._residual(attn, x_BLC, gamma1, scale1, shift1, mask)
        return self._residual(ffn, x_BLC, gamma2, scale2, shift2, mask)

    def _residual(self, branch, x_BLC, gamma_B1C, scale_B1C, shift_B1C, mask):
        """x + drop_path(gamma branch(x, scale, shift, mask)): stochastic depth (training only) drops branches per
        sample and rescales the kept ones. On fastar's backends one pass over x and h, the factors multiplied on the
        small (B, 1, C) tensor, and a branch some samples drop runs on the kept samples only (_kept_only); on the
        torch and reference backends the official code's order: the branch on every sample, then the draw, then
        its three passes (h gamma, times the kept samples' factor, plus x). The branches draw no random numbers, so
        drawing before or after them gives the same masks."""
        if not (self.training and self.drop_path > 0):
            return mul_add(branch(x_BLC, scale_B1C, shift_B1C, mask), gamma_B1C, x_BLC)
        if not fast_path(x_BLC):
            h_BLC = branch(x_BLC, scale_B1C, shift_B1C, mask)
            return x_BLC + h_BLC * gamma_B1C * self._keep(x_BLC)
        keep = self._keep(x_BLC)
        kept = _kept_only(keep)
        if kept is None:
            return mul_add(branch(x_BLC, scale_B1C, shift_B1C, mask), gamma_B1C * keep, x_BLC)

        def sub(t):  # the kept samples' rows of a per-sample tensor ((1, 1, C) ones are shared)
            return t if t.shape[0] == 1 else t.index_select(0, kept)
        if mask is not None and mask.key_len is not None:
            mask = dataclasses.replace(mask, key_len=mask.key_len.index_select(0, kept.to(mask.key_len.device)))
        x_kept = x_BLC.index_select(0, kept)
        h_kept = branch(x_kept, sub(scale_B1C), sub(shift_B1C), mask)
        return x_BLC.index_copy(0, kept, mul_add(h_kept, sub(gamma_B1C * keep), x_kept))

    def _keep(self, x_BLC):
        """Stochastic depth's (B, 1, 1) factors: 0 for a dropped sample, 1 / (1 - drop_path) for a kept one."""
        keep = torch.empty(x_BLC.shape[0], 1, 1, device=x_BLC.device).bernoulli_(1 - self.drop_path)
        return keep / (1 - self.drop_path)


def _kept_only(keep):
    """The indices of the kept samples where a branch should run on them alone: some but not all dropped, on a
    CPU or CUDA device outside torch.compile and CUDA graph capture (reading the mask is a host sync). A fully
    dropped branch still runs on every sample, times 0, so that every parameter gets its (zero) gradient (DDP
    expects one each step). None otherwise. VAR-d16's B 8 training step drops 8.5 sample-branches of its 240
    with a nonzero rate on average (11 in bench_var.py's seeded step), each about 1/8 of its block's half."""
    if torch.compiler.is_compiling() or keep.device.type not in ("cpu", "cuda"):
        return None
    if keep.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    kept = keep.view(-1).nonzero().view(-1)
    return kept if 0 < kept.numel() < keep.shape[0] else None


def modulate(x_BLC, scale_B1C, shift_B1C):
    """AdaLN's x (1 + scale) + shift in one pass."""
    return mul_add(x_BLC, scale_B1C + 1, shift_B1C)


class _MulAdd(torch.autograd.Function):
    """h s + x for s of shape (B, 1, C): one pass forward; the backward's d h = g s, d s = g h summed over L and d x =
    g (summed to x's shape, (B, 1, C) for AdaLN's shift). torch's addcmul backward first multiplies h by its value 1,
    a pass over h (VAR-d16, B 8: 65 passes of 22 MB a training step)."""

    @staticmethod
    def forward(ctx, h, s, x):
        ctx.save_for_backward(h, s)
        ctx.x_shape = x.shape
        return torch.addcmul(x, h, s)

    @staticmethod
    def backward(ctx, g):
        h, s = ctx.saved_tensors
        dh = g * s if ctx.needs_input_grad[0] else None
        ds = (g * h).sum_to_size(s.shape) if ctx.needs_input_grad[1] else None
        dx = g.sum_to_size(ctx.x_shape) if ctx.needs_input_grad[2] else None
        return dh, ds, dx


def mul_add(h, s, x):
    """torch.addcmul(x, h, s): under autograd, on fastar's backends, through _MulAdd."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (h, s, x)) and fast_path(h):
        return _MulAdd.apply(h, s, x)
    return torch.addcmul(x, h, s)


class AdaLNBeforeHead(nn.Module):
    """LN(x)(1+scale)+shift before the classifier head; chunks scale, shift."""

    def __init__(self, C, D, norm_eps):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(D, 2 * C))

    def ada(self, cond_BD):
        """(B, 1, 2, C), computed once per condition like the blocks' ada."""
        return self.ada_lin(cond_BD).view(-1, 1, 2, self.C)

    def forward(self, x_BLC, ada_B12C):
        scale, shift = ada_B12C.unbind(2)
        return modulate(self.ln_wo_grad(x_BLC), scale, shift)
