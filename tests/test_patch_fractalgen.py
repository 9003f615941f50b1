"""fastar.patch.fractalgen (issue 15): stand-ins with the official module paths, attribute names and call contracts
of LTH14/fractalgen's models/ar.py (Attention, KVCache; the AR level's causal_mask / freqs_cis protocol),
models/mar.py (Attention) and models/pixelloss.py (CausalAttention, PixelLoss), written here in the official
formulation (the official code is not shipped); patched against unpatched, the float64 stand-ins as the oracle.
Also: the fastar builders take the official builders' call."""
import dataclasses
import math
import sys
import types
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastar
import fastar.patch
from fastar.models import fractalgen as fg
from fastar.models.fractalgen.ar import rope_2d
from tests.conftest import backend_device
from tests.tolerance import assert_close

pytestmark = pytest.mark.one_schedule


def f32(t):
    """The official .float() of the attention logits, float64 kept for the float64 oracle."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def manual_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, to_float=True):
    """The official scaled_dot_product_attention of models/ar.py (to_float) and models/pixelloss.py: a 0 / -inf
    bias (causal: tril, or a bool mask), q k^T (in float32 in ar.py), softmax, dropout, then P v."""
    L, S = q.size(-2), k.size(-2)
    bias = torch.zeros(L, S, dtype=q.dtype, device=q.device)  # .cuda() in the official code
    if is_causal:
        bias.masked_fill_(torch.ones(L, S, dtype=torch.bool, device=q.device).tril().logical_not(), float("-inf"))
    if attn_mask is not None:
        bias.masked_fill_(attn_mask.logical_not(), float("-inf"))
    w = (f32(q) @ f32(k).transpose(-2, -1) if to_float else q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    w = torch.dropout(torch.softmax(w + bias, dim=-1), dropout_p, train=True)
    return w.to(v.dtype) @ v


def rotary(x, freqs_cis):
    """apply_rotary_emb: interleaved pairs of x (B, L, H, D) turned by freqs_cis (L, D / 2, 2) = (cos, sin)."""
    xs = x.reshape(*x.shape[:-1], -1, 2)
    f = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2)
    return torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                        xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1).flatten(3).type_as(x)


# ---- models/ar.py ----

@dataclasses.dataclass
class ModelArgs:
    dim: int = 64
    n_head: int = 4
    n_kv_head: int = None
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0


class KVCache(nn.Module):
    def __init__(self, max_batch_size, max_seq_length, n_head, head_dim):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(max_batch_size, n_head, max_seq_length, head_dim))
        self.register_buffer("v_cache", torch.zeros(max_batch_size, n_head, max_seq_length, head_dim))

    def update(self, input_pos, k_val, v_val):
        self.k_cache[:, :, input_pos] = k_val.to(self.k_cache.dtype)
        self.v_cache[:, :, input_pos] = v_val.to(self.k_cache.dtype)
        return self.k_cache, self.v_cache


class ARAttention(nn.Module):
    """models/ar.py Attention(config): wqkv, wo, kv_cache (set by AR.setup_caches), forward(x, freqs_cis,
    input_pos, mask): causal without a mask, over the whole cache under mask = causal_mask[input_pos] with it."""

    def __init__(self, config):
        super().__init__()
        self.dim, self.head_dim, self.n_head = config.dim, config.dim // config.n_head, config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.wqkv = nn.Linear(config.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.kv_cache = None
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x, freqs_cis=None, input_pos=None, mask=None):
        B, L, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        xq, xk, xv = self.wqkv(x).split([self.dim, kv, kv], dim=-1)
        xq = rotary(xq.view(B, L, self.n_head, self.head_dim), freqs_cis)
        xk = rotary(xk.view(B, L, self.n_kv_head, self.head_dim), freqs_cis)
        xv = xv.view(B, L, self.n_kv_head, self.head_dim)
        xq, xk, xv = xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2)
        keys, values = self.kv_cache.update(input_pos, xk, xv) if self.kv_cache is not None else (xk, xv)
        keys = keys.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        values = values.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        o = manual_sdpa(xq, keys, values, attn_mask=mask, is_causal=mask is None,
                        dropout_p=self.attn_dropout_p if self.training else 0)
        return self.resid_dropout(self.wo(o.transpose(1, 2).contiguous().view(B, L, self.dim)))


# ---- models/mar.py ----

class MARAttention(nn.Module):
    """models/mar.py Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop): bidirectional, float32
    logits minus their max, softmax, dropout on the probabilities."""

    def __init__(self, dim=64, num_heads=4, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(attn_drop), nn.Linear(dim, dim), nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (f32(q) @ f32(k).transpose(-2, -1)) * self.scale
        attn = self.attn_drop((attn - attn.max(dim=-1, keepdim=True)[0]).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))


# ---- models/pixelloss.py ----

class CausalAttention(nn.Module):
    def __init__(self, dim=32, num_heads=4, qkv_bias=True, qk_norm=False, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop, self.proj, self.proj_drop = nn.Dropout(attn_drop), nn.Linear(dim, dim), nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        o = manual_sdpa(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=True,
                        to_float=False)
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))


class CausalBlock(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = sys.modules["models.pixelloss"].CausalAttention(dim, num_heads)  # the registered class
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))  # timm's Mlp
        self.drop_path = nn.Identity()  # DropPath(0) is Identity in the official block

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MlmLayer(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, vocab_size) * 0.1)

    def forward(self, x, word_embeddings):
        return x @ word_embeddings.transpose(0, 1) + self.bias


class PixelLoss(nn.Module):
    """models/pixelloss.py PixelLoss(c_channels, width, depth, num_heads): predict(target, cond_list) -> (logits
    (N, 3, 256), ids) over [cond_proj(cond), r, g, b] (a 1e-2 randn jitter before rounding the targets);
    sample(cond_list, temperature, cfg, filter_threshold) R, G, B by torch.multinomial."""

    def __init__(self, c_channels=16, width=32, depth=2, num_heads=4):
        super().__init__()
        self.pix_mean, self.pix_std = torch.Tensor([0.485, 0.456, 0.406]), torch.Tensor([0.229, 0.224, 0.225])
        self.cond_proj = nn.Linear(c_channels, width)
        self.r_codebook, self.g_codebook, self.b_codebook = (nn.Embedding(256, width) for _ in range(3))
        self.ln, self.norm = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
        self.blocks = nn.ModuleList(CausalBlock(width, num_heads) for _ in range(depth))
        self.r_mlm, self.g_mlm, self.b_mlm = MlmLayer(256), MlmLayer(256), MlmLayer(256)

    def predict(self, target, cond_list):
        mean, std = self.pix_mean.to(target.device)[None], self.pix_std.to(target.device)[None]  # .cuda() there
        target = target.reshape(target.size(0), target.size(1)) * std + mean
        target = (target * 255 + 1e-2 * torch.randn_like(target)).round().long()
        x = torch.cat([self.cond_proj(cond_list[0]).unsqueeze(1), self.r_codebook(target[:, 0:1]),
                       self.g_codebook(target[:, 1:2]), self.b_codebook(target[:, 2:3])], dim=1)
        x = self.ln(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        heads = ((self.r_mlm, self.r_codebook), (self.g_mlm, self.g_codebook), (self.b_mlm, self.b_codebook))
        logits = [mlm(x[:, i], cb.weight) for i, (mlm, cb) in enumerate(heads)]
        return torch.stack(logits, dim=1), target

    def sample(self, cond_list, temperature, cfg, filter_threshold=0):
        bsz = cond_list[0].size(0) if cfg == 1.0 else cond_list[0].size(0) // 2
        pixel_values = torch.zeros(bsz, 3, device=cond_list[0].device)
        for i in range(3):
            logits, _ = self.predict(pixel_values if cfg == 1.0 else torch.cat([pixel_values, pixel_values]),
                                     cond_list)
            logits = logits[:, i] * temperature
            if not cfg == 1.0:
                cond_logits, uncond_logits = logits[:bsz], logits[bsz:]
                mask = torch.softmax(cond_logits, dim=-1) < filter_threshold
                uncond_logits[mask] = torch.max(
                    uncond_logits, cond_logits - torch.max(cond_logits, dim=-1, keepdim=True)[0]
                    + torch.max(uncond_logits, dim=-1, keepdim=True)[0])[mask]
                logits = uncond_logits + cfg * (cond_logits - uncond_logits)
            sampled_ids = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).reshape(-1)
            pixel_values[:, i] = (sampled_ids.float() / 255 - self.pix_mean[i]) / self.pix_std[i]
        return pixel_values


@pytest.fixture
def official(monkeypatch):
    """The stand-ins registered as models.ar, models.mar and models.pixelloss, under their official class names."""
    ns = {}
    for name, classes in (("models.ar", {"Attention": ARAttention, "KVCache": KVCache}),
                          ("models.mar", {"Attention": MARAttention}),
                          ("models.pixelloss", {"CausalAttention": CausalAttention, "PixelLoss": PixelLoss})):
        mod = types.ModuleType(name)
        for official_name, cls in classes.items():
            setattr(mod, official_name, type(official_name, (cls,), {"__module__": name}))
            ns[name.split(".")[1] + "_" + official_name] = getattr(mod, official_name)
        monkeypatch.setitem(sys.modules, name, mod)
    yield types.SimpleNamespace(**ns)
    fastar.patch.undo()


def run(module, x, *args):
    """out, dx, d(first weight) of module(x, *args) under out.square().sum()."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = module(x, *args)
    out.square().sum().backward()
    return out.detach(), x.grad, next(module.parameters()).grad.clone()


def check_training(backend, module, x, *args):
    """Patched (fastar.patch.fractalgen on module) vs the unpatched stand-in, the float64 one as the oracle."""
    dev = backend_device(backend)
    module, x, args = module.to(dev), x.to(dev), [a.to(dev) for a in args]
    ref64 = run(module.double(), x.double(), *(a.double() for a in args))
    ref32 = run(module.float(), x, *args)
    fastar.patch.fractalgen(module)
    got = run(module, x, *args)
    assert fastar.last_backend("attention") == backend
    for name, g, r64, r32 in zip(("out", "dx", "dW"), got, ref64, ref32):
        assert_close("attention" if name == "out" else "attention_bwd", g, r64, r32, scale=r64.abs().max().item())
    return module


def test_ar_attention_training_patched_equals_official(official, backend):
    torch.manual_seed(0)
    attn = official.ar_Attention(ModelArgs())
    check_training(backend, attn, torch.randn(2, 17, 64), rope_2d(4, 16))  # [cond, 16 patches], the 2-D RoPE table
    assert [st for _, _, st in fastar.patch.report(attn)] == ["applied"]


def test_ar_attention_kv_cache_sampling_patched_equals_official(official, backend):
    """AR.sample's protocol: setup_caches (KVCache per block, a bool tril causal_mask over max_seq_length rounded
    up to 8), then one token per step with freqs_cis[input_pos] and causal_mask[input_pos]."""
    torch.manual_seed(1)
    dev = backend_device(backend)
    attn, S, B = official.ar_Attention(ModelArgs()).eval().to(dev), 16, 3
    xs, freqs = torch.randn(B, S, 64, device=dev), rope_2d(4, 16).to(dev)

    def sample(dtype):
        attn.to(dtype)
        attn.kv_cache = KVCache(B, 16, 4, 16).to(dev, dtype)  # setup_caches: under `with torch.device(device)`
        causal_mask = torch.tril(torch.ones(16, 16, dtype=torch.bool, device=dev))
        outs = []
        with torch.no_grad():
            for step in range(S):
                input_pos = torch.Tensor([step]).int()
                outs.append(attn(xs[:, step:step + 1].to(dtype), freqs[input_pos].to(dtype), input_pos,
                                 causal_mask[input_pos]))
        cache, attn.kv_cache = attn.kv_cache.k_cache.clone(), None
        return torch.cat(outs, 1), cache

    (ref64, k64), (ref32, k32) = sample(torch.float64), sample(torch.float32)
    fastar.patch.fractalgen(attn)
    got, k_got = sample(torch.float32)
    assert fastar.last_backend("attention_decode") == backend
    assert torch.equal(k_got, k32)  # the official kv_cache.update wrote the cache
    assert_close("attention", got, ref64, ref32)
    assert [st for _, _, st in fastar.patch.report(attn)] == ["applied"]


def test_ar_attention_declines_and_runs_the_original(official):
    torch.manual_seed(2)
    attn = official.ar_Attention(ModelArgs(n_kv_head=2))
    fastar.patch.fractalgen(attn)
    x, freqs = torch.randn(1, 5, 64), rope_2d(2, 16)
    assert torch.equal(attn(x, freqs), ARAttention.forward(attn, x, freqs))
    assert fastar.patch.report(attn)[0][2] == \
        "declined: 2 kv heads for 4 query heads (FractalGen's AR has one per head)"
    attn = official.ar_Attention(ModelArgs()).eval()
    fastar.patch.fractalgen(attn)
    attn.kv_cache = KVCache(1, 8, 4, 16)
    mask = torch.ones(1, 8, dtype=torch.bool)  # sees the whole cache: not causal_mask[input_pos]
    attn(x[:, :1], freqs[:1], torch.Tensor([0]).int(), mask)
    assert fastar.patch.report(attn)[0][2] == "declined: mask is not causal_mask[input_pos] over contiguous positions"


def test_mar_attention_patched_equals_official_and_declines_dropout(official, backend):
    torch.manual_seed(3)
    attn = check_training(backend, official.mar_Attention(qk_scale=0.3, attn_drop=0.1).eval(), torch.randn(2, 21, 64))
    attn.train()  # the official models/mar.py blocks train with attn_dropout 0.1: the original runs
    x = torch.randn(2, 21, 64, device=backend_device(backend))
    torch.manual_seed(4)
    got = attn(x)
    torch.manual_seed(4)
    assert torch.equal(got, MARAttention.forward(attn, x))
    assert fastar.patch.report(attn)[0][2] == "declined: attention dropout in training (fastar's attention has none)"


def test_pixelloss_causal_attention_patched_equals_official(official, backend):
    torch.manual_seed(5)
    check_training(backend, official.pixelloss_CausalAttention(), torch.randn(6, 4, 32))


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_pixelloss_sample_patched_equals_official(official, backend, cfg):
    """The official sample, torch.multinomial and all: the same pixels from the same seed (sample_categorical races
    the exponentials torch.multinomial draws from the global generator; predict's jitter draws included), so the
    logits (decoded against the KV cache where the official code reruns all 4 tokens), the cfg lift / mix and the
    pixel values are the official ones."""
    torch.manual_seed(6)
    dev = backend_device(backend)
    pix = official.pixelloss_PixelLoss().eval().to(dev)
    cond = torch.randn(10 if cfg != 1.0 else 5, 16, device=dev) * 3

    def sample():
        torch.manual_seed(7)
        with torch.no_grad():
            return pix.sample([cond], temperature=0.9, cfg=cfg, filter_threshold=1e-2)

    want = sample()
    fastar.patch.fractalgen(pix, attention=False)
    got = sample()
    assert fastar.last_backend("sample_categorical") == backend
    assert got.shape == (5, 3) and torch.equal(got, want)
    assert {row.attr: st for _, row, st in fastar.patch.report(pix)} == {"sample": "applied"}


def test_class_patch_undo_restores_the_originals(official):
    classes = (official.ar_Attention, official.mar_Attention, official.pixelloss_CausalAttention,
               official.pixelloss_PixelLoss)
    originals = [c.forward for c in classes[:3]] + [classes[3].sample]
    rows = fastar.patch.fractalgen()
    assert [(r.module, r.cls, r.attr) for r in rows] == [
        ("models.ar", "Attention", "forward"), ("models.mar", "Attention", "forward"),
        ("models.pixelloss", "CausalAttention", "forward"), ("models.pixelloss", "PixelLoss", "sample")]
    torch.manual_seed(8)
    attn, x = official.mar_Attention(), torch.randn(1, 9, 64)
    patched = attn(x)
    fastar.patch.undo()
    assert [c.forward for c in classes[:3]] + [classes[3].sample] == originals
    assert torch.equal(attn(x), MARAttention.forward(attn, x))  # bit-identical: the original again
    assert torch.allclose(patched, attn(x), atol=1e-5)


def test_model_patch_finds_each_level_and_only_its_own_classes(official):
    """A model holding every level: each row reaches its class only (models.ar's Attention is not models.mar's,
    whose name also ends in "ar"), fastar's own FractalGen classes are not touched."""
    model = nn.ModuleDict({"ar": official.ar_Attention(ModelArgs()), "mar": official.mar_Attention(),
                           "pix": official.pixelloss_PixelLoss(), "own": fg.build("fractalmar_in64", **TINY)})
    fastar.patch.fractalgen(model)
    status = {(name, row.module, row.attr) for name, row, st in fastar.patch.report(model) if st == "applied"}
    assert status == {("ar", "models.ar", "forward"), ("mar", "models.mar", "forward"),
                      ("pix.blocks.0.attn", "models.pixelloss", "forward"),
                      ("pix.blocks.1.attn", "models.pixelloss", "forward"), ("pix", "models.pixelloss", "sample")}
    fastar.patch.undo(model)
    assert not any(st == "applied" for *_, st in fastar.patch.report(model))


def test_patch_errors_name_what_is_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "models.ar", raising=False)
    with pytest.raises(ImportError, match="official module 'models.ar' is not imported"):
        fastar.patch.fractalgen()
    monkeypatch.setitem(sys.modules, "models.ar", types.ModuleType("models.ar"))
    with pytest.raises(AttributeError, match="models.ar has no class 'Attention'"):
        fastar.patch.fractalgen(sampling=False)
    with pytest.raises(ValueError, match="no module of model is one of .*models.pixelloss.PixelLoss"):
        fastar.patch.fractalgen(fg.build("fractalmar_in64", **TINY))


# ---- the builders take the official call (main_fractalgen.py) ----

TINY = dict(embed_dim_list=(32, 16, 8), num_blocks_list=(1, 1, 1), num_heads_list=(2, 2, 2), class_num=10)
OFFICIAL_CALL = dict(label_drop_prob=0.1, class_num=1000, attn_dropout=0.1, proj_dropout=0.1, guiding_pixel=False,
                     num_conds=1, r_weight=5.0, grad_checkpointing=False)


@pytest.mark.parametrize("name", list(fg.MODELS))
def test_builders_take_the_official_call(name):
    with torch.device("meta"), pytest.warns(UserWarning, match="attn_dropout=0.1 is not applied"):
        model = getattr(fg, name)(**OFFICIAL_CALL)
    assert model.cfg.num_conds == 1 and model.cfg.class_num == 1000 and not model.cfg.guiding_pixel
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(fg, name)(**{**OFFICIAL_CALL, "attn_dropout": 0.0, "grad_checkpointing": True})


@pytest.mark.parametrize("kind", ["mar", "ar"])
def test_grad_checkpointing_gives_the_same_gradients(kind):
    """grad_checkpointing=True (the official flag) recomputes the blocks in the backward: same loss and gradients."""
    cfg = dict(img_size_list=(4, 2, 1), generator_type_list=(kind, kind), proj_dropout=0.0, **TINY)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(9)
        model = fg.FractalGen(fg.FractalGenConfig(grad_checkpointing=ckpt, **cfg)).train()
        imgs = (torch.randint(256, (2, 3, 4, 4)) / 255 - torch.tensor(fg.fractalgen.PIX_MEAN)[:, None, None]) \
            / torch.tensor(fg.fractalgen.PIX_STD)[:, None, None]
        torch.manual_seed(10)
        model(imgs, torch.tensor([1, 2])).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.generator.blocks.parameters()]))
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)
