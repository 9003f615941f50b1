"""Block-sparse attention: full, causal, VAR's block-causal and DALL-E's row / column / conv masks, with
autograd, plus KV-cache decoding. One kernel family (csrc/cpu/attention.cpp, csrc/kernels/attention/)."""
import dataclasses
import itertools
import math
import sys

import torch

from fastar import _backend
from fastar.ops._checks import FLOATS, check_choice, check_int, check_same_device, check_tensor
from fastar.ops._registry import Decline, autograd_decline, first_order_only, kernel, lse_grads, op
from fastar.reference import attention as reference
from fastar.torch import attention as torch_impl

DTYPES = FLOATS + (torch.float64,)  # float64: the CPU kernels' gradcheck dtype
# Per backend, as the built extensions export it (csrc/kernels/attention/capabilities.h); the reference has no limit.
MAX_HEAD_DIM = {"reference": sys.maxsize}
for _ext in (_backend._C, _backend._simt):
    if _ext is not None:
        MAX_HEAD_DIM.update(_ext.capabilities()["attention"]["max_head_dim"])
DALLE_KINDS = ("row", "column", "conv")


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionMask:
    """Which keys each query sees; queries are aligned bottom-right on the keys (flash-attn's convention).

    Build with full(), causal(), block_causal(seg_lens) or dalle(kind, text_len, grid, conv_kernel).
    key_len (B,) int, optional: batch row b sees only keys [0, key_len[b]) (padded batches); a list of ints is taken
    as one. Values past the keys mean all of them, values <= 0 none (the row's out 0, lse -inf).
    """
    kind: str
    seg_lens: tuple = ()  # block_causal: tokens per scale, VAR's [pn * pn for pn in patch_nums]
    text_len: int = 0  # DALL-E: text prefix length
    grid: int = 0  # DALL-E: image grid side
    conv_kernel: int = 11  # DALL-E conv: window side, odd
    key_len: torch.Tensor | None = None  # (B,)

    @classmethod
    def full(cls, *, key_len=None):
        return cls("full", key_len=_key_len("AttentionMask.full", key_len))

    @classmethod
    def causal(cls, *, key_len=None):
        return cls("causal", key_len=_key_len("AttentionMask.causal", key_len))

    @classmethod
    def block_causal(cls, seg_lens, *, key_len=None):
        """Each token sees its own segment and every earlier one (VAR: a segment is a scale)."""
        op = "AttentionMask.block_causal"
        seg_lens = tuple(check_int(op, f"seg_lens[{i}]", n, low=1) for i, n in enumerate(seg_lens))
        if not seg_lens:
            raise ValueError(f"{op}: seg_lens must hold at least one length")
        return cls("block_causal", seg_lens=seg_lens, key_len=_key_len(op, key_len))

    @classmethod
    def dalle(cls, kind, text_len, grid, conv_kernel=11, *, key_len=None):
        """DALL-E (OpenAI semantics): text causal; an image token sees all text plus its row / column / conv
        pattern over the grid x grid image that follows the text."""
        op = "AttentionMask.dalle"
        check_choice(op, "kind", kind, DALLE_KINDS)
        text_len, grid = check_int(op, "text_len", text_len, low=0), check_int(op, "grid", grid, low=1)
        conv_kernel = check_int(op, "conv_kernel", conv_kernel, low=1)
        if conv_kernel % 2 == 0:
            raise ValueError(f"{op}: conv_kernel must be odd, got {conv_kernel}")
        return cls(kind, text_len=text_len, grid=grid, conv_kernel=conv_kernel, key_len=_key_len(op, key_len))

    def op_args(self, op, B, Lq, Lk, device):
        """(mask_kind, mask_ints, kv_end (Lq,) int32 or None, key_len (B,) int32 or None) of the kernels' schema."""
        kv_end = None
        if self.kind == "block_causal":
            if sum(self.seg_lens) != Lk:
                raise ValueError(f"{op}: seg_lens sum to {sum(self.seg_lens)} but there are {Lk} keys")
            seg_end = [end for n, end in zip(self.seg_lens, itertools.accumulate(self.seg_lens)) for _ in range(n)]
            kv_end = torch.tensor([seg_end[p] if p >= 0 else 0 for p in range(Lk - Lq, Lk)], dtype=torch.int32,
                                  device=device)
        if self.kind in DALLE_KINDS and Lk > self.text_len + self.grid ** 2:
            raise ValueError(f"{op}: a DALL-E mask of text_len {self.text_len} and a {self.grid} x {self.grid} grid "
                             f"covers {self.text_len + self.grid ** 2} keys, got {Lk}")
        key_len = None
        if self.key_len is not None:
            if self.key_len.shape != (B,):
                raise ValueError(f"{op}: mask.key_len must have shape ({B},), got {tuple(self.key_len.shape)}")
            if self.key_len.device.type == "meta" and device.type != "meta":
                raise ValueError(f"{op}: mask.key_len is on the meta device (no values), q on {device}")
            key_len = self.key_len.to(device=device, dtype=torch.int32).contiguous()
        return reference.KINDS[self.kind], [self.text_len, self.grid, self.conv_kernel], kv_end, key_len


def _key_len(op, key_len):
    """None, or key_len as a 1-D integer tensor (from a list or tuple of ints too); floats would be truncated."""
    if isinstance(key_len, (list, tuple)):
        key_len = torch.tensor([check_int(op, f"key_len[{i}]", n) for i, n in enumerate(key_len)], dtype=torch.long)
    if key_len is not None and (not isinstance(key_len, torch.Tensor) or key_len.dim() != 1 or
                                key_len.dtype == torch.bool or key_len.is_floating_point() or key_len.is_complex()):
        got = f"{key_len.dtype} of shape {tuple(key_len.shape)}" if isinstance(key_len, torch.Tensor) else \
            type(key_len).__name__
        raise TypeError(f"{op}: key_len must be a 1-D integer tensor (or a list of ints), one length per batch row, "
                        f"got {got}")
    return key_len


_FULL = AttentionMask.full()  # mask=None (frozen: one instance serves every call)


def _check_qkv(op, q, k, v):
    """Checks q, k, v; returns Decline when the active backend's kernel does not take their head dim, else None."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t, dim=4, dtypes=DTYPES)
    check_same_device(op, q=q, k=k, v=v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    qs, ks = q.shape, k.shape  # read once: each .shape is a new torch.Size (small shapes: the checks cost as much
    if ks != v.shape:          # as the kernel)
        raise ValueError(f"{op}: k {tuple(ks)} and v {tuple(v.shape)} must have the same shape")
    if ks[0] != qs[0] or ks[3] != qs[3]:
        raise ValueError(f"{op}: k {tuple(ks)} must match q {tuple(qs)} in batch (dim 0) and head dim (dim 3)")
    if ks[1] == 0 or qs[1] % ks[1] != 0:
        raise ValueError(f"{op}: q's {qs[1]} heads must be a multiple of k's {ks[1]}")
    if qs[3] < 1:
        raise ValueError(f"{op}: q, k and v must have a head dim (dim 3) of at least 1, got {qs[3]}")
    backend = _backend.active(q.device)
    top = MAX_HEAD_DIM.get(backend, MAX_HEAD_DIM["reference"])
    if qs[3] > top:  # VAR's VQVAE has one head of 640 channels, wider than the CUDA kernels' tiles
        return Decline(f"the {backend} kernel takes head dims up to {top}, got {qs[3]}")
    if q.dtype == torch.float64 and backend in ("cuda", "simt"):  # as multi_axis_attention's: no float64 tiles
        return Decline(f"the {backend} kernel takes float32, bfloat16 and float16, got float64")
    return None


def max_head_dim(device) -> int:
    """The largest head dim the kernel of the backend active on `device` takes; wider heads run the torch
    backend (SDPA), with a warning. The torch and reference backends take any head dim (the reference's entry)."""
    return MAX_HEAD_DIM.get(_backend.active(torch.device(device)), MAX_HEAD_DIM["reference"])


@op(reference=reference.attention, torch=torch_impl.attention)
def attention(q, k, v, mask=None, *, scale=None, return_lse=False):
    """softmax(q k^T scale + mask) v, flash-style: never builds the Lq x Lk matrix, skips hidden tiles.

    q (B, H, Lq, D), k and v (B, Hk, Lk, D) with H a multiple of Hk (multi-query heads share k/v); float32,
    bfloat16, float16 (float32 accumulation) or float64. D up to max_head_dim(q.device) (1024 on the CPU, 128
    on CUDA) runs fastar's kernel; a wider head runs the torch backend (SDPA) with a warning, and
    fastar.last_backend("attention") says "torch". mask: an AttentionMask, None = full.
    scale defaults to 1/sqrt(D). Returns out (B, H, Lq, D) like q, and with return_lse also the
    logsumexp (B, H, Lq) float32, float64 for float64 inputs (-inf on rows that see no key, whose out is 0).
    Differentiable in q, k and v through dedicated backward kernels, out and lse (a used lse costs one more
    forward and backward: _registry.lse_grads); once (no double backward: it raises).
    Non-finite inputs: a NaN in q or k reaches exactly the rows that see it (out and lse NaN), never a row that
    hides it. The v of a hidden key should be finite: where a kernel multiplies it by its probability 0 (the CPU's
    products, as the reference's), a NaN there still reaches the row; the CUDA kernel skips whole hidden tiles.
    """
    name = "attention"
    declined = _check_qkv(name, q, k, v)
    if mask is not None and not isinstance(mask, AttentionMask):
        raise TypeError(f"{name}: mask must be a fastar.ops.AttentionMask or None, got {type(mask).__name__}")
    B, _, Lq, _ = q.shape
    kind, ints, kv_end, key_len = (mask or _FULL).op_args(name, B, Lq, k.shape[2], q.device)
    return q.device, declined or _lse_if(return_lse, lambda ops: ops.attention_fwd(
        q, k, v, kind, ints, kv_end, key_len, _scale(q, scale)))


@op(reference=reference.attention_decode, torch=torch_impl.attention_decode)
def attention_decode(q, k_cache, v_cache, cache_len, mask=None, *, scale=None, return_lse=False):
    """Attention of new queries over the first cache_len entries of preallocated caches.

    q (B, H, Lq, D): one VAR scale or one or a few tokens, aligned bottom-right on the cache_len keys (the
    queries are the last Lq of them); k_cache, v_cache (B, Hk, Lmax, D), read in place. mask: an AttentionMask,
    None = full. Under a DALL-E mask (row / column / conv) a query reads only the keys it sees: the text, then its
    row window, its column (strided) or its conv window's rows, never the hidden keys of the prefix.
    Splits the keys across threads when B * H is small. bfloat16 / float16 caches: on the CPU a few queries
    (a token's step) read them in place, widened to float32 as they are loaded (half the bytes of float32); the
    device kernels take them natively. The kernels have no backward (inference): under autograd (an input
    requiring grad) the torch formulation runs.
    """
    name = "attention_decode"
    declined = _check_qkv(name, q, k_cache, v_cache)
    check_int(name, "cache_len", cache_len)
    if not 0 <= cache_len <= k_cache.shape[2]:
        raise ValueError(f"{name}: cache_len must be in [0, {k_cache.shape[2]}], got {cache_len}")
    if mask is not None and not isinstance(mask, AttentionMask):
        raise TypeError(f"{name}: mask must be a fastar.ops.AttentionMask or None, got {type(mask).__name__}")
    if q.shape[2] > cache_len and mask is not None and mask.kind != "full":
        raise ValueError(f"{name}: the {q.shape[2]} queries of a masked decode are the last of the cache_len keys, "
                         f"so cache_len must be >= {q.shape[2]}, got {cache_len}")
    B, _, Lq, _ = q.shape
    kind, ints, kv_end, key_len = (mask or _FULL).op_args(name, B, Lq, cache_len, q.device)
    declined = declined or autograd_decline(name, q, k_cache, v_cache)
    return q.device, declined or _lse_if(return_lse, lambda ops: ops.attention_decode(
        q, k_cache, v_cache, cache_len, kind, ints, kv_end, key_len, _scale(q, scale)))


def _scale(q, scale):
    return 1 / math.sqrt(q.shape[3]) if scale is None else float(scale)


def _lse_if(return_lse, kernel):
    """run(ops) of a kernel returning (out, lse): both with return_lse, else out."""
    return lambda ops: kernel(ops) if return_lse else kernel(ops)[0]


# ---- the compiled kernels: fake functions (torch.compile, opcheck) and the autograd of attention_fwd ----

def _lse_like(q):  # (B, H, Lq) float32; float64 inputs keep float64
    return q.new_empty(q.shape[:3], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def _like(*tensors):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors)


def _setup_context(ctx, inputs, output):
    q, k, v, kind, ints, kv_end, key_len, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_end, key_len)
    ctx.mask = kind, ints, scale
    ctx.set_materialize_grads(False)  # an unused out or lse gets None, not zeros


def _backward(ops, ctx, dout, dlse):
    first_order_only("attention")
    q, k, v, out, lse, kv_end, key_len = ctx.saved_tensors
    kind, ints, scale = ctx.mask
    fwd = lambda q, k, v: ops.attention_fwd(q, k, v, kind, ints, kv_end, key_len, scale)  # noqa: E731
    bwd = lambda dout, q, k, v, out, lse: ops.attention_bwd(  # noqa: E731
        dout, q, k, v, out, lse, kind, ints, kv_end, key_len, scale)
    dout = torch.zeros_like(out) if dout is None else dout.contiguous()
    dq, dk, dv = bwd(dout, q, k, v, out, lse)
    if dlse is not None:
        dq_lse, dk_lse = lse_grads(fwd, bwd, q, k, lse, dlse, scale)
        dq, dk = dq + dq_lse, dk + dk_lse
    return dq, dk, dv, None, None, None, None, None


@kernel("attention_fwd", backward=_backward, setup_context=_setup_context)
def _attention_fwd(q, k, v, mask_kind, mask_ints, kv_end, key_len, scale):
    return *_like(q), _lse_like(q)


@kernel("attention_bwd")
def _attention_bwd(dout, q, k, v, out, lse, mask_kind, mask_ints, kv_end, key_len, scale):
    return _like(q, k, v)


@kernel("attention_decode")
def _attention_decode(q, k_cache, v_cache, cache_len, mask_kind, mask_ints, kv_end, key_len, scale):
    return *_like(q), _lse_like(q)
