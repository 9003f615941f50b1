"""Attention on tiny sequences at large batch (FractalGen's levels, PixelLoss): the CPU's whole-sequence path
(cpu/attention_tiny.cpp, L <= 32) against the float64 reference, and its edges: lengths around the vector width,
sequence counts that are not a multiple of the task grain, empty batches, the normal path just past it."""
import pytest
import torch

import fastar
from tests.conftest import backend_device, run_with_cpu_isa
from tests.test_attention import attn_backend, check, make_mask, randn  # noqa: F401 (attn_backend: a fixture)

# (Lq, Lk, D) reaching each score-block layout of the CPU kernel (AVX2: Lq <= 4 in rows of LP key slots, LP = 2: 4
# query rows per vector, LP = 32: four vectors per row; Lq > 4 with queries in lanes, one to four vectors of them,
# padded) and each column blocking of its products
# (D = 8, 12, 16, 24, 40, 72: 4-vector blocks, then 2, 1 and scalar columns), Lq odd, Lq > Lk (causal: the first
# queries see no key).
LAYOUTS = [(2, 2, 16), (5, 8, 24), (9, 9, 40), (7, 3, 72), (1, 32, 8), (31, 1, 12)]


@pytest.mark.parametrize("L", [1, 3, 4, 17, 22, 32])
@pytest.mark.parametrize("kind", ["full", "causal"])
def test_tiny_lengths(attn_backend, dtype, kind, L):
    """B * H = 21 sequences: not a multiple of the 16-sequence grain; head dim 64 (FractalGen's level 1)."""
    q, k, v = (randn(3, 7, L, 64, dtype=dtype, seed=s) for s in (40, 41, 42))
    check(q, k, v, make_mask(kind, L), attn_backend)


@pytest.mark.parametrize("Lq,Lk,D", LAYOUTS)
@pytest.mark.parametrize("kind", ["full", "causal"])
def test_tiny_layouts(attn_backend, Lq, Lk, D, kind):
    q = randn(3, 2, Lq, D, dtype=torch.float32, seed=50)
    k, v = randn(3, 2, Lk, D, dtype=torch.float32, seed=51), randn(3, 2, Lk, D, dtype=torch.float32, seed=52)
    check(q, k, v, make_mask(kind, Lk), attn_backend)


# Each instruction set's kernels (vector widths 4 / 8 / 16 floats, 2 / 4 / 8 doubles: other layouts for the same
# lengths) in float32 and float64, in a child process per instruction set.
ISA_CHILD = """
import torch, fastar
from fastar.reference import attention as ref
from tests.test_attention import check, make_mask, randn
from tests.test_attention_tiny import LAYOUTS
from tests.tolerance import assert_close
assert fastar.build_info()["cpu_isa"] == "%s"
for Lq, Lk, D in LAYOUTS + [(22, 22, 64), (4, 4, 32)]:
    q, k, v = (randn(2, 2, L, D, dtype=torch.float32, seed=53 + i) for i, L in enumerate((Lq, Lk, Lk)))
    for kind in ("full", "causal"):
        mask = make_mask(kind, Lk)
        check(q, k, v, mask, "cpu")
        q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))  # float64: against its own reference
        out, lse = fastar.ops.attention(q64, k64, v64, mask, return_lse=True)
        expected, expected_lse = ref.attention(q64, k64, v64, mask, return_lse=True)
        assert_close("attention", lse, expected_lse, expected_lse)
        for a, e in zip((out, *torch.autograd.grad(out.sum(), (q64, k64, v64))),
                        (expected, *torch.autograd.grad(expected.sum(), (q64, k64, v64)))):
            assert_close("attention_bwd", a, e, e, scale=1.0)
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_tiny_every_cpu_isa(isa):
    run_with_cpu_isa(isa, ISA_CHILD % isa)


@pytest.mark.parametrize("Lq,Lk,D,kind", [(3, 22, 32, "causal"), (22, 5, 20, "full"), (4, 4, 100, "causal"),
                                          (261, 261, 32, "causal"), (33, 33, 16, "full")])
def test_tiny_edges(attn_backend, Lq, Lk, D, kind):
    """Lq != Lk (causal aligned bottom-right), head dims off the vector width (100: past the CUDA tiny kernels' 64);
    past the tiny path's lengths (L 33, FractalGen's top level L 261) the tile path, same results."""
    q = randn(2, 3, Lq, D, dtype=torch.float32, seed=43)
    k, v = randn(2, 3, Lk, D, dtype=torch.float32, seed=44), randn(2, 3, Lk, D, dtype=torch.float32, seed=45)
    check(q, k, v, make_mask(kind, Lk), attn_backend)


def test_tiny_grouped_heads_and_padding(attn_backend):
    """Two query heads per key head (their key gradients add up) and key_len, 0 included."""
    key_len = torch.tensor([4, 0, 1])
    q, (k, v) = randn(3, 4, 4, 32, dtype=torch.float32, seed=46), (randn(3, 2, 4, 32, dtype=torch.float32, seed=s)
                                                                   for s in (47, 48))
    out, lse = check(q, k, v, make_mask("causal", 4, key_len), attn_backend)
    assert (out[1] == 0).all() and (lse[1] == -torch.inf).all()


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_tiny_streamed_outputs(isa):
    """Operands of 32 MB and more are prefetched a sequence ahead between the products' blocks, and outputs of 16 MB
    and more leave the lane layout's kernels by streaming stores: level 1's shape at 376 x 8 x 22 x 64 floats (51 MB
    of q, k, v; 16.9 MB for the output and for each gradient), and D 34 (rows of no whole vectors: prefetched, not
    streamed); q a strided view of a fused projection, causal and full, on every ISA."""
    run_with_cpu_isa(isa, STREAMED_CHILD % isa)


STREAMED_CHILD = """
import torch, fastar
from tests.test_attention import check, make_mask, randn
assert fastar.build_info()["cpu_isa"] == "%s"
for B, D in ((376, 64), (470, 34)):
    qkv = randn(B, 22, 3, 8, D, dtype=torch.float32, seed=63)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    for kind in ("full", "causal"):
        check(q, k, v, make_mask(kind, 22), "cpu")
"""


@pytest.mark.parametrize("kind", ["full", "causal"])
def test_tiny_empty_batch(attn_backend, kind):
    dev = backend_device(attn_backend)
    q, k, v = (torch.zeros(0, 4, 22, 64, device=dev, requires_grad=True) for _ in range(3))
    out = fastar.ops.attention(q, k, v, make_mask(kind, 22))
    assert out.shape == (0, 4, 22, 64)
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert dq.shape == dk.shape == dv.shape == (0, 4, 22, 64)


@pytest.mark.parametrize("L,kind", [(1, "full"), (4, "causal"), (17, "full"), (9, "causal")])
def test_tiny_gradcheck(L, kind):
    g = torch.Generator().manual_seed(49)
    q = torch.randn(2, 2, L, 5, dtype=torch.float64, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 1, L, 5, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    mask = make_mask(kind, L)
    assert torch.autograd.gradcheck(lambda q, k, v: fastar.ops.attention(q, k, v, mask), (q, k, v))
    assert fastar.last_backend("attention") == "cpu"


@pytest.mark.parametrize("Lq,Lk,D,H,Hk", [(64, 16, 64, 4, 1), (1000, 16, 16, 2, 2), (33, 5, 20, 4, 2),
                                          (37, 16, 32, 2, 1), (96, 32, 8, 1, 1)])
def test_tiny_query_chunks(attn_backend, dtype, Lq, Lk, D, H, Hk):
    """Many queries on a few keys under a full mask (HiT's pixels on its 16 latents): the CPU runs chunks of c queries
    (c the largest divisor of Lq in 8..32: 32, 25, 11; none for the prime 37: the tile path) as tiny sequences and sums
    the chunks' key gradients; multi-query and grouped heads, key_len (0 included), q a strided view."""
    key_len = torch.tensor([Lk, 0, max(Lk - 3, 1)])
    qkv = randn(3, Lq, H + 2 * Hk, D, dtype=dtype, seed=60)
    q = qkv[:, :, :H].transpose(1, 2)  # (B, H, Lq, D) rows strided, as a fused qkv projection gives
    k, v = randn(3, Hk, Lk, D, dtype=dtype, seed=61), randn(3, Hk, Lk, D, dtype=dtype, seed=62)
    out, lse = check(q, k, v, make_mask("full", Lk, key_len), attn_backend)
    assert (out[1] == 0).all() and (lse[1] == -torch.inf).all()


@pytest.mark.parametrize("Lq,Lk", [(3, 1), (3, 4), (22, 1), (22, 4), (64, 4), (64, 1), (200, 1)])
def test_tiny_saturated_rows(attn_backend, Lq, Lk):
    """Scores in the hundreds (q, k ~ N(0, 3^2), D 32, scale 1): each row's softmax is nearly one-hot, and a single
    key's P is exactly 1 in the reference, its dq and dk exactly 0. P made from lse (a natural log of base-2 scores,
    rounded twice on the way back) was ~2 ulps of |s| off, and these gradients up to 35x past the tolerance; the
    backward makes P as the forward did. Lq 3, 22, 64: the row layout, the query-lane layout, query chunks; Lq 64 and
    200 on one key: simt's flash backward, whose delta = rowsum(dO O) is summed as its dP = dO V^T (a shuffle tree's
    sum left dq and dk up to 6x past the tolerance)."""
    q = randn(2, 2, Lq, 32, dtype=torch.float32, seed=64) * 3
    k, v = randn(2, 2, Lk, 32, dtype=torch.float32, seed=65) * 3, randn(2, 2, Lk, 32, dtype=torch.float32, seed=66)
    check(q, k, v, make_mask("full", Lk), attn_backend, scale=1.0)
