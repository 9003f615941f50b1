"""The CUDA attention kernels (csrc/kernels/attention/) on what only they have: their tile sizes (64 queries x 32 or
64 keys forward, 64 or 128 keys x 16 to 64 queries backward), head dims 32 / 64 / 128, the split-key merge, grouped
heads summed in fp32, KV caches read through their strides. Runs on simt (the kernels under the CPU emulator, every
call repeated in reversed and shuffled thread order) and on cuda when a GPU is present."""
import dataclasses
import math

import pytest
import torch

import fastar
from fastar.ops import AttentionMask
from fastar.reference import attention as ref
from tests.conftest import backend_device, deterministic_alerts, sanitized
from tests.tolerance import assert_close

pytestmark = pytest.mark.parametrize("backend", ["simt", "cuda"], indirect=True)


def _inputs(B, H, Hk, Lq, Lk, D, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, L, D, generator=g) for h, L in ((H, Lq), (Hk, Lk), (Hk, Lk)))
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def check(q, k, v, mask, backward=True):
    """Forward (out, lse) and, with backward, the three gradients against the float64 reference."""
    q, k, v = (t.detach().requires_grad_(backward) for t in (q, k, v))
    out, lse = fastar.ops.attention(q, k, v, mask, return_lse=True)
    assert fastar.last_backend("attention") in ("simt", "cuda")
    cpu = [t.detach().cpu() for t in (q, k, v)]
    m = mask if mask is None or mask.key_len is None else dataclasses.replace(mask, key_len=mask.key_len.cpu())
    refs = {}
    for name, dt in (("64", torch.float64), ("lowp", q.dtype)):
        qq, kk, vv = (t.to(dt).requires_grad_(backward) for t in cpu)
        o, l = ref.attention(qq, kk, vv, m, return_lse=True)
        refs[name] = (qq, kk, vv, o, l)
    assert_close("attention", out.cpu(), refs["64"][3], refs["lowp"][3])
    lse_ref = refs["64"][4]
    assert torch.equal(lse.cpu().isinf(), lse_ref.isinf()), "rows that see no key differ"
    assert_close("attention", lse.cpu(), lse_ref.float(), refs["lowp"][4])
    if not backward:
        return
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(q.dtype)
    grads = torch.autograd.grad(out, (q, k, v), dout.to(out.device))
    for r in refs.values():
        r[3].backward(dout.to(r[3].dtype))
    for name, got, r64, rlow in zip(("dq", "dk", "dv"), grads, refs["64"][:3], refs["lowp"][:3]):
        assert got.shape == r64.shape and got.dtype == q.dtype, name
        assert_close("attention_bwd", got.cpu(), r64.grad, rlow.grad)


# (Lq, Lk): one query, one short of / at / one past the 64-row tiles, Lq > Lk (rows that see no key under the
# bottom-right causal mask), Lq < Lk.
EDGES = [(1, 3), (63, 65), (64, 64), (65, 129), (100, 37), (20, 150)]


@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("Lq,Lk", sanitized(EDGES, {(65, 129), (100, 37)}, unpack=True), ids=str)
def test_tile_edges_causal(backend, dtype, D, Lq, Lk):
    check(*_inputs(1, 2, 2, Lq, Lk, D, dtype, backend_device(backend), Lq * 131 + Lk + D), AttentionMask.causal())


@pytest.mark.parametrize("Hk", sanitized([1, 2], {1}))
def test_grouped_heads_and_key_len(backend, dtype, Hk):
    """k/v shared by H / Hk query heads (dk, dv summed over the group in fp32), padded key lengths incl. 0."""
    q, k, v = _inputs(3, 4, Hk, 70, 70, 64, dtype, backend_device(backend), 11 + Hk)
    key_len = torch.tensor([70, 33, 0], device=q.device)
    check(q, k, v, AttentionMask.full(key_len=key_len))


@pytest.mark.sanitize
def test_split_keys_with_hidden_splits(backend, dtype):
    """One head, few query tiles: the keys are split over blocks and merged; causal leaves some splits with no
    visible key for a query tile (lse -inf partials), block-causal with VAR's first scales too."""
    dev = backend_device(backend)
    check(*_inputs(1, 1, 1, 300, 300, 64, dtype, dev, 3), AttentionMask.causal())
    seg = [1, 4, 9, 16, 25, 36, 64, 100]
    check(*_inputs(1, 1, 1, sum(seg), sum(seg), 32, dtype, dev, 4), AttentionMask.block_causal(seg))


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_dalle_partial_tiles(backend, kind):
    """A text prefix that is not a multiple of the tiles, a 16 x 16 grid: most tiles are partial."""
    mask = AttentionMask.dalle(kind, text_len=40, grid=16, conv_kernel=5)
    check(*_inputs(1, 2, 1, 296, 296, 64, torch.bfloat16, backend_device(backend), 5), mask)


@pytest.mark.parametrize("cache_len", sanitized([0, 1, 200, 680], {0, 200}))
def test_decode_reads_the_cache_in_place(backend, dtype, cache_len):
    """A preallocated (B, Hk, 700, D) cache, first cache_len rows valid, a VAR scale of 16 queries and one token."""
    dev = backend_device(backend)
    for Lq in (16, 1):
        q, k_cache, v_cache = _inputs(2, 4, 2, Lq, 700, 64, dtype, dev, cache_len + Lq)
        out, lse = fastar.ops.attention_decode(q, k_cache, v_cache, cache_len, return_lse=True)
        assert fastar.last_backend("attention_decode") in ("simt", "cuda")
        cpu = [t.cpu() for t in (q, k_cache, v_cache)]
        o64, l64 = ref.attention_decode(*(t.double() for t in cpu), cache_len, return_lse=True)
        olow, llow = ref.attention_decode(*cpu, cache_len, return_lse=True)
        assert_close("attention", out.cpu(), o64, olow)
        assert torch.equal(lse.cpu().isinf(), l64.isinf())
        assert_close("attention", lse.cpu(), l64.float(), llow)


@pytest.mark.parametrize("D", sanitized([8, 48, 80]))
def test_other_head_dims_run_padded(backend, D):
    """Head dims between the kernels' 32 / 64 / 128 run zero-padded to the next one."""
    check(*_inputs(2, 2, 1, 40, 70, D, torch.float16, backend_device(backend), D), AttentionMask.causal())


@pytest.mark.sanitize
def test_head_dim_above_128_names_the_limit(backend):
    """fastar.ops runs the torch backend for it (test_attention.py::test_attention_wide_head); direct torch.ops
    callers get the binding's message."""
    q, k, v = _inputs(1, 1, 1, 8, 8, 160, torch.float32, backend_device(backend), 0)
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    with pytest.raises(RuntimeError, match="head dims up to 128, got 160"):
        ns.attention_fwd(q, k, v, 0, [0, 0, 11], None, None, 1.0)


@pytest.mark.sanitize
def test_scale_is_applied_before_the_mask(backend):
    """A scale other than 1/sqrt(D), with a row whose keys are all hidden except one."""
    q, k, v = _inputs(1, 1, 1, 65, 65, 32, torch.float32, backend_device(backend), 9)
    out = fastar.ops.attention(q, k, v, AttentionMask.causal(), scale=0.3)
    o64 = ref.attention(*(t.cpu().double() for t in (q, k, v)), AttentionMask.causal(), scale=0.3)
    assert_close("attention", out.cpu(), o64, ref.attention(*(t.cpu() for t in (q, k, v)), AttentionMask.causal(),
                                                            scale=0.3))
    assert math.isclose(out[0, 0, 0, 0].item(), v[0, 0, 0, 0].item(), rel_tol=1e-6)


@pytest.mark.parametrize("shape", sanitized([(0, 2, 1, 5, 5), (2, 0, 1, 5, 5), (1, 2, 1, 0, 5), (1, 2, 1, 5, 0)]),
                         ids=str)
def test_empty(backend, shape):
    """No batch rows, no query heads, no queries, no keys (out 0 and lse -inf; zero gradients)."""
    B, H, Hk, Lq, Lk = shape
    q, k, v = (t.requires_grad_() for t in _inputs(B, H, Hk, Lq, Lk, 32, torch.float32, backend_device(backend), 0))
    out, lse = fastar.ops.attention(q, k, v, return_lse=True)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert (out == 0).all() and (lse == -math.inf).all()
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(g.shape == t.shape and (g == 0).all() for g, t in zip(grads, (q, k, v)))


def test_backward_alerts_deterministic_algorithms(backend):
    """dq is added by fp32 atomics across key blocks, in an order a GPU does not fix: the cuda backward alerts
    torch.use_deterministic_algorithms (raises, or warns with warn_only); the forward does not, nor the tiny kernel
    (Lk <= 32: no atomics) or the simt build (one block order per schedule)."""
    def backward(L):
        q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 2, L, L, 32, torch.float32, backend_device(backend), L))
        torch.autograd.grad(fastar.ops.attention(q, k, v, AttentionMask.causal()).sum(), (q, k, v))
    assert deterministic_alerts("attention_bwd", lambda: backward(200)) == (backend == "cuda")
    assert not deterministic_alerts("attention_bwd", lambda: backward(20))
