"""fastar.patch (issue 15): stand-ins with the official module paths, attribute names and call contracts of
FoundationVision/VAR's SelfAttention (models/basic_var.py), VectorQuantizer2 (models/quant.py), the sampler
sample_with_top_k_top_p_ (models/helpers.py) that VAR.autoregressive_infer_cfg (models/var.py) calls by name and the
VQVAE decoder (models/basic_vae.py), written here (the official code is not shipped); patched against unpatched,
float64 stand-ins as the oracle."""
import copy
import enum
import math
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar
import fastar.patch
from fastar.reference import quantize as ref_q
from tests.conftest import backend_device
from tests.test_layers import Ops
from tests.tolerance import assert_close

pytestmark = pytest.mark.one_schedule
PN = (1, 2, 3, 4)


class SelfAttention(nn.Module):
    """The official contract: forward(x, attn_bias) with a 0 / -inf bias in training; kv_caching(enable) and a
    torch.cat cache in inference; SDPA as the official code's non-flash path."""

    def __init__(self, block_idx, embed_dim=64, num_heads=4, attn_drop=0.0, attn_l2_norm=True):
        super().__init__()
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        self.scale = 1 if attn_l2_norm else 0.25 / math.sqrt(self.head_dim)
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(embed_dim) * 0.1), nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj, self.proj_drop, self.attn_drop = nn.Linear(embed_dim, embed_dim), nn.Identity(), attn_drop
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable):
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x, attn_bias):
        B, L, C = x.shape
        qkv = F.linear(x, self.mat_qkv.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=2)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=2)
        p = self.attn_drop if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=p, scale=self.scale)
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, L, C)))


class FFN(nn.Module):
    """The official contract: fc1, a tanh GELU, fc2, drop; fused_mlp_func None without flash-attn."""

    def __init__(self, in_features=64, hidden_features=256, drop=0.0):
        super().__init__()
        self.fused_mlp_func = None
        self.fc1, self.act = nn.Linear(in_features, hidden_features), nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop, inplace=True) if drop > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Phi(nn.Conv2d):
    def __init__(self, C, quant_resi):
        super().__init__(C, C, 3, padding=1)
        self.resi_ratio = abs(quant_resi)


class PhiPartiallyShared(nn.Module):
    def __init__(self, qresi_ls):
        super().__init__()
        self.qresi_ls = qresi_ls


class VectorQuantizer2(nn.Module):
    """The official contract (attributes embedding, quant_resi.qresi_ls, quant_resi_ratio, v_patch_nums,
    using_znorm, prog_si; the four multi-scale methods); its loops are the official formulation's, i.e.
    fastar.reference.quantize on this module's weights."""

    def __init__(self, vocab_size=32, Cvae=8, using_znorm=False, v_patch_nums=PN, quant_resi=0.5,
                 share_quant_resi=4):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm, self.v_patch_nums = vocab_size, Cvae, using_znorm, v_patch_nums
        self.quant_resi_ratio, self.prog_si = quant_resi, -1
        self.quant_resi = PhiPartiallyShared(nn.ModuleList(Phi(Cvae, quant_resi) for _ in range(share_quant_resi)))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    def _w(self):
        phis = self.quant_resi.qresi_ls
        return (torch.stack([p.weight for p in phis]), torch.stack([p.bias for p in phis]))

    def f_to_idxBl_or_fhat(self, f_BChw, to_fhat, v_patch_nums=None):
        return ref_q.f_to_idxBl_or_fhat(f_BChw, self.embedding.weight, *self._w(), v_patch_nums or self.v_patch_nums,
                                        to_fhat=to_fhat, resi_ratio=abs(self.quant_resi_ratio))

    def idxBl_to_var_input(self, gt_ms_idx_Bl):
        return ref_q.idxBl_to_var_input(gt_ms_idx_Bl, self.embedding.weight, *self._w(), self.v_patch_nums,
                                        resi_ratio=abs(self.quant_resi_ratio))

    def get_next_autoregressive_input(self, si, SN, f_hat, h_BChw):
        return ref_q.get_next_autoregressive_input(si, SN, f_hat, h_BChw, *self._w(), self.v_patch_nums,
                                                   resi_ratio=abs(self.quant_resi_ratio))

    def embed_to_fhat(self, ms_h_BChw, all_to_max_scale=True, last_one=False):
        return ref_q.embed_to_fhat(ms_h_BChw, *self._w(), self.v_patch_nums, last_one=last_one,
                                   resi_ratio=abs(self.quant_resi_ratio))


def sample_with_top_k_top_p_(logits_BlV, top_k=0, top_p=0.0, rng=None, num_samples=1):
    """models/helpers.py's contract: logits (B, l, V) filtered in place (top_k > 0: the logits below the k-th
    largest to -inf; top_p > 0: in ascending order, those whose cumulative probability is <= 1 - top_p, the largest
    always kept), then torch.multinomial over the softmax rows with rng, with replacement unless num_samples < 0
    -> (B, l, |num_samples|)."""
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        ascending, order = logits_BlV.sort(dim=-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop[..., -1] = False
        logits_BlV.masked_fill_(torch.zeros_like(drop).scatter_(-1, order, drop), -torch.inf)
    n = abs(num_samples)
    return torch.multinomial(logits_BlV.softmax(dim=-1).reshape(-1, V), n, replacement=num_samples >= 0,
                             generator=rng).reshape(B, l, n)


def gumbel_softmax_with_rng(logits, tau=1.0, hard=False, eps=1e-10, dim=-1, rng=None):
    """models/helpers.py's contract for hard=False: softmax((logits + Gumbel noise from rng) / tau)."""
    return ((logits - torch.empty_like(logits).exponential_(generator=rng).log()) / tau).softmax(dim)


class VAR(nn.Module):
    """VAR.autoregressive_infer_cfg's contract at toy size: per scale, logits (2B, l, V) for the class and the
    unconditional half, mixed with t = cfg * si / (scales - 1), one token per position from
    sample_with_top_k_top_p_(logits, rng=, top_k=, top_p=, num_samples=1)[:, :, 0], looked up as a global of
    models.var (the fixture rebinds the method there); rng is self.rng seeded with g_seed, or None (the global
    generator); more_smooth embeds a Gumbel-softmax mixture of the filtered logits instead of the token.
    Returns the token maps and the embeddings fed onwards."""

    def __init__(self, V=4096, C=32, patch_nums=PN, num_classes=10, device="cpu"):
        super().__init__()
        self.V, self.patch_nums, self.num_classes = V, patch_nums, num_classes
        self.class_emb, self.word_embed = nn.Embedding(num_classes + 1, C), nn.Embedding(V, C)
        self.pos = nn.Parameter(torch.randn(1, sum(pn * pn for pn in patch_nums), C))
        self.head = nn.Linear(C, V)
        nn.init.normal_(self.head.weight, std=0.15)  # logits of std ~1: both filters cut tokens drawn without them
        self.to(device)
        self.rng = torch.Generator(device)  # the official one is on dist.get_device()

    def autoregressive_infer_cfg(self, B, label_B, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False):
        with torch.no_grad():
            rng = None if g_seed is None else self.rng.manual_seed(g_seed)
            ctx = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))  # (2B, C)
            tokens, embeds, start, SN = [], [], 0, len(self.patch_nums)
            for si, pn in enumerate(self.patch_nums):
                logits = self.head(ctx[:, None] + self.pos[:, start:start + pn * pn])  # (2B, l, V)
                start, ratio = start + pn * pn, si / (SN - 1)
                logits_BlV = (1 + cfg * ratio) * logits[:B] - cfg * ratio * logits[B:]
                idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
                if not more_smooth:
                    h = self.word_embed(idx_Bl)
                else:  # reads logits_BlV, which the sampler filtered in place
                    soft = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=0.3, hard=False, dim=-1, rng=rng)
                    h = soft @ self.word_embed.weight
                ctx = ctx + h.mean(1).repeat(2, 1)
                tokens.append(idx_Bl)
                embeds.append(h)
            return tokens, embeds


# ---- models/basic_vae.py: the VQVAE decoder (LDM's vq-f16) ----

def Normalize(in_channels):
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    """The official contract: conv (3x3, padding 1) of the nearest-2x interpolation."""

    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResnetBlock(nn.Module):
    """norm1, conv1, norm2, dropout, conv2, nin_shortcut (1x1 where the width changes, else Identity); SiLU in
    place after each norm."""

    def __init__(self, *, in_channels, out_channels=None, dropout):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.norm1, self.conv1 = Normalize(in_channels), nn.Conv2d(in_channels, self.out_channels, 3, 1, 1)
        self.norm2, self.conv2 = Normalize(self.out_channels), nn.Conv2d(self.out_channels, self.out_channels, 3, 1, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.nin_shortcut = (nn.Conv2d(in_channels, self.out_channels, 1) if in_channels != self.out_channels
                             else nn.Identity())

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """One head over the h*w positions, q, k, v from one 1x1 conv qkv (3C), scores times w_ratio = C^-0.5, by bmm."""

    def __init__(self, in_channels):
        super().__init__()
        self.C, self.norm = in_channels, Normalize(in_channels)
        self.qkv = nn.Conv2d(in_channels, 3 * in_channels, kernel_size=1)
        self.w_ratio = in_channels ** -0.5
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.C, H * W).unbind(1)  # each (B, C, HW)
        w = F.softmax(torch.bmm(q.transpose(1, 2), k).mul_(self.w_ratio), dim=2)  # (B, HW of q, HW of k)
        return x + self.proj_out(torch.bmm(v, w.transpose(1, 2)).view(B, self.C, H, W))


class Decoder(nn.Module):
    """conv_in, mid (block_1, attn_1, block_2), up[i] (num_res_blocks + 1 blocks, attentions on the last level,
    upsample on i != 0), run from the last level to the first; norm_out, SiLU, conv_out. The blocks are the classes
    of this class's own module (the fixture registers them as models.basic_vae)."""

    def __init__(self, *, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, in_channels=3, z_channels=8,
                 using_sa=True, using_mid_sa=True):
        super().__init__()
        vae = sys.modules[type(self).__module__]
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = vae.ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = vae.AttnBlock(block_in) if using_mid_sa else nn.Identity()
        self.mid.block_2 = vae.ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(len(ch_mult))):
            up, block_out = nn.Module(), ch * ch_mult[i_level]
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                up.block.append(vae.ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if i_level == len(ch_mult) - 1 and using_sa:
                    up.attn.append(vae.AttnBlock(block_in))
            if i_level != 0:
                up.upsample = vae.Upsample2x(block_in)
            self.up.insert(0, up)
        self.norm_out, self.conv_out = Normalize(block_in), nn.Conv2d(block_in, in_channels, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i_level in reversed(range(len(self.up))):
            for i_block, block in enumerate(self.up[i_level].block):
                h = block(h)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


VAE_CLASSES = [Upsample2x, ResnetBlock, AttnBlock, Decoder]


def _defined_in(fn, module):
    """fn with module's namespace as its globals: the names it calls are looked up in module, as the official
    methods look theirs up in their own module."""
    return types.FunctionType(fn.__code__, vars(module), fn.__name__, fn.__defaults__, fn.__closure__)


@pytest.fixture
def official(monkeypatch):
    """The stand-ins registered as the official modules models.basic_var, models.quant, models.basic_vae,
    models.helpers and models.var (which imports the sampler by name, `from models.helpers import
    sample_with_top_k_top_p_`)."""
    mods = {}
    for name, classes in (("models.basic_var", [SelfAttention, FFN]), ("models.quant", [VectorQuantizer2]),
                          ("models.basic_vae", VAE_CLASSES)):
        mod = types.ModuleType(name)
        for cls in classes:
            sub = type(cls.__name__, (cls,), {"__module__": name})
            setattr(mod, cls.__name__, sub)
        monkeypatch.setitem(sys.modules, name, mod)
        mods[name] = mod
    helpers, var = types.ModuleType("models.helpers"), types.ModuleType("models.var")
    for mod in (helpers, var):
        mod.sample_with_top_k_top_p_, mod.gumbel_softmax_with_rng = sample_with_top_k_top_p_, gumbel_softmax_with_rng
    var.torch = torch
    var.VAR = type("VAR", (VAR,), {"__module__": "models.var",
                                    "autoregressive_infer_cfg": _defined_in(VAR.autoregressive_infer_cfg, var)})
    for mod in (helpers, var):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    yield types.SimpleNamespace(SelfAttention=mods["models.basic_var"].SelfAttention, FFN=mods["models.basic_var"].FFN,
                                VectorQuantizer2=mods["models.quant"].VectorQuantizer2, VAR=var.VAR, var=var,
                                vae=mods["models.basic_vae"])
    fastar.patch.undo()


def var_bias(patch_nums):
    """VAR's attn_bias_for_masking: a token sees its own scale and the earlier ones."""
    lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(patch_nums)])
    return torch.where(lvl[:, None] >= lvl[None, :], 0.0, -torch.inf).view(1, 1, len(lvl), len(lvl))


def run_attention(attn, x, bias):
    x = x.clone().requires_grad_()
    out = attn(x, bias)
    out.square().sum().backward()
    return out.detach(), x.grad, attn.mat_qkv.weight.grad


def test_attention_training_patched_equals_official(official):
    torch.manual_seed(0)
    attn = official.SelfAttention(0)
    x, bias = torch.randn(2, 30, 64), var_bias(PN)
    ref64 = run_attention(attn.double(), x.double(), bias.double())
    attn.zero_grad()
    ref32 = run_attention(attn.float(), x, bias)
    attn.zero_grad()
    fastar.patch.var(attn)
    assert attn.forward.__fastar_row__.attr == "forward"
    got = run_attention(attn, x, bias)
    assert fastar.last_backend("attention") == "cpu"
    for name, g, r64, r32 in zip(("out", "dx", "dW"), got, ref64, ref32):
        assert_close("attention", g, r64, r32)


def test_attention_inference_cache_patched_equals_official(official):
    torch.manual_seed(1)
    attn = official.SelfAttention(0).eval()
    xs = [torch.randn(3, pn * pn, 64) for pn in PN]

    def infer(a, dtype):
        a.to(dtype).kv_caching(True)
        with torch.no_grad():
            outs = [a(x.to(dtype), None) for x in xs]
        a.kv_caching(False)
        return torch.cat(outs, 1)

    ref64, ref32 = infer(attn, torch.float64), infer(attn, torch.float32)
    fastar.patch.var(attn, quantizer=False)
    got = infer(attn, torch.float32)
    assert fastar.last_backend("attention_decode") == "cpu" and attn.cached_k is None
    assert_close("attention", got, ref64, ref32)


def test_linear_row_runs_onednn_in_inference_on_a_model_only(official, monkeypatch):
    """A patched model's nn.Linear instances run fastar.models.layers.linear: oneDNN in float32 inference where that
    is the float32 library (asked for here, whatever the CPU), within the tolerance rule, and under autograd too
    (the forward and d x on oneDNN), with the unpatched gradients. torch's nn.Linear class is never patched (no model:
    no linear row); undo restores instances."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    original = nn.Linear.forward
    torch.manual_seed(4)
    attn = official.SelfAttention(0).eval()
    x = torch.randn(2, 30, 64)
    with torch.no_grad():
        ref64, ref32 = attn.double()(x.double(), None), attn.float()(x, None)
    rows = fastar.patch.var(attn, quantizer=False, sampling=False, linear=True)
    assert [r.group for r in rows].count("linear") == 1 and nn.Linear.forward is original
    with torch.no_grad(), Ops() as ops:
        got = attn(x, None)
    assert ops.counts["mkldnn::_linear_pointwise"] == 2  # qkv (the attention row) and proj (the linear row)
    assert_close("attention", got, ref64, ref32)
    status = {name: s for name, row, s in fastar.patch.report(attn) if row.group == "linear"}
    assert status == {"mat_qkv": "applied", "proj": "applied"}  # mat_qkv's weight is read by the attention row
    x.requires_grad_()
    with Ops() as ops:
        attn(x, None).sum().backward()
    status = {name: s for name, row, s in fastar.patch.report(attn) if row.group == "linear"}
    assert status["proj"] == "applied" and ops.counts["mkldnn::_linear_pointwise"] >= 2  # proj's forward and d x
    grad, x.grad = x.grad, None
    fastar.patch.undo(attn)
    assert "forward" not in vars(attn.proj)
    attn(x, None).sum().backward()
    assert torch.allclose(grad, x.grad, rtol=1e-4, atol=1e-6)
    assert not any(r.group == "linear" for r in fastar.patch.var(linear=True))


def onednn_case(cls, seed, monkeypatch):
    """cls() in eval mode with float32 products on oneDNN, an input (2, 30, 64), and the module's float64 and float32
    outputs before any patch."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(seed)
    module, x = cls().eval(), torch.randn(2, 30, 64)
    with torch.no_grad():
        return module, x, copy.deepcopy(module).double()(x.double()), module(x)


def test_ffn_row_fuses_the_gelu_on_a_model_only(official, monkeypatch):
    """linear=True with a model: VAR's FFN runs fc1 and its tanh GELU as one oneDNN product (no aten gelu) and fc2,
    within the tolerance rule of the float64 FFN, F.linear and F.gelu under autograd with the unpatched gradients;
    another activation declines (named in report); never without a model."""
    ffn, x, ref64, ref32 = onednn_case(official.FFN, 5, monkeypatch)
    rows = fastar.patch.var(ffn, linear=True)
    assert [r.cls for r in rows if r.group == "linear"] == ["Linear", "FFN"]
    with torch.no_grad(), Ops() as ops:
        got = ffn(x)
    assert ops.counts["mkldnn::_linear_pointwise"] == 2 and "aten::gelu" not in ops.names
    assert_close("linear", got, ref64, ref32)
    assert {name: s for name, row, s in fastar.patch.report(ffn) if row.cls == "FFN"} == {"": "applied"}
    x.requires_grad_()
    ffn(x).sum().backward()
    grad, x.grad = x.grad, None
    ffn.act = nn.GELU()
    ffn(x.detach())
    assert "GELU(approximate='none')" in dict((n, s) for n, row, s in fastar.patch.report(ffn) if row.cls == "FFN")[""]
    fastar.patch.undo(ffn)
    ffn.act = nn.GELU(approximate="tanh")
    ffn(x).sum().backward()
    assert torch.allclose(grad, x.grad, rtol=1e-4, atol=1e-6)
    assert not any(r.cls == "FFN" for r in fastar.patch.var(linear=True))


def test_class_patch_undo_restores_the_originals(official):
    originals = {a: getattr(official.SelfAttention, a) for a in ("forward", "kv_caching")}
    rows = fastar.patch.var()
    assert {(r.cls, r.attr) for r in rows} >= {("SelfAttention", "forward"), ("VectorQuantizer2", "embed_to_fhat")}
    assert {r.cls for r in rows if r.group == "decoder"} == {"Decoder", "Upsample2x", "ResnetBlock", "AttnBlock"}
    assert official.SelfAttention.forward is not originals["forward"]
    torch.manual_seed(2)
    attn, x = official.SelfAttention(0), torch.randn(1, 30, 64)
    patched_out = attn(x, var_bias(PN))
    fastar.patch.undo()
    assert all(getattr(official.SelfAttention, a) is f for a, f in originals.items())
    assert torch.equal(attn(x, var_bias(PN)), SelfAttention.forward(attn, x, var_bias(PN)))
    assert torch.allclose(patched_out, attn(x, var_bias(PN)), atol=1e-5)


def test_declined_calls_run_the_original_and_are_reported(official):
    torch.manual_seed(3)
    attn = official.SelfAttention(0, attn_drop=0.1)
    fastar.patch.var(attn)
    x = torch.randn(1, 30, 64)
    attn.eval()
    attn(x, var_bias(PN))
    assert fastar.patch.report(attn)[0][2] == "applied"
    attn.train()
    torch.manual_seed(4)
    got = attn(x, var_bias(PN))
    torch.manual_seed(4)
    assert torch.equal(got, SelfAttention.forward(attn, x, var_bias(PN)))  # the original, same dropout draws
    assert fastar.patch.report(attn)[0][2] == "declined: attention dropout in training (fastar's attention has none)"
    bias = var_bias(PN)
    bias[..., 0, 1] = 0  # not block-causal: query 0 sees key 1
    attn.eval()
    attn(x, bias)
    assert "not block-causal" in fastar.patch.report(attn)[0][2]


def test_quantizer_rows_equal_official(official):
    torch.manual_seed(5)
    vq = official.VectorQuantizer2()
    f = torch.randn(2, 8, 4, 4)
    idx = vq.f_to_idxBl_or_fhat(f, to_fhat=False)
    with torch.no_grad():
        want = {"fhat": vq.f_to_idxBl_or_fhat(f, to_fhat=True), "var_input": vq.idxBl_to_var_input(idx),
                "embed": vq.embed_to_fhat([vq.embedding(i).transpose(1, 2).reshape(2, 8, pn, pn)
                                           for i, pn in zip(idx, PN)], last_one=True)}
        fastar.patch.var(vq)
        assert [torch.equal(a, b) for a, b in zip(vq.f_to_idxBl_or_fhat(f, to_fhat=False), idx)] == [True] * 4
        assert fastar.last_backend("f_to_idxBl_or_fhat") == "cpu"
        got = {"fhat": vq.f_to_idxBl_or_fhat(f, to_fhat=True), "var_input": vq.idxBl_to_var_input(idx),
               "embed": vq.embed_to_fhat([vq.embedding(i).transpose(1, 2).reshape(2, 8, pn, pn)
                                          for i, pn in zip(idx, PN)], last_one=True)}
        f_hat = torch.zeros(2, 8, 4, 4)
        h = vq.embedding(idx[1]).transpose(1, 2).reshape(2, 8, 2, 2)
        got_next = vq.get_next_autoregressive_input(1, 4, f_hat.clone(), h)
        fastar.patch.undo(vq)
        want_next = vq.get_next_autoregressive_input(1, 4, f_hat.clone(), h)
    for a, b in zip(got["fhat"], want["fhat"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["var_input"], want["var_input"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["embed"], want["embed"], atol=1e-5, rtol=1e-5)
    for a, b in zip(got_next, want_next):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_quantizer_declines_cosine_search(official):
    vq = official.VectorQuantizer2(using_znorm=True)
    fastar.patch.var(vq)
    vq.idxBl_to_var_input([torch.zeros(1, pn * pn, dtype=torch.long) for pn in PN])
    status = {row.attr: st for _, row, st in fastar.patch.report(vq)}
    assert status["idxBl_to_var_input"] == "declined: using_znorm (cosine search)"
    assert status["f_to_idxBl_or_fhat"] == "applied"  # patched, not called yet


def test_patch_errors_name_what_is_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "models.basic_var", raising=False)
    with pytest.raises(ImportError, match="official module 'models.basic_var' is not imported"):
        fastar.patch.var()
    monkeypatch.setitem(sys.modules, "models.basic_var", types.ModuleType("models.basic_var"))
    with pytest.raises(AttributeError, match="models.basic_var has no class 'SelfAttention'"):
        fastar.patch.var(quantizer=False)
    with pytest.raises(ValueError, match="no module of model is one of"):
        fastar.patch.var(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fastar.patch.var("VAR")



def test_block_causal_mask_is_read_per_bias_object(official):
    """A bias that lands at a freed bias's address is read afresh: the mask once cached by address gave a random
    bias the last block-causal mask (max difference 0.82 against the official forward, reported "applied")."""
    torch.manual_seed(20)
    attn = official.SelfAttention(0).eval()
    fastar.patch.var(attn)
    x = torch.randn(1, 30, 64)
    with torch.no_grad():
        for trial in range(20):
            bias = var_bias(PN) if trial % 2 == 0 else torch.randn(1, 1, 30, 30)
            got = attn(x, bias)
            assert torch.allclose(got, SelfAttention.forward(attn, x, bias), atol=1e-5), trial
            assert ("declined" in fastar.patch.report(attn)[0][2]) == (trial % 2 == 1)
            del bias  # the next trial's bias may take its address


def test_kv_cache_under_autograd_declines(official):
    """Caching with gradients on runs the original (fastar's cache is written in place), rather than failing."""
    attn = official.SelfAttention(0).eval()
    fastar.patch.var(attn)
    attn.kv_caching(True)
    out = attn(torch.randn(2, 1, 64, requires_grad=True), None)
    assert out.requires_grad and "KV caching under autograd" in fastar.patch.report(attn)[0][2]


def test_quantizer_declines_other_dtypes(official):
    """A float64 (or bfloat16) VectorQuantizer2 runs the original: fastar's ops compute in float32, which raised in
    get_next_autoregressive_input and returned float32 maps elsewhere."""
    torch.manual_seed(21)
    vq = official.VectorQuantizer2().double()
    f = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        want = vq.f_to_idxBl_or_fhat(f, to_fhat=True)
        h = torch.randn(2, 8, 2, 2, dtype=torch.float64)
        want_next = vq.get_next_autoregressive_input(1, 4, torch.zeros(2, 8, 4, 4, dtype=torch.float64), h)
        fastar.patch.var(vq)
        got = vq.f_to_idxBl_or_fhat(f, to_fhat=True)
        got_next = vq.get_next_autoregressive_input(1, 4, torch.zeros(2, 8, 4, 4, dtype=torch.float64), h)
    assert all(torch.equal(a, b) for a, b in zip(got + list(got_next), want + list(want_next)))
    status = {row.attr: st for _, row, st in fastar.patch.report(vq)}
    assert status["f_to_idxBl_or_fhat"].startswith("declined: not float32")
    assert status["get_next_autoregressive_input"].startswith("declined: not float32")


def test_failed_patch_leaves_nothing_patched(official, monkeypatch):
    """All or nothing: a class patch that fails on a later row restores the rows it had already put on."""
    monkeypatch.delitem(sys.modules, "models.basic_vae")
    with pytest.raises(ImportError, match="models.basic_vae"):
        fastar.patch.var()
    assert "__fastar_row__" not in vars(official.SelfAttention.forward)
    assert not hasattr(official.VectorQuantizer2.f_to_idxBl_or_fhat, "__fastar_row__")
    assert fastar.patch._table._applied == []


def test_patched_model_is_freed_and_copies_undo(official):
    """The patch keeps no patched model alive; a copy of a patched model (deepcopy keeps its methods) is restored
    by undo(copy)."""
    import copy
    import gc
    import weakref
    attn = official.SelfAttention(0)
    fastar.patch.var(attn)
    twin = copy.deepcopy(attn)
    assert twin.forward.__fastar_row__.attr == "forward" and twin.forward.__self__ is twin
    fastar.patch.undo(twin)
    assert "forward" not in vars(twin) and "kv_caching" not in vars(twin)
    alive = weakref.ref(attn)
    del attn
    gc.collect()
    assert alive() is None and fastar.patch._table._applied == []


# ---- models/var.py's sample_with_top_k_top_p_ ----

def infer(var, g_seed, top_k, top_p, more_smooth=False, B=3):
    if g_seed is None:
        torch.manual_seed(12)  # rng None: the global generator (of the device, as torch.multinomial's)
    return var.autoregressive_infer_cfg(B, torch.tensor([1, 4, 7][:B], device=var.pos.device), g_seed=g_seed,
                                        cfg=1.5, top_k=top_k, top_p=top_p, more_smooth=more_smooth)


def sampler_status(var):
    return {row.attr: st for _, row, st in fastar.patch.report(var)}


@pytest.mark.parametrize("top_k, top_p", [(900, 0.96), (900, 0.95), (0, 0.0), (50, 0.0), (0, 0.6), (4096, 0.99),
                                          (-1, 1.5)])
@pytest.mark.parametrize("g_seed", [0, None])
def test_sampler_patched_gives_the_official_tokens(official, backend, top_k, top_p, g_seed):
    """One seed, the same tokens at every scale (fastar races the exponentials torch.multinomial draws, from rng
    or the global generator), at VAR's filters and off / edge values; undo puts the original back."""
    torch.manual_seed(13)
    var = official.VAR(device=backend_device(backend))
    original = official.var.sample_with_top_k_top_p_
    want, _ = infer(var, g_seed, top_k, top_p)
    assert fastar.patch.var(var) == [r for r in fastar.patch.VAR_ROWS if r.cls == "VAR"]
    assert official.var.sample_with_top_k_top_p_.__fastar_row__.attr == "sample_with_top_k_top_p_"
    assert sys.modules["models.helpers"].sample_with_top_k_top_p_ is original  # patched where VAR looks it up
    got, _ = infer(var, g_seed, top_k, top_p)
    assert fastar.last_backend("sample_categorical") == backend
    assert sampler_status(var) == {"sample_with_top_k_top_p_": "applied"}
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and [a.shape for a in got] == [(3, n * n) for n in PN]
    assert len({t.unique().numel() for t in want}) > 1  # the draws are not all one token
    fastar.patch.undo(var)
    assert official.var.sample_with_top_k_top_p_ is original
    assert sampler_status(var) == {}
    again, _ = infer(var, g_seed, top_k, top_p)
    assert all(torch.equal(a, b) for a, b in zip(again, want))


def test_sampler_patched_raises_on_nan_logits_as_the_official(official):
    """A NaN in the logits: the official torch.multinomial raises, and so does the patched sampler (its kernel's -1
    would embed the last token of the codebook)."""
    torch.manual_seed(17)
    var = official.VAR()
    with torch.no_grad():
        var.head.bias[5] = torch.nan
    with pytest.raises(RuntimeError, match="probability tensor contains"):
        infer(var, 0, 900, 0.96)
    fastar.patch.var(var)
    with pytest.raises(RuntimeError, match="no token to draw"):
        infer(var, 0, 900, 0.96)
    assert sampler_status(var) == {"sample_with_top_k_top_p_": "applied"}
    fastar.patch.undo(var)


def test_sampler_class_patch_and_undo(official):
    original = official.var.sample_with_top_k_top_p_
    rows = fastar.patch.var(attention=False, quantizer=False, decoder=False)
    assert [(r.module, r.attr, r.function) for r in rows] == [("models.var", "sample_with_top_k_top_p_", True)]
    torch.manual_seed(14)
    var = official.VAR()
    got, _ = infer(var, 5, 900, 0.96)
    assert sampler_status(var) == {"sample_with_top_k_top_p_": "applied"}
    fastar.patch.undo()
    assert official.var.sample_with_top_k_top_p_ is original
    want, _ = infer(var, 5, 900, 0.96)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_sampler_declines_where_the_filtered_logits_are_read(official):
    """more_smooth reads the logits the official sampler filters in place: the original runs (same tokens, same
    Gumbel mixtures bit for bit), and report says why; so does a call with num_samples > 1 or from elsewhere."""
    torch.manual_seed(15)
    var = official.VAR()
    want = infer(var, 3, 900, 0.96, more_smooth=True)
    fastar.patch.var(var)
    got = infer(var, 3, 900, 0.96, more_smooth=True)
    assert all(torch.equal(a, b) for a, b in zip(got[0] + got[1], want[0] + want[1]))
    assert sampler_status(var)["sample_with_top_k_top_p_"].startswith(
        "declined: the caller may read the logits the official sampler filters in place (more_smooth")
    logits = torch.randn(2, 5, 64)
    torch.manual_seed(16)
    many = official.var.sample_with_top_k_top_p_(logits.clone(), top_k=10, num_samples=3)
    torch.manual_seed(16)
    assert torch.equal(many, sample_with_top_k_top_p_(logits.clone(), top_k=10, num_samples=3))
    assert sampler_status(var)["sample_with_top_k_top_p_"] == ("declined: num_samples=3 (fastar draws one token per "
                                                                "position)")
    filtered = logits.clone()
    official.var.sample_with_top_k_top_p_(filtered, top_k=10)  # not from autoregressive_infer_cfg: filtered as ever
    assert (filtered.isinf().sum(-1) == 54).all() and "a caller other than" in sampler_status(var)[
        "sample_with_top_k_top_p_"]
    infer(var, 3, 900, 0.96)
    assert sampler_status(var) == {"sample_with_top_k_top_p_": "applied"}


# ---- models/basic_vae.py's decoder ----

def official_decoder(official, seed, dropout=0.0):
    torch.manual_seed(seed)
    dec = official.vae.Decoder(dropout=dropout)
    with torch.no_grad():  # biases and norm affines away from their 0 / 1 init, so that a wrong one shows
        for p in dec.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return dec


def vae_status(model):
    """{row's class: the statuses of its modules}."""
    out = {}
    for _, row, st in fastar.patch.report(model):
        out.setdefault(row.cls, set()).add(st)
    return out


def test_decoder_patched_equals_official(official):
    """The four rows on fastar's decoder fast path (the upsample + conv as a phase conv, in-place elementwise):
    output within the rule of the float64 official decoder, through a non-square latent (h != w through both
    upsamples), a 1x1 shortcut, the lowest level's and the mid block's attentions; the state-dict keys are the
    official ones."""
    dec = official_decoder(official, 20).eval()
    z = torch.randn(2, 8, 3, 5)
    keys = list(dec.state_dict())
    with torch.no_grad():
        ref64, ref32 = copy.deepcopy(dec).double()(z.double()), dec(z)
        assert fastar.patch.var(dec, decoder=True) == [r for r in fastar.patch.VAR_ROWS if r.group == "decoder"]
        got = dec(z)
    assert got.shape == (2, 3, 12, 20) and got.is_contiguous()
    assert_close("vqvae_decode", got, ref64, ref32)
    assert vae_status(dec) == dict.fromkeys(("Decoder", "Upsample2x", "ResnetBlock", "AttnBlock"), {"applied"})
    assert list(dec.state_dict()) == keys


def test_decoder_patched_gradients(official):
    """Autograd through the patched decoder in training mode (no dropout, the official VQVAE's 0.0): the latent's
    gradient and the upsample conv's (through its phase weights) within the rule of the float64 official decoder."""
    dec = official_decoder(official, 21).train()
    z = torch.randn(2, 8, 4, 4)

    def run(module, dtype):
        module.zero_grad()
        zz = z.to(dtype).clone().requires_grad_()  # a leaf per run (z.to(float32) is z: its grad would accumulate)
        module(zz).square().sum().backward()
        return zz.grad, module.up[1].upsample.conv.weight.grad.clone()

    ref64, ref32 = run(copy.deepcopy(dec).double(), torch.float64), run(dec, torch.float32)
    fastar.patch.var(dec, decoder=True)
    got = run(dec, torch.float32)
    assert vae_status(dec)["Upsample2x"] == {"applied"}
    for g, r64, r32 in zip(got, ref64, ref32):
        assert (r32 - r64).abs().max() <= 1e-4 * r64.abs().max()  # the oracle is the same decoder's gradient
        assert_close("vqvae_decode_grads", g, r64, r32)


def test_decoder_class_patch_undo_restores_the_originals(official):
    originals = {cls: getattr(official.vae, cls).forward for cls in ("Decoder", "Upsample2x", "ResnetBlock",
                                                                     "AttnBlock")}
    dec, z = official_decoder(official, 22).eval(), torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        want = dec(z)
        fastar.patch.var(decoder=True)
        assert all(getattr(official.vae, cls).forward.__fastar_row__.cls == cls for cls in originals)
        patched = dec(z)
        fastar.patch.undo()
        again = dec(z)
    assert all(getattr(official.vae, cls).forward is f for cls, f in originals.items())
    assert torch.equal(again, want) and not torch.equal(patched, want)
    torch.testing.assert_close(patched, want, atol=1e-4, rtol=1e-4)


def test_decoder_declines_and_says_why(official):
    """The torch backend (fastar's decoder would run the official formulation): the original runs, bit for bit, and
    report says why."""
    dec = official_decoder(official, 23).eval()
    z = torch.randn(1, 8, 2, 3)
    with torch.no_grad():
        want = dec(z)
        fastar.patch.var(dec)
        with fastar.use_backend("torch"):
            got = dec(z)
    assert torch.equal(got, want)
    assert vae_status(dec)["Decoder"] == {"declined: the torch backend is active (fastar's decoder runs the "
                                          "official formulation)"}


def test_decoder_blocks_outside_the_decoder_and_dropout_in_training(official):
    """A block called on its own (as the encoder's are) runs the fast path within the rule; in training with
    dropout the patched decoder draws the official masks (the same modules in the same order on NCHW activations):
    with one seed, patched and official agree within the rule, and a wrong mask would be off by whole activations."""
    dec = official_decoder(official, 23).eval()
    block, x = dec.mid.block_1, torch.randn(1, 64, 3, 3)
    fastar.patch.var(dec)
    with torch.no_grad():
        got = block(x)
        assert fastar.patch.report(block)[0][2] == "applied"
        assert_close("vqvae_decode", got, ResnetBlock.forward(copy.deepcopy(block).double(), x.double()),
                     ResnetBlock.forward(block, x))
    drop, z = official_decoder(official, 24, dropout=0.5).train(), torch.randn(1, 8, 2, 3)
    drop64 = copy.deepcopy(drop).double()
    torch.manual_seed(25)
    want = drop(z)
    torch.manual_seed(25)
    want64 = drop64(z.double())
    fastar.patch.var(drop)
    torch.manual_seed(25)
    got = drop(z)
    assert vae_status(drop) == dict.fromkeys(("Decoder", "Upsample2x", "ResnetBlock", "AttnBlock"), {"applied"})
    assert_close("vqvae_decode", got.detach(), want64.detach(), want.detach())


# ---- LTH14/mar: DiffLoss.sample and timm's Attention ----

LossType = enum.Enum("LossType", "MSE RESCALED_MSE KL RESCALED_KL")  # diffusion/gaussian_diffusion.py's enums
ModelVarType = enum.Enum("ModelVarType", "LEARNED FIXED_SMALL FIXED_LARGE LEARNED_RANGE")
ModelMeanType = enum.Enum("ModelMeanType", "PREVIOUS_X START_X EPSILON")


class DiffLoss(nn.Module):
    """The official contract: net (SimpleMLPAdaLN's names), gen_diffusion.num_timesteps, sample(z, temperature,
    cfg) drawing from the global generator and returning every row; its loop is the official formulation's
    (fastar.reference.diffusion_sample, bit-identical to it in float32). forward(target, z, mask): t by
    torch.randint, then noise by torch.randn_like, the iDDPM hybrid loss of train_diffusion (1000 cosine steps)."""

    def __init__(self, steps=8):
        super().__init__()
        from fastar.models.mar.diffloss import SimpleMLPAdaLN
        self.in_channels, self.net = 4, SimpleMLPAdaLN(4, 32, 16, 2)
        for p in self.net.parameters():  # the official init zeroes the output: give it something to compute
            nn.init.normal_(p, std=0.1)
        self.gen_diffusion = types.SimpleNamespace(num_timesteps=steps)
        from fastar.reference import diffusion as ref_d
        self.train_diffusion = types.SimpleNamespace(  # create_diffusion(timestep_respacing="", "cosine")'s fields
            num_timesteps=1000, betas=ref_d.loss_table()[:, -1].exp().numpy(), loss_type=LossType.MSE,
            model_var_type=ModelVarType.LEARNED_RANGE, model_mean_type=ModelMeanType.EPSILON)

    def forward(self, target, z, mask=None):
        t = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), device=target.device)
        loss = self.loss_on(target, z, t, torch.randn_like(target))  # training_losses draws randn_like(x_start)
        if mask is not None:
            loss = (loss * mask).sum() / mask.sum()
        return loss.mean()

    def loss_on(self, target, z, t, noise):
        """training_losses(self.net, target, t, dict(c=z), noise)["loss"]: the head called as a module on x_t."""
        from fastar.reference import diffusion as ref_d
        table = ref_d.loss_table()
        return ref_d.loss_terms(self.net(ref_d.q_sample(target, t, noise, table), t, c=z), target, noise, t, table)

    def sample(self, z, temperature=1.0, cfg=1.0):
        from fastar.reference import diffusion as ref_d
        out = ref_d.diffusion_sample(z, self.net, num_steps=self.gen_diffusion.num_timesteps,
                                     temperature=temperature, cfg=cfg)
        return torch.cat([out, out]) if cfg != 1.0 else out


class Attention(nn.Module):
    """timm 0.9's vision_transformer.Attention contract (qkv, num_heads, head_dim, scale, q_norm, k_norm,
    attn_drop, proj, proj_drop; forward(x), full attention)."""

    def __init__(self, dim=64, num_heads=4, attn_drop=0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv, self.q_norm, self.k_norm = nn.Linear(dim, 3 * dim), nn.Identity(), nn.Identity()
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(attn_drop), nn.Linear(dim, dim), nn.Identity()

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.attn_drop.p if self.training else 0.0
        o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, dropout_p=p)
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    """timm 0.9's layers.mlp.Mlp contract (fc1, act, drop1, norm, fc2, drop2, called in that order)."""

    def __init__(self, dim=64, hidden=256, drop=0.0):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


@pytest.fixture
def official_mar(monkeypatch):
    mods = {}
    for name, cls in (("models.diffloss", DiffLoss), ("timm.models.vision_transformer", Attention),
                      ("timm.layers.mlp", Mlp)):
        mod = types.ModuleType(name)
        setattr(mod, cls.__name__, type(cls.__name__, (cls,), {"__module__": name}))
        monkeypatch.setitem(sys.modules, name, mod)
        mods[cls.__name__] = getattr(mod, cls.__name__)
    yield types.SimpleNamespace(**mods)
    fastar.patch.undo()


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_diffloss_sample_patched_equals_official(official_mar, cfg):
    torch.manual_seed(6)
    loss = official_mar.DiffLoss()
    z = torch.randn(6, 16)

    def sample(module, dtype):
        torch.manual_seed(7)  # the noise comes from the global generator, as in the official code
        with torch.no_grad():
            return module.to(dtype).sample(z.to(dtype), temperature=0.9, cfg=cfg)

    ref64, ref32 = sample(loss, torch.float64), sample(loss, torch.float32)
    fastar.patch.mar(loss)
    got = sample(loss, torch.float32)
    assert fastar.last_backend("diffusion_sample") == "cpu"
    assert_close("diffusion_sample", got, ref64, ref32)
    status = {row.attr: st for _, row, st in fastar.patch.report(loss)}
    assert status == {"sample": "applied", "forward": "applied"}  # forward patched, not called


def test_timm_attention_patched_equals_official(official_mar):
    torch.manual_seed(8)
    block = nn.Sequential(official_mar.Attention(), nn.Linear(64, 64))
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        ref64, ref32 = block.double()(x.double()), block.float()(x)
        fastar.patch.mar(block, head=False)
        got = block(x)
    assert fastar.last_backend("attention") == "cpu"
    assert_close("attention", got, ref64, ref32)
    with pytest.raises(ValueError, match="no module of model is one of .*models.diffloss.DiffLoss"):
        fastar.patch.mar(block, attention=False)


def test_timm_mlp_row_fuses_the_gelu_on_a_model_only(official_mar, monkeypatch):
    """linear=True with a model (MAR's and FractalGen's): timm's Mlp runs fc1 and its GELU as one oneDNN product (no
    aten gelu) and fc2, within the tolerance rule of the float64 Mlp, with the unpatched gradients under autograd;
    another activation declines (named in report); undo restores; never without a model."""
    mlp, x, ref64, ref32 = onednn_case(official_mar.Mlp, 12, monkeypatch)
    x.requires_grad_()
    mlp(x).sum().backward()
    grad, x.grad = x.grad, None
    assert [r.cls for r in fastar.patch.mar(mlp, linear=True)] == ["Linear", "Mlp"]
    with torch.no_grad(), Ops() as ops:
        got = mlp(x)
    assert ops.counts["mkldnn::_linear_pointwise"] == 2 and "aten::gelu" not in ops.names
    assert_close("linear", got, ref64, ref32)
    assert {name: s for name, row, s in fastar.patch.report(mlp) if row.cls == "Mlp"} == {"": "applied"}
    mlp(x).sum().backward()
    assert torch.allclose(grad, x.grad, rtol=1e-4, atol=1e-6)
    mlp.act = nn.SiLU()
    mlp(x.detach())
    assert "SiLU" in {name: s for name, row, s in fastar.patch.report(mlp) if row.cls == "Mlp"}[""]
    fastar.patch.undo(mlp)
    assert "forward" not in vars(mlp)
    assert [r.cls for r in fastar.patch.fractalgen(mlp, linear=True)] == ["Linear", "Mlp"]
    fastar.patch.undo(mlp)
    assert not any(r.cls == "Mlp" for r in fastar.patch.mar(linear=True))


def test_diffloss_forward_patched_equals_official(official_mar):
    """The training loss with the official draws: same seed, same t and noise (the generator ends in the same
    state), loss and gradients (head parameters, z) against the official formula in float64 on those draws."""
    torch.manual_seed(9)
    loss = official_mar.DiffLoss()
    target, z, mask = torch.randn(12, 4), torch.randn(12, 16), (torch.rand(12) < 0.7).float()

    def run(module, seed, dtype=torch.float32, draws=None):
        module.zero_grad()
        zz = z.to(dtype).detach().clone().requires_grad_()
        torch.manual_seed(seed)
        if draws is None:
            out = module.to(dtype)(target.to(dtype), zz, mask.to(dtype))
        else:  # the official formula on given draws
            out = (module.to(dtype).loss_on(target.to(dtype), zz, *draws) * mask.to(dtype)).sum() / mask.sum()
        out.backward()
        return out.detach(), zz.grad, module.net.res_blocks[0].mlp[0].weight.grad.clone(), torch.get_rng_state()

    torch.manual_seed(10)
    t, noise = torch.randint(0, 1000, (12,)), torch.randn(12, 4)  # what forward draws after manual_seed(10)
    ref32 = run(loss, 10)
    ref64 = run(loss, 10, torch.float64, (t, noise.double()))
    fastar.patch.mar(loss, attention=False, head=False)
    got = run(loss, 10)
    assert fastar.last_backend("diffusion_loss") == "cpu"
    assert torch.equal(got[3], ref32[3])  # the same draws consumed from the global generator
    assert torch.equal(ref32[0], run(loss, 10, draws=(t, noise))[0])  # t, noise: the official forward's draws
    for name, g, r64, r32 in zip(("loss", "dz", "dW"), got[:3], ref64[:3], ref32[:3]):
        assert_close("diffusion_loss", g, r64, r32)
    assert {row.attr: st for _, row, st in fastar.patch.report(loss)} == {"forward": "applied"}


def test_diffloss_forward_declines_another_chain(official_mar):
    loss = official_mar.DiffLoss()
    fastar.patch.mar(loss, attention=False, head=False)
    loss.train_diffusion.loss_type = LossType.RESCALED_KL  # create_diffusion(use_kl=True)
    torch.manual_seed(11)
    got = loss(torch.randn(4, 4), torch.randn(4, 16))
    assert {row.attr: st for _, row, st in fastar.patch.report(loss)} == {
        "forward": "declined: train_diffusion.loss_type is RESCALED_KL, not MAR's MSE"}
    torch.manual_seed(11)
    assert torch.equal(got, DiffLoss.forward(loss, torch.randn(4, 4), torch.randn(4, 16)))  # the original ran
    loss.train_diffusion.loss_type = LossType.MSE
    loss.train_diffusion.num_timesteps = 500
    loss(torch.randn(4, 4), torch.randn(4, 16))
    assert "500 timesteps" in fastar.patch.report(loss)[0][2]
