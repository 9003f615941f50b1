"""attention / attention_decode on every backend against the float64 reference, forward and the three gradients."""
import warnings

import pytest
import torch

import fastar
from fastar.ops import AttentionMask
from fastar.reference import attention as ref
from tests.conftest import backend_device, run_with_cpu_isa, sanitized
from tests.tolerance import assert_close

KINDS = ("full", "causal", "block_causal", "row", "column", "conv")
VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
# (B, H, Hk, Lq, Lk, D): one token, tails of the 32 x 64 tiles, multi-query heads, Lq != Lk both ways,
# head dims 32 / 64 / 128 and an odd one.
SHAPES = [(1, 1, 1, 1, 1, 32), (2, 4, 4, 70, 70, 64), (1, 4, 2, 33, 97, 32), (1, 2, 1, 100, 61, 128),
          (2, 3, 3, 129, 129, 24)]


@pytest.fixture
def attn_backend(backend):
    # The simt (and cuda) kernels come from the attention-cuda branch. fastar_simt defines every schema of
    # csrc/torch/ops.h, so the op exists before its kernel: skip only while no kernel is registered for it,
    # never on a kernel that is there and fails.
    if backend == "simt" and not torch._C._dispatch_has_kernel_for_dispatch_key("fastar_simt::attention_fwd", "CPU"):
        pytest.skip("fastar_simt has no attention kernel yet (the CUDA kernels are not merged)")
    if backend == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key("fastar::attention_fwd", "CUDA"):
        pytest.skip("fastar has no CUDA attention kernel yet")
    return backend


def seg_lens_for(L):
    """VAR's scale lengths pn^2 up to L keys, the last one cut to fit."""
    lens, total, pn = [], 0, 1
    while total < L:
        lens.append(min(pn * pn, L - total))
        total, pn = total + lens[-1], pn + 1
    return lens


def make_mask(kind, Lk, key_len=None):
    if kind in ("full", "causal"):
        return getattr(AttentionMask, kind)(key_len=key_len)
    if kind == "block_causal":
        return AttentionMask.block_causal(seg_lens_for(Lk), key_len=key_len)
    grid = 8 if Lk >= 64 else 4 if Lk >= 16 else 1
    return AttentionMask.dalle(kind, max(Lk - grid * grid, 0), grid, conv_kernel=3, key_len=key_len)


def randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def run(q, k, v, mask, dout, dev, **kw):
    """out, lse and (dq, dk, dv) of fastar.ops.attention with q, k, v moved to dev; results on the CPU."""
    q, k, v = (t.to(dev).requires_grad_() for t in (q, k, v))
    out, lse = fastar.ops.attention(q, k, v, mask, return_lse=True, **kw)
    grads = torch.autograd.grad(out, (q, k, v), dout.to(dev))
    return out.cpu(), lse.cpu(), [g.cpu() for g in grads]


def reference(q, k, v, mask, dout, dtype, **kw):
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out, lse = ref.attention(q, k, v, mask, return_lse=True, **kw)
    return out, lse, torch.autograd.grad(out, (q, k, v), dout.to(dtype))


def check(q, k, v, mask, backend, grads=True, device=None, **kw):
    """fastar vs the float64 reference with the tolerance of tests/tolerance.py, in q's dtype. device: where the op
    runs (default: the backend's)."""
    dout = randn(*q.shape, dtype=q.dtype, seed=99)
    out, lse, g = run(q, k, v, mask, dout, device or backend_device(backend), **kw)
    assert fastar.last_backend("attention") == backend
    assert out.dtype == q.dtype and lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    out64, lse64, g64 = reference(q, k, v, mask, dout, torch.float64, **kw)
    out_lp, lse_lp, g_lp = reference(q, k, v, mask, dout, q.dtype, **kw)
    assert torch.equal(lse.isinf(), lse64.isinf()), "rows that see no key differ from the reference"
    assert_close("attention", out, out64, out_lp)
    assert_close("attention", lse, lse64, lse_lp)
    if grads:
        scale = max(a.abs().max().item() for a in g64 if a.numel())  # dq and dk cancel to 0 for a single key
        for name, a, a64, a_lp in zip("qkv", g, g64, g_lp):
            assert a.dtype == q.dtype, f"d{name} dtype"
            assert_close("attention_bwd", a, a64, a_lp, scale=scale)
    return out, lse


# sanitize: every mask kind and dtype at grouped heads, Lq != Lk and partial tiles.
@pytest.mark.parametrize("shape", sanitized(SHAPES, {(1, 4, 2, 33, 97, 32)}), ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_attention_masks(attn_backend, dtype, kind, shape):
    B, H, Hk, Lq, Lk, D = shape
    q = randn(B, H, Lq, D, dtype=dtype, seed=1)
    k, v = randn(B, Hk, Lk, D, dtype=dtype, seed=2), randn(B, Hk, Lk, D, dtype=dtype, seed=3)
    check(q, k, v, make_mask(kind, Lk), attn_backend)


def test_attention_wide_head(attn_backend):
    """The VQVAE's one 640-wide head over 16 x 16 positions: the CPU kernel takes it; where the kernel does not
    (simt and CUDA stop at 128), fastar.ops.attention runs the torch backend, warns once and says so."""
    q, k, v = (randn(2, 1, 256, 640, dtype=torch.float32, seed=s) for s in (1, 2, 3))
    top = fastar.ops.max_head_dim(backend_device(attn_backend))
    assert top == (1024 if attn_backend == "cpu" else 128)
    if attn_backend == "cpu":
        check(q, k, v, None, attn_backend)
        return
    fastar._backend._warned.clear()  # the warning is once per process: this test must see it
    with pytest.warns(UserWarning, match=f"the {attn_backend} kernel takes head dims up to 128, got 640; running "
                                         f"the torch backend"):
        check(q, k, v, None, "torch", device=backend_device(attn_backend))


def test_attention_float64_off_the_cpu(attn_backend):
    """float64 (gradcheck's dtype): the CPU kernels take it; simt and CUDA have no float64 tiles, so the op runs
    the torch backend and says so (the simt kernel raised)."""
    q, k, v = (randn(1, 2, 9, 16, dtype=torch.float64, seed=s) for s in (4, 5, 6))
    mask, dev = AttentionMask.causal(), backend_device(attn_backend)
    fastar._backend._warned.clear()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        out = fastar.ops.attention(q.to(dev), k.to(dev), v.to(dev), mask).cpu()
    ran = fastar.last_backend("attention")
    assert ran == ("cpu" if attn_backend == "cpu" else "torch")
    assert (ran == "torch") == any(f"the {attn_backend} kernel takes float32, bfloat16 and float16, got float64"
                                   in str(w.message) for w in said)
    torch.testing.assert_close(out, ref.attention(q, k, v, mask), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("patch_nums", [VAR_PATCH_NUMS, VAR_PATCH_NUMS + (20, 24, 32)], ids=["L680", "L2240"])
def test_attention_var_block_causal(attn_backend, patch_nums):
    """VAR's training mask at 256 px (L = 680) and 512 px (L = 2240, forward + backward once)."""
    if attn_backend == "simt" and len(patch_nums) > len(VAR_PATCH_NUMS):
        pytest.skip("L2240 runs on cpu and cuda: under the emulator it takes minutes for the paths L680 takes")
    mask = AttentionMask.block_causal([pn * pn for pn in patch_nums])
    L = sum(mask.seg_lens)
    q, k, v = (randn(1, 2, L, 64, dtype=torch.float32, seed=s) for s in (4, 5, 6))
    check(q, k, v, mask, attn_backend)


def test_attention_dalle_256_text_1024_image(attn_backend):
    """DALL-E's layout: 256 text tokens then a 32 x 32 image, conv mask with the 11 x 11 kernel."""
    mask = AttentionMask.dalle("conv", 256, 32)
    q, k, v = (randn(1, 1, 1280, 64, dtype=torch.float32, seed=s) for s in (7, 8, 9))
    check(q, k, v, mask, attn_backend)


@pytest.mark.parametrize("L", sanitized([1, 7, 32], {7}))  # sanitize: 512 blocks, so no key split
@pytest.mark.parametrize("kind", ["full", "causal"])
def test_attention_many_short_sequences(attn_backend, kind, L):
    """FractalGen: B * H large (272 query tiles, two waves of an H100's 132 SMs: the keys are not split), L <= 32."""
    q, k, v = (randn(34, 8, L, 32, dtype=torch.float32, seed=s) for s in (10, 11, 12))
    check(q, k, v, make_mask(kind, L), attn_backend)


@pytest.mark.parametrize("kind", sanitized(KINDS))
def test_attention_padded_key_lengths(attn_backend, kind):
    """key_len per batch row, including 0 (rows that see no key: out 0, lse -inf, gradients 0)."""
    key_len = torch.tensor([90, 0, 37, 1])
    q, k, v = (randn(4, 2, 90, 32, dtype=torch.float32, seed=s) for s in (13, 14, 15))
    out, lse = check(q, k, v, make_mask(kind, 90, key_len), attn_backend)
    assert (out[1] == 0).all() and (lse[1] == -torch.inf).all()


@pytest.mark.parametrize("kind", sanitized(["full", "causal", "block_causal"], {"block_causal"}))
def test_attention_strided_rows(attn_backend, dtype, kind):
    """q, k, v as VAR's model makes them: (B, H, L, D) views of one (B, L, 3, H, D) qkv tensor (row stride 3 H D),
    read in place by the CPU kernels; forward, gradients and decode."""
    B, L, H, D = 2, 75, 3, 32
    qkv = randn(B, L, 3, H, D, dtype=dtype, seed=30)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D), row stride 3 H D
    check(q, k, v, make_mask(kind, L), attn_backend)
    dev = backend_device(attn_backend)
    q, k, v = (t.detach() for t in (q, k, v))  # check() made them require grad: the decode kernel runs without
    out = fastar.ops.attention_decode(q[:, :, -20:].to(dev), k.to(dev), v.to(dev), 60)
    assert fastar.last_backend("attention_decode") == attn_backend
    out64 = ref.attention(q[:, :, -20:].double(), k[:, :, :60].double(), v[:, :, :60].double())
    assert_close("attention", out.cpu(), out64, ref.attention(q[:, :, -20:], k[:, :, :60], v[:, :, :60]))


def test_attention_scale(attn_backend):
    q, k, v = (randn(1, 2, 50, 16, dtype=torch.float32, seed=s) for s in (16, 17, 18))
    check(q, k, v, AttentionMask.causal(), attn_backend, scale=0.3)


# (B, H, Hk, Lq, Lmax, cache_len, D): VAR-d16's last scale on its cache (one image: more only repeat the blocks),
# one token, an empty cache; sanitize: the last two (VAR's scale takes the same paths at 100x the work).
DECODE_SHAPES = [(1, 16, 4, 256, 700, 680, 64), (1, 1, 1, 1, 700, 680, 64), (2, 4, 2, 3, 50, 0, 32)]


@pytest.mark.parametrize("shape", sanitized(DECODE_SHAPES, DECODE_SHAPES[1:]),
                         ids=["VAR-scale", "one-token-split-keys", "empty-cache"])
def test_attention_decode(attn_backend, dtype, shape):
    """New queries against the valid prefix of a preallocated cache = attention over that prefix."""
    B, H, Hk, Lq, Lmax, cache_len, D = shape
    q = randn(B, H, Lq, D, dtype=dtype, seed=19)
    k_cache, v_cache = randn(B, Hk, Lmax, D, dtype=dtype, seed=20), randn(B, Hk, Lmax, D, dtype=dtype, seed=21)
    dev = backend_device(attn_backend)
    out, lse = fastar.ops.attention_decode(q.to(dev), k_cache.to(dev), v_cache.to(dev), cache_len, return_lse=True)
    assert fastar.last_backend("attention_decode") == attn_backend
    k, v = k_cache[:, :, :cache_len], v_cache[:, :, :cache_len]
    out64, lse64 = ref.attention(q.double(), k.double(), v.double(), return_lse=True)
    out_lp, lse_lp = ref.attention(q, k, v, return_lse=True)
    assert_close("attention", out.cpu(), out64, out_lp)
    assert_close("attention", lse.cpu(), lse64, lse_lp)


# Decode under the masks where every query sees a key prefix (full, causal, block-causal; key_len on top). The CPU
# runs them fused when the query blocks alone give every thread work (here: B H = 4 threads), one query at a time
# over its span of keys when they are too few to fill a block (Lq <= 6 on AVX2, 8 on AVX-512), else it splits the keys
# (one head, one block: any Lq <= 3). (path, Lq, cache_len): one query, a few, then fused: three vectors less a few
# (a block of three vectors on SSE2 / AVX2), two with a tail, blocks of several vectors and a one-vector tail; caches
# past the fused kernel's 128-key softmax step; D = 40 leaves tails of its register tiles. Last rows too few for a
# block of their own go span by span after the blocks: VAR's 25 queries (one past AVX2's 24-row block), 50 (two past
# two blocks), 40 (eight past AVX-512's 32).
PREFIX_DECODE = [("spans", 1, 300), ("spans", 5, 37), ("fused", 21, 300), ("fused", 40, 300), ("fused", 50, 300),
                 ("fused", 25, 55), ("split-keys", 1, 300), ("split-keys", 3, 37)]


@pytest.mark.parametrize("path, Lq, cache_len", PREFIX_DECODE, ids=lambda x: str(x))
@pytest.mark.parametrize("kind", ["full", "causal", "block_causal", "key_len"])
def test_attention_decode_prefix_masks(dtype, kind, path, Lq, cache_len):
    B, H, Hk, D = (2 * torch.get_num_threads(), 2, 1, 40) if path != "split-keys" else (1, 1, 1, 40)
    key_len = None
    if kind == "key_len":  # every row a different valid length: all, none (out 0, lse -inf), one, a chunk and one
        key_len = torch.tensor([cache_len, 0, 1, min(257, cache_len)] * B)[:B]
    mask = make_mask("full" if kind == "key_len" else kind, cache_len, key_len)
    q = randn(B, H, Lq, D, dtype=dtype, seed=40)
    k_cache, v_cache = (randn(B, Hk, cache_len + 7, D, dtype=dtype, seed=s) for s in (41, 42))
    out, lse = fastar.ops.attention_decode(q, k_cache, v_cache, cache_len, mask, return_lse=True)
    k, v = k_cache[:, :, :cache_len], v_cache[:, :, :cache_len]
    out64, lse64 = ref.attention(q.double(), k.double(), v.double(), mask, return_lse=True)
    out_lp, lse_lp = ref.attention(q, k, v, mask, return_lse=True)
    assert torch.equal(lse.isinf(), lse64.isinf()), "rows that see no key differ from the reference"
    assert_close("attention", out, out64, out_lp)
    assert_close("attention", lse, lse64, lse_lp)
    o, l = fastar.ops.attention_decode(q.double(), k_cache.double(), v_cache.double(), cache_len, mask,
                                       return_lse=True)  # float64 computes in float64 on the same path
    assert torch.allclose(o, out64, atol=1e-12) and torch.equal(l.isinf(), lse64.isinf())
    assert torch.allclose(l[~l.isinf()], lse64[~l.isinf()], atol=1e-12)


@pytest.mark.parametrize("kind", ["full", "causal"])
def test_attention_decode_rising_scores(kind):
    """Scores that climb by 2 per key (and fall, on the negated queries): the fused CPU decode moves its lagging
    max and rescales the running sum and the accumulator at every one of its 128-key steps."""
    B, H, Lq, cache_len, D = 2 * torch.get_num_threads(), 2, 24, 600, 16
    g = torch.Generator().manual_seed(43)
    ramp = 2.0 * torch.arange(cache_len + 5, dtype=torch.float32)[:, None].expand(-1, D) / D ** 0.5
    k_cache = (ramp + 0.1 * torch.randn(B, H, cache_len + 5, D, generator=g)).contiguous()
    v_cache = torch.randn(B, H, cache_len + 5, D, generator=g)
    q = torch.ones(B, H, Lq, D) / D ** 0.5 + 0.1 * torch.randn(B, H, Lq, D, generator=g)
    q[:, :, ::2] *= -1
    mask = make_mask(kind, cache_len)
    out, lse = fastar.ops.attention_decode(q, k_cache, v_cache, cache_len, mask, scale=1.0, return_lse=True)
    k, v = k_cache[:, :, :cache_len], v_cache[:, :, :cache_len]
    out64, lse64 = ref.attention(q.double(), k.double(), v.double(), mask, scale=1.0, return_lse=True)
    out_lp, lse_lp = ref.attention(q, k, v, mask, scale=1.0, return_lse=True)
    assert_close("attention", out, out64, out_lp)
    assert_close("attention", lse, lse64, lse_lp)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_gradcheck(kind):
    """gradcheck in float64 through the CPU kernels (they compute float64 inputs in float64)."""
    g = torch.Generator().manual_seed(22)
    q = torch.randn(1, 2, 21, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k, v = (torch.randn(1, 1, 21, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    mask = make_mask(kind, 21, key_len=torch.tensor([19]))
    assert torch.autograd.gradcheck(lambda q, k, v: fastar.ops.attention(q, k, v, mask), (q, k, v))
    assert fastar.last_backend("attention") == "cpu"


@pytest.mark.parametrize("uses", ["out and lse", "lse only"])
@pytest.mark.parametrize("kind", ["causal", "block_causal", "row"])
def test_attention_lse_gradient(attn_backend, kind, uses):
    """A loss on lse too (split-attention merges, ring attention): its gradient, P row by row, reaches q and k as
    the reference's does (it was dropped: lse was marked non-differentiable)."""
    q = randn(1, 4, 33, 32, dtype=torch.float32, seed=40)
    k, v = (randn(1, 2, 33, 32, dtype=torch.float32, seed=s) for s in (41, 42))
    mask = make_mask(kind, 33)
    w_out, w_lse = randn(*q.shape, dtype=torch.float64, seed=43), randn(*q.shape[:3], dtype=torch.float64, seed=44)

    def grads(attention, dtype, dev):
        q_, k_, v_ = (t.to(dev, dtype).requires_grad_() for t in (q, k, v))
        out, lse = attention(q_, k_, v_, mask, return_lse=True)
        loss = (lse * w_lse.to(lse)).sum() + (0 if uses == "lse only" else (out * w_out.to(out)).sum())
        return [g.cpu() if g is not None else torch.zeros_like(t).cpu()
                for g, t in zip(torch.autograd.grad(loss, (q_, k_, v_), allow_unused=True), (q_, k_, v_))]
    got = grads(fastar.ops.attention, torch.float32, backend_device(attn_backend))
    assert fastar.last_backend("attention") == attn_backend
    g64, g32 = grads(ref.attention, torch.float64, "cpu"), grads(ref.attention, torch.float32, "cpu")
    scale = max(a.abs().max().item() for a in g64)
    for a, a64, a32 in zip(got, g64, g32):
        assert_close("attention_bwd", a, a64, a32, scale=scale)


def test_attention_double_backward_raises():
    """The backward is a kernel: a second derivative through it would be zero, so create_graph=True says so."""
    q, k, v = (randn(1, 2, 9, 8, dtype=torch.float64, seed=s).requires_grad_() for s in (45, 46, 47))
    with pytest.raises(RuntimeError, match="fastar.ops.attention: double backward"):
        torch.autograd.grad(fastar.ops.attention(q, k, v).square().sum(), q, create_graph=True)
    (dq,) = torch.autograd.grad(fastar.ops.attention(q, k, v).square().sum(), q)  # first order as before
    assert dq.abs().sum() > 0


def test_attention_opcheck(attn_backend):
    if attn_backend == "cuda":
        pytest.skip("opcheck runs on the cpu and simt registrations; cuda shares the fake kernels")
    ns = torch.ops.fastar_simt if attn_backend == "simt" else torch.ops.fastar
    q, k, v = (randn(2, 2, 40, 16, dtype=torch.float32, seed=s).requires_grad_() for s in (23, 24, 25))
    kv_end = torch.tensor([10] * 10 + [40] * 30, dtype=torch.int32)
    key_len = torch.tensor([40, 25], dtype=torch.int32)
    for args in [(q, k, v, 2, [0, 0, 11], kv_end, key_len, 0.25), (q, k, v, 5, [8, 4, 3], None, None, 0.25)]:
        torch.library.opcheck(ns.attention_fwd.default, args)
        out, lse = (t.detach() for t in ns.attention_fwd(*args))
        qkv = [t.detach() for t in args[:3]]  # attention_bwd is not differentiable itself
        torch.library.opcheck(ns.attention_bwd.default, (torch.randn_like(out), *qkv, out, lse, *args[3:]))
    for mask_args in [(0, [0, 0, 11], None, None), (4, [6, 4, 3], None, key_len)]:  # full; DALL-E column, padded
        torch.library.opcheck(ns.attention_decode.default, (q[:, :, :1].detach(), k.detach(), v.detach(), 22,
                                                            *mask_args, 0.25))


def test_attention_compiles_fullgraph():
    q, k, v = (randn(2, 4, 30, 16, dtype=torch.float32, seed=s).requires_grad_() for s in (26, 27, 28))
    mask = AttentionMask.block_causal([1, 4, 9, 16])

    @torch.compile(fullgraph=True)
    def layer(q, k, v):
        return fastar.ops.attention(q, k, v, mask).sum(1)  # (2, 30, 16)

    out = layer(q, k, v)
    out.sum().backward()
    expected = ref.attention(q.double(), k.double(), v.double(), mask).sum(1)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    assert q.grad is not None and k.grad is not None and v.grad is not None


# Run in a child process per instruction set: the float32 exp polynomial and the float64 path of each (gradcheck on
# one head's 9 queries: 360 inputs, not 2160, for the same code).
ISA_CHILD = """
import torch, fastar
from fastar.reference import attention as ref
assert fastar.build_info()["cpu_isa"] == "%s"
g = torch.Generator().manual_seed(29)
q, k, v = (torch.randn(2, 3, 77, 40, generator=g) for _ in range(3))
mask = fastar.ops.AttentionMask.causal()
q.requires_grad_()
fastar.ops.attention(q, k, v, mask).sum().backward()
q64 = q.detach().double().requires_grad_()
ref.attention(q64, k.double(), v.double(), mask).sum().backward()
assert (q.grad - q64.grad).abs().max() < 1e-5, (q.grad - q64.grad).abs().max()
torch.autograd.gradcheck(lambda q: fastar.ops.attention(q, k[:1, :1].double(), v[:1, :1].double(), mask),
                         (q64[:1, :1, :9],))
torch.set_num_threads(1)  # decode fused (its blocks give the one thread work): 21 queries against 40 keys
for dt in (torch.float32, torch.float64):
    out = fastar.ops.attention_decode(q[:, :, :21].detach().to(dt), k.to(dt), v.to(dt), 40, mask)
    expected = ref.attention_decode(q[:, :, :21].double(), k.double(), v.double(), 40, mask)
    assert (out.double() - expected).abs().max() < 1e-5, (out.double() - expected).abs().max()
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_attention_every_cpu_isa(isa):
    """Each instruction-set variant of the softmax and decode micro-kernels matches the reference."""
    run_with_cpu_isa(isa, ISA_CHILD % isa)


def _qkv(Lq=8, Lk=8, D=16, H=2, Hk=2, dtype=torch.float32):
    return torch.randn(1, H, Lq, D, dtype=dtype), torch.randn(1, Hk, Lk, D), torch.randn(1, Hk, Lk, D)


@pytest.mark.parametrize("make, error, match", [
    (lambda: (*_qkv()[:2], torch.randn(1, 2, 9, 16)), ValueError, r"k \(1, 2, 8, 16\) and v \(1, 2, 9, 16\)"),
    (lambda: (torch.randn(1, 2, 8, 8), *_qkv()[1:]), ValueError, "must match q"),
    (lambda: _qkv(H=3), ValueError, "q's 3 heads must be a multiple of k's 2"),
    (lambda: (torch.randn(1, 1, 4, 0), torch.randn(1, 1, 4, 0), torch.randn(1, 1, 4, 0)), ValueError,
     r"head dim \(dim 3\) of at least 1, got 0"),
    (lambda: (torch.randn(2, 8, 16), *_qkv()[1:]), ValueError, "q must have 4 dims"),
    (lambda: (_qkv()[0].half(), *_qkv()[1:]), TypeError, "q, k and v must share a dtype"),
    (lambda: (torch.randint(0, 3, (1, 2, 8, 16)), *_qkv()[1:]), TypeError, "q must be one of"),
])
def test_attention_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        fastar.ops.attention(*make())


@pytest.mark.parametrize("mask, match", [
    (AttentionMask.block_causal([1, 4, 9]), "seg_lens sum to 14 but there are 8 keys"),
    (AttentionMask.causal(key_len=torch.tensor([3, 4])), r"mask.key_len must have shape \(1,\)"),
    (AttentionMask.causal(key_len=torch.tensor([3], device="meta")), "mask.key_len is on the meta device"),
    ("causal", "mask must be a fastar.ops.AttentionMask"),
])
def test_attention_bad_mask(mask, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastar.ops.attention(*_qkv(), mask)


def test_attention_bad_mask_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionMask.dalle("diagonal", 16, 8)
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        AttentionMask.dalle("conv", 16, 8, conv_kernel=4)
    with pytest.raises(TypeError, match="grid must be an int, got float 2.5"):
        AttentionMask.dalle("row", 16, 2.5)
    with pytest.raises(ValueError, match=r"seg_lens\[1\] must be >= 1, got 0"):
        AttentionMask.block_causal([1, 0, 3])
    with pytest.raises(TypeError, match=r"seg_lens\[0\] must be an int, got float 1.5"):  # once truncated to 1
        AttentionMask.block_causal([1.5, 9.5])
    assert AttentionMask.block_causal(torch.tensor([1, 4])).seg_lens == (1, 4)
    with pytest.raises(ValueError, match="cache_len must be in"):
        fastar.ops.attention_decode(*_qkv(), 9)
    with pytest.raises(TypeError, match="cache_len must be an int, got the bool True"):
        fastar.ops.attention_decode(*_qkv(), True)
    # key_len: integers only (a float 3.7 was truncated by the kernels, compared as 3.7 by the reference)
    with pytest.raises(TypeError, match=r"key_len must be a 1-D integer tensor .* got torch.float32 of shape \(1,\)"):
        AttentionMask.full(key_len=torch.tensor([3.7]))
    with pytest.raises(TypeError, match=r"key_len\[1\] must be an int"):
        AttentionMask.causal(key_len=[3, 4.5])
    q, k, v = _qkv()
    as_list = fastar.ops.attention(q, k, v, AttentionMask.full(key_len=[5]))
    assert torch.equal(as_list, fastar.ops.attention(q, k, v, AttentionMask.full(key_len=torch.tensor([5]))))
    with pytest.raises(ValueError, match=r"text_len 2 and a 2 x 2 grid covers 6 keys, got 8"):
        fastar.ops.attention(q, k, v, AttentionMask.dalle("row", 2, 2))


def test_attention_binding_checks():
    """Direct torch.ops callers get named errors from the binding layer too."""
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="mask_kind must be in"):
        torch.ops.fastar.attention_fwd(q, k, v, 7, [0, 0, 11], None, None, 1.0)
    with pytest.raises(RuntimeError, match="kv_end must be given for the block-causal mask"):
        torch.ops.fastar.attention_fwd(q, k, v, 2, [0, 0, 11], None, None, 1.0)
    with pytest.raises(RuntimeError, match="kv_end must be a contiguous int32 tensor of 8 entries"):
        torch.ops.fastar.attention_fwd(q, k, v, 2, [0, 0, 11], torch.arange(8), None, 1.0)
    with pytest.raises(RuntimeError, match="head dim must be in"):
        torch.ops.fastar.attention_fwd(*(torch.randn(1, 1, 2, 1025) for _ in range(3)), 0, [0, 0, 11], None, None, 1.0)
    with pytest.raises(RuntimeError, match="lse must be"):
        torch.ops.fastar.attention_bwd(q, q, k, v, q, torch.zeros(1, 2), 0, [0, 0, 11], None, None, 1.0)


@pytest.mark.parametrize("module", ["_C", "_simt"])
def test_attention_capabilities(module):
    """The reference's mask numbering is the kernels' (csrc/kernels/attention/mask.h), as each extension exports it."""
    ext = getattr(fastar._backend, module)
    if ext is None:
        pytest.skip(f"fastar.{module} is not built")
    caps = ext.capabilities()["attention"]
    assert caps["mask_kinds"] == ref.KINDS
    assert set(caps["max_head_dim"]) == ({"cpu", "cuda"} if module == "_C" else {"simt"})
