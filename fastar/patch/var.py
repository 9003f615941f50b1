"""The rows of fastar.patch.var: FoundationVision/VAR's SelfAttention (models/basic_var.py), VectorQuantizer2
(models/quant.py), the top-k / top-p sampler VAR.autoregressive_infer_cfg calls (models/helpers.py's
sample_with_top_k_top_p_, looked up as a global of models/var.py) on fastar ops, and the VQVAE decoder
(models/basic_vae.py) on the fast path of fastar's own (fastar.models.var.basic_vae, whose forwards read the same
attribute names). The contracts (signatures, attributes, the kv_caching protocol, the 0 / -inf block-causal
attn_bias, the sampler's (B, l, 1) result and its in-place filtering) are the official code's; the bodies are
fastar's."""
import sys
import weakref

import torch

import fastar
from fastar import _backend
from fastar.models.var import basic_vae
from fastar.models.layers import linear, linear_gelu, onednn_declines
from fastar.models.var.basic_var import KVCache, unit
from fastar.ops._checks import generator_on
from fastar.patch._table import Row

_mask = [lambda: None, None, None]  # (weak reference to the attn_bias tensor, its _version, its fastar mask)


def _block_causal(attn_bias):
    """The AttentionMask of VAR's attn_bias (1, 1, L, L), 0 where a query sees a key and -inf elsewhere, or None
    when the bias is not block-causal. Read once per tensor object and version (VAR.forward slices one bias for all
    its blocks): an address alone could be a freed bias's reused by another."""
    ref, version, mask = _mask
    if ref() is not attn_bias or version != attn_bias._version:
        bias = attn_bias.reshape(attn_bias.shape[-2:])
        seen = (bias == 0).sum(1).tolist()  # keys each query sees
        seg_lens, start = [], 0
        for r in range(len(seen) + 1):  # a segment ends where the visible prefix grows
            if r == len(seen) or (r > start and seen[r] != seen[start]):
                seg_lens.append(r - start)
                start = r
        expect = torch.full_like(bias, float("-inf"))
        for r, n in enumerate(seen):
            expect[r, :n] = 0
        ok = torch.equal(bias, expect) and all(seen[sum(seg_lens[:i + 1]) - 1] == sum(seg_lens[:i + 1])
                                               for i in range(len(seg_lens)))
        mask = fastar.ops.AttentionMask.block_causal(seg_lens) if ok else None
        _mask[:] = weakref.ref(attn_bias), attn_bias._version, mask
    return mask


def _attention_declines(self, x, attn_bias):
    if self.training and self.attn_drop > 0:
        return "attention dropout in training (fastar's attention has none)"
    if attn_bias is not None and (attn_bias.dim() != 4 or attn_bias.shape[:2] != (1, 1)):
        return f"attn_bias of shape {tuple(attn_bias.shape)}, not VAR's (1, 1, L, L)"
    if attn_bias is not None and _block_causal(attn_bias) is None:
        return "attn_bias is not block-causal (0 / -inf over growing prefixes)"
    if self.caching and torch.is_grad_enabled() and (x.requires_grad or self.mat_qkv.weight.requires_grad):
        return "KV caching under autograd (fastar's cache is written in place; VAR samples under no_grad)"
    return None


def attention_forward(self, x, attn_bias):
    """SelfAttention.forward(x, attn_bias): attn_bias (training) as a block-causal mask, or with kv_caching on
    the keys and values in a preallocated cache (no torch.cat per scale) and fastar.ops.attention_decode."""
    B, L, C = x.shape
    H, D = self.num_heads, self.head_dim
    bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
    q, k, v = linear(x, self.mat_qkv.weight, bias).view(B, L, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp() if self.attn_l2_norm else None
    if not self.caching:
        if self.attn_l2_norm:
            q, k = unit(q, scale_mul), unit(k, 1.0)
        mask = None if attn_bias is None else _block_causal(attn_bias)
        o = fastar.ops.attention(q, k, v, mask, scale=self.scale)
    else:
        cache = self.__dict__.get("_fastar_cache")
        if cache is None or cache.k.shape[0] != B or cache.len + L > cache.k.shape[2]:
            cache = _grown(cache, B, H, D, L, q)
            self._fastar_cache = cache
        k_slot, v_slot = cache.append(L)
        (unit(k, 1.0, out=k_slot) if self.attn_l2_norm else k_slot.copy_(k)), v_slot.copy_(v)
        q = unit(q, scale_mul, out=q.new_empty(B, H, L, D)) if self.attn_l2_norm else q.contiguous()
        o = fastar.ops.attention_decode(q, cache.k, cache.v, cache.len, scale=self.scale)
    return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, L, C)))


def _grown(cache, B, H, D, L, like):
    """A cache with room for L more positions: VAR's 680 tokens at 256 px in a few doublings, keeping the
    entries so far."""
    used = 0 if cache is None or cache.k.shape[0] != B else cache.len
    new = KVCache(B, H, max(256, 2 * (used + L)), D, like)
    if used:
        new.k[:, :, :used], new.v[:, :, :used] = cache.k[:, :, :used], cache.v[:, :, :used]
        new.len = used
    return new


def kv_caching(self, enable):
    """SelfAttention.kv_caching(enable): on or off, the cache emptied either way."""
    self.caching, self.cached_k, self.cached_v = enable, None, None
    self.__dict__.pop("_fastar_cache", None)


def _quant_args(self):
    """(codebook, Phi weights (K, C, C, 3, 3), Phi biases (K, C), patch_nums) of an official VectorQuantizer2."""
    qr = self.quant_resi
    phis = list(qr.qresi_ls) if hasattr(qr, "qresi_ls") else [qr.qresi] if hasattr(qr, "qresi") else list(qr)
    return (self.embedding.weight, torch.stack([p.weight for p in phis]), torch.stack([p.bias for p in phis]),
            self.v_patch_nums)


def _floats(values):
    """The floating-point tensors among values and the lists of them."""
    for v in values:
        yield from _floats(v) if isinstance(v, (list, tuple)) else [v] if torch.is_tensor(v) and v.is_floating_point() \
            else []


def _quant_declines(self, *args, v_patch_nums=None, **kwargs):
    if self.embedding.weight.dtype != torch.float32 or any(t.dtype != torch.float32 for t in _floats(args)):
        return "not float32 (fastar's quantizer ops compute in float32)"
    if abs(self.quant_resi_ratio) <= 1e-6:
        return "quant_resi = 0 (Identity instead of Phi convolutions)"
    if self.using_znorm:
        return "using_znorm (cosine search)"
    if getattr(self, "prog_si", -1) >= 0:
        return "progressive training (prog_si >= 0)"
    pns = v_patch_nums or self.v_patch_nums
    if any(not isinstance(pn, int) for pn in pns):
        return "non-square scales (tuple patch sizes)"
    return None


def _encode_declines(self, f_BChw, to_fhat, v_patch_nums=None):
    return _quant_declines(self, f_BChw, v_patch_nums=v_patch_nums)


def f_to_idxBl_or_fhat(self, f_BChw, to_fhat, v_patch_nums=None):
    """VectorQuantizer2.f_to_idxBl_or_fhat on fastar.ops.f_to_idxBl_or_fhat: f_BChw (B, C, H, W) -> per scale the
    indices (B, pn^2) int64, or the cumulative f_hat (B, C, H, W) after that scale when to_fhat."""
    codebook, w, b, pns = _quant_args(self)
    return fastar.ops.f_to_idxBl_or_fhat(f_BChw, codebook, w, b, tuple(v_patch_nums or pns), to_fhat=to_fhat,
                                         resi_ratio=abs(self.quant_resi_ratio))


def idxBl_to_var_input(self, gt_ms_idx_Bl):
    """VectorQuantizer2.idxBl_to_var_input on fastar.ops.idxBl_to_var_input: per-scale indices (B, pn^2) -> VAR's
    teacher-forcing input (B, L - 1, C)."""
    return fastar.ops.idxBl_to_var_input(gt_ms_idx_Bl, *_quant_args(self), resi_ratio=abs(self.quant_resi_ratio))


def get_next_autoregressive_input(self, si, SN, f_hat, h_BChw):
    """VectorQuantizer2.get_next_autoregressive_input on fastar.ops.get_next_autoregressive_input: f_hat += Phi(up(
    h_BChw)) in place; returns (f_hat, the next scale's input (B, C, pn', pn')), or (f_hat, f_hat) at the last."""
    codebook, w, b, pns = _quant_args(self)
    return fastar.ops.get_next_autoregressive_input(si, SN, f_hat, h_BChw, w, b, pns,
                                                    resi_ratio=abs(self.quant_resi_ratio))


def embed_to_fhat(self, ms_h_BChw, all_to_max_scale=True, last_one=False):
    """VectorQuantizer2.embed_to_fhat (all_to_max_scale only) on fastar.ops.embed_to_fhat: per-scale code maps
    (B, C, pn, pn) -> the cumulative f_hat (B, C, H, W) after each scale, or the last one only."""
    codebook, w, b, pns = _quant_args(self)
    return fastar.ops.embed_to_fhat(ms_h_BChw, w, b, pns, last_one=last_one, resi_ratio=abs(self.quant_resi_ratio))


def _embed_declines(self, ms_h_BChw, all_to_max_scale=True, last_one=False):
    return "all_to_max_scale=False (per-scale maps)" if not all_to_max_scale else _quant_declines(self, ms_h_BChw)


# ---- models/helpers.py's sample_with_top_k_top_p_, looked up in models/var.py by autoregressive_infer_cfg ----

def sample_with_top_k_top_p_(logits_BlV, top_k=0, top_p=0.0, rng=None, num_samples=1):
    """The official filters (top_k <= 0 and top_p <= 0 off; ties with the k-th largest logit kept; top_p over the
    tokens top-k kept, the largest always kept) and draw in one fastar.ops.sample_categorical pass, which races the
    exponentials the official torch.multinomial draws from rng (the global generator when None): one seed gives the
    official tokens. Returns (B, l, 1) int64. Unlike the official sampler it leaves logits_BlV unfiltered, so it
    runs only where nothing reads them afterwards (_sample_declines)."""
    idx_Bl = fastar.ops.sample_categorical(logits_BlV, top_k=max(top_k, 0), top_p=min(top_p, 1.0) if top_p > 0
                                           else 1.0, generator=rng)
    return idx_Bl.unsqueeze(-1)


def _caller():
    """The frame that called the patched sampler: the first one outside fastar (the patch's own wrappers)."""
    f = sys._getframe(1)
    while f is not None and f.f_globals.get("__name__", "").startswith("fastar."):
        f = f.f_back
    return f


def _sample_declines(logits_BlV, top_k=0, top_p=0.0, rng=None, num_samples=1):
    if num_samples != 1:
        return f"num_samples={num_samples} (fastar draws one token per position)"
    if not isinstance(logits_BlV, torch.Tensor) or logits_BlV.dim() != 3 or logits_BlV.dtype != torch.float32:
        return ("logits not a float32 (B, l, V) tensor (VAR's get_logits returns float32; fastar's draws are "
                "torch.multinomial's for float32 probabilities)")
    if not isinstance(top_k, int) or top_k > logits_BlV.shape[-1]:
        return f"top_k={top_k!r}, not an int <= V (the official topk fails on it)"
    if not isinstance(top_p, (int, float)):
        return f"top_p={top_p!r}, not a number"
    if rng is not None and not generator_on(rng, logits_BlV.device):
        return f"rng {rng!r} is not a torch.Generator on the logits' device {logits_BlV.device}"
    f = _caller()  # the official sampler filters logits_BlV in place: only VAR's default path never reads them
    if f is None or f.f_code.co_name != "autoregressive_infer_cfg" or f.f_locals.get("more_smooth", True):
        return ("the caller may read the logits the official sampler filters in place (more_smooth's gumbel "
                "softmax, or a caller other than VAR.autoregressive_infer_cfg)")
    return None


# ---- models/basic_var.py's FFN, in the opt-in linear group ----

def ffn_forward(self, x):
    """FFN.forward(x): fc1 and its tanh GELU as one oneDNN product with the GELU in the epilogue (no second pass over
    the hidden activations), then fc2 (fastar.models.layers: fastar.ops.linear at decode rows)."""
    h = linear_gelu(x, self.fc1.weight, self.fc1.bias, approximate="tanh")
    return self.drop(linear(h, self.fc2.weight, self.fc2.bias))


def _ffn_declines(self, x):
    if self.fused_mlp_func is not None:
        return "flash-attn's fused_mlp_func runs (fused_if_available with flash-attn installed)"
    if not isinstance(self.act, torch.nn.GELU) or self.act.approximate != "tanh":
        return f"activation {self.act!r}, not VAR's GELU(approximate='tanh')"
    return onednn_declines(x, self.fc1.weight, self.fc1.bias)


FFN_ROW = Row("linear", "models.basic_var", "FFN", "forward", ffn_forward, "fused_mlp_func off (no flash-attn), "
              "VAR's tanh GELU, float32 on the CPU with oneDNN the float32 GEMM library", _ffn_declines)


# ---- models/basic_vae.py: the decoder's Decoder, Upsample2x, ResnetBlock and AttnBlock ----

def _decoder_declines(self, x):
    if not basic_vae.fast_path(x):
        return f"the {_backend.active(x.device)} backend is active (fastar's decoder runs the official formulation)"
    return None


_ATTN = ("attention", "models.basic_var", "SelfAttention")
_QUANT = ("quantizer", "models.quant", "VectorQuantizer2")
ROWS = (
    Row(*_ATTN, "forward", attention_forward, "no attention dropout in training; attn_bias None or VAR's "
        "block-causal (1, 1, L, L); the KV cache outside autograd", _attention_declines),
    Row(*_ATTN, "kv_caching", kv_caching, "always (the cache fastar's forward fills)"),
    Row(*_QUANT, "f_to_idxBl_or_fhat", f_to_idxBl_or_fhat, "float32, Phi convolutions on, square scales",
        _encode_declines),
    Row(*_QUANT, "idxBl_to_var_input", idxBl_to_var_input, "float32, Phi convolutions on, square scales",
        _quant_declines),
    Row(*_QUANT, "get_next_autoregressive_input", get_next_autoregressive_input, "float32, Phi convolutions on, "
        "square scales", _quant_declines),
    Row(*_QUANT, "embed_to_fhat", embed_to_fhat, "float32, all_to_max_scale, Phi on, square scales",
        _embed_declines),
    Row("sampling", "models.var", "VAR", "sample_with_top_k_top_p_", sample_with_top_k_top_p_, "called by "
        "VAR.autoregressive_infer_cfg without more_smooth, num_samples 1, float32 logits, rng None or on their "
        "device", _sample_declines, function=True),
    *(Row("decoder", "models.basic_vae", cls, "forward", getattr(basic_vae, cls).forward, "fastar's kernels active "
          "(not the torch / reference backend)", _decoder_declines)
      for cls in ("Decoder", "Upsample2x", "ResnetBlock", "AttnBlock")),
)
