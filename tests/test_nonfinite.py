"""Non-finite inputs on every backend, as the reference treats them: a NaN reaches exactly the outputs that read it
(never taken for a masked score, never dropped by a max), the other rows are untouched (bit for bit the clean
input's), a row that sees no key still gives out 0 and lse -inf."""
import pytest
import torch

import fastar
from fastar.ops import AttentionMask
from tests.conftest import backend_device
from tests.test_attention import attn_backend, randn  # noqa: F401 (attn_backend: a fixture)

NAN, INF = float("nan"), float("inf")
# (B, H, Lq, Lk, D): FractalGen's tiny sequences (the CPU's whole-sequence path), the tiled path, one query over many
# keys at B * H = 1 (the keys split over threads / blocks, then merged)
SHAPES = [(3, 2, 6, 6, 16), (1, 2, 70, 70, 64), (1, 1, 1, 300, 64)]


def attend(q, k, v, mask, backend, decode):
    dev = backend_device(backend)
    q, k, v = q.to(dev), k.to(dev), v.to(dev)
    if decode:
        out, lse = fastar.ops.attention_decode(q, k, v, k.shape[2], mask, return_lse=True)
    else:
        out, lse = fastar.ops.attention(q, k, v, mask, return_lse=True)
    return out.cpu(), lse.cpu()


@pytest.mark.parametrize("decode", [False, True], ids=["attention", "decode"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_attention_nan_query_row(attn_backend, shape, decode):
    """A NaN in one query row: that row's out and lse are NaN (the CPU kernel once returned out 0 and lse -inf,
    "sees no key"); every other row is the clean input's."""
    B, H, Lq, Lk, D = shape
    q, k, v = (randn(B, H, L, D, dtype=torch.float32, seed=s) for s, L in ((1, Lq), (2, Lk), (3, Lk)))
    out, lse = attend(q, k, v, None, attn_backend, decode)
    r = Lq // 2
    q[0, 0, r, D // 3] = NAN
    out_nan, lse_nan = attend(q, k, v, None, attn_backend, decode)
    assert out_nan[0, 0, r].isnan().all() and lse_nan[0, 0, r].isnan()
    out_nan[0, 0, r], lse_nan[0, 0, r] = out[0, 0, r], lse[0, 0, r]
    assert torch.equal(out_nan, out) and torch.equal(lse_nan, lse)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_attention_nan_key_reaches_the_rows_that_see_it(attn_backend, shape):
    """A NaN in key j under the causal mask: the queries that see key j are NaN, the earlier ones (which do not) and
    the rows that see no key at all (Lq > Lk) keep their clean results."""
    B, H, Lq, Lk, D = shape
    q, k, v = (randn(B, H, L, D, dtype=torch.float32, seed=s) for s, L in ((4, Lq), (5, Lk), (6, Lk)))
    mask = AttentionMask.causal()
    out, lse = attend(q, k, v, mask, attn_backend, False)
    j = Lk - max(Lq // 2, 1)  # seen by the queries at i >= j - (Lk - Lq)
    k[0, 0, j, 0] = NAN
    out_nan, lse_nan = attend(q, k, v, mask, attn_backend, False)
    sees = torch.arange(Lq) + (Lk - Lq) >= j
    assert out_nan[0, 0, sees].isnan().all() and lse_nan[0, 0, sees].isnan().all()
    assert torch.equal(out_nan[0, 0, ~sees], out[0, 0, ~sees]) and torch.equal(lse_nan[0, 0, ~sees], lse[0, 0, ~sees])
    assert torch.equal(out_nan[1:], out[1:]) and torch.equal(out_nan[0, 1:], out[0, 1:])


def test_attention_row_that_sees_no_key_with_nan_elsewhere(attn_backend):
    """Causal with Lq > Lk: the first queries see no key (out 0, lse -inf) even when a key the others see is NaN."""
    q, k, v = (randn(1, 1, L, 16, dtype=torch.float32, seed=s) for s, L in ((7, 9), (8, 4), (9, 4)))
    k[0, 0, 1, 3] = NAN
    out, lse = attend(q, k, v, AttentionMask.causal(), attn_backend, False)
    assert torch.equal(out[0, 0, :5], torch.zeros(5, 16)) and (lse[0, 0, :5] == -INF).all()
    assert out[0, 0, 6:].isnan().all() and out[0, 0, 5].isfinite().all()  # query 5 sees key 0 only


def test_sample_categorical_nan_row_draws_minus_one_in_the_kernels(backend):
    """A row with a NaN logit draws -1 in the kernels, as one with no finite logit (the reference's rule; a max that
    dropped the NaN once drew a token from the row's other logits), the other rows their clean draws; the op then
    raises, as torch.multinomial (tests/test_sampling.py: test_rows_without_a_token_raise)."""
    dev = backend_device(backend)
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0))
    bad = logits.clone()
    bad[1, 7], bad[2] = NAN, -INF
    race = torch.empty(4, 300).exponential_(generator=torch.Generator().manual_seed(1)).to(dev)
    kernels = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    draw = lambda x: kernels.sample_categorical(x.to(dev), race, 1.0, 50, 1.0, 0.0).cpu()  # noqa: E731
    clean, got = draw(logits), draw(bad)
    assert got[1] == -1 and got[2] == -1
    assert got[0] == clean[0] and got[3] == clean[3]
    if dev != "cuda":  # on a GPU the op's check is a device-side assert, which would end the CUDA context
        with pytest.raises(RuntimeError, match="no token to draw"):
            fastar.ops.sample_categorical(bad.to(dev), top_k=50)


def test_vq_nearest_nonfinite_rows(backend):
    """A row with an inf gets index 0 and distance inf, a row with a NaN index 0 and distance NaN (the reference's
    distances, all inf or all NaN); the CPU kernel's inf - inf scores once gave index 1 and distance NaN."""
    dev = backend_device(backend)
    g = torch.Generator().manual_seed(0)
    codes, x = torch.randn(37, 16, generator=g), torch.randn(5, 16, generator=g)
    idx, dist = (t.cpu() for t in fastar.ops.vq_nearest(x.to(dev), codes.to(dev), return_distance=True))
    x[1, 2], x[2, 5], x[3, 0] = INF, -INF, NAN
    idx_bad, dist_bad = (t.cpu() for t in fastar.ops.vq_nearest(x.to(dev), codes.to(dev), return_distance=True))
    assert idx_bad[1:4].tolist() == [0, 0, 0]
    assert dist_bad[1] == INF and dist_bad[2] == INF and dist_bad[3].isnan()
    for r in (0, 4):
        assert idx_bad[r] == idx[r] and dist_bad[r] == dist[r]
