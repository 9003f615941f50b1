"""Attention on tiny sequences at large batch (FractalGen's levels, PixelLoss): the CPU's whole-sequence path
(cpu/attention_tiny.cpp, L <= 32) against the float64 reference, and its edges: lengths around the vector width,
sequence counts that are not a multiple of the task grain, empty batches, the normal path just past it."""
import pytest
import torch

import fastar
from tests.conftest import backend_device
from tests.test_attention import attn_backend, check, make_mask, randn  # noqa: F401 (attn_backend: a fixture)


@pytest.mark.parametrize("L", [1, 3, 4, 17, 22, 32])
@pytest.mark.parametrize("kind", ["full", "causal"])
def test_tiny_lengths(attn_backend, dtype, kind, L):
    """B * H = 21 sequences: not a multiple of the 16-sequence grain; head dim 64 (FractalGen's level 1)."""
    q, k, v = (randn(3, 7, L, 64, dtype=dtype, seed=s) for s in (40, 41, 42))
    check(q, k, v, make_mask(kind, L), attn_backend)


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
