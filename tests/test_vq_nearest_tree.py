"""vq_nearest's CPU k-d tree search (small D, large codebooks; csrc/cpu/vq_tree.h): bit for bit the full sweep's
indices and distances, on random codebooks, exact ties spread over leaves, integer grids where many leaf bounds
equal the best distance exactly, extreme magnitudes, NaN and infinite rows and codes, and on every instruction set.
FASTAR_VQ_NEAREST_CPU_TREE=1 / 0 forces the tree / the sweep; unset, the shape decides."""
import pytest
import torch

import fastar
from fastar.reference import quantize as ref
from tests.conftest import run_with_cpu_isa
from tests.test_quantize import check, run
from tests.test_vq_nearest_cpu_slices import bits

ENV = "FASTAR_VQ_NEAREST_CPU_TREE"

# (N, K, D): LlamaGen's D 8 with K past one leaf and not a multiple of the lanes; tiny D; D at run time (17); one
# leaf (K 20); one code; D 32 (the sweep's unrolled widths).
SHAPES = [(300, 1001, 8), (257, 5000, 3), (129, 2049, 1), (64, 3000, 6), (33, 20, 8), (40, 1, 4), (100, 700, 17),
          (50, 900, 32)]


def both(x, codebook, monkeypatch, metric="l2"):
    """(indices, distances) of the sweep and of the tree; asserts they are identical (NaN distances included)."""
    monkeypatch.setenv(ENV, "0")
    sweep = run(x, codebook, metric)
    monkeypatch.setenv(ENV, "1")
    tree = run(x, codebook, metric)
    assert torch.equal(tree[0], sweep[0]), (tree[0] != sweep[0]).nonzero()[:5]
    assert torch.equal(bits(tree[1]), bits(sweep[1]))
    return tree


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_vq_nearest_tree_equals_sweep(shape, metric, monkeypatch):
    N, K_, D = shape
    g = torch.Generator().manual_seed(N + K_ + D)
    x, codebook = torch.randn(N, D, generator=g), torch.randn(K_, D, generator=g)
    both(x, codebook, monkeypatch, metric)
    check(x, codebook, metric)  # the tree (still forced) against float64, within the tolerance rule


def test_vq_nearest_tree_duplicates_across_leaves(monkeypatch):
    """Three copies of each winning code at random positions: the lowest index wins (equal codes mostly share a
    leaf; the integer grids below tie across leaves)."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(300, 8, generator=g)
    codebook = torch.cat([base, base, base, torch.randn(2000, 8, generator=g)])
    perm = torch.randperm(len(codebook), generator=g)
    codebook = codebook[perm]
    idx, _ = both(base, codebook, monkeypatch)
    position = torch.empty_like(perm)
    position[perm] = torch.arange(len(perm))  # where each original row went
    first = torch.stack([position[[i, i + 300, i + 600]].min() for i in range(300)])
    assert torch.equal(idx, first)


@pytest.mark.parametrize("D", [2, 4, 8])
def test_vq_nearest_tree_integer_grid(D, monkeypatch):
    """Codes and rows on a small integer grid (rows also at half steps): every distance and leaf bound is exact, so
    many leaves' bounds equal the best distance, and many codes tie; those leaves must still be searched."""
    g = torch.Generator().manual_seed(D)
    codebook = torch.randint(-3, 4, (3000, D), generator=g).float()
    x = torch.randint(-4, 5, (500, D), generator=g).float() + 0.5 * torch.randint(0, 2, (500, D), generator=g)
    idx, _ = both(x, codebook, monkeypatch)
    assert torch.equal(idx, ref.vq_nearest(x.double(), codebook.double()))


@pytest.mark.parametrize("scale", [1e-18, 1e-6, 1e6, 1e15, 1e20], ids=lambda s: f"{s:g}")
def test_vq_nearest_tree_magnitudes(scale, monkeypatch):
    """Tiny and huge coordinates; at 1e20 the squared norms overflow float32 and the tree visits every leaf."""
    g = torch.Generator().manual_seed(3)
    x, codebook = torch.randn(300, 8, generator=g) * scale, torch.randn(3000, 8, generator=g) * scale
    both(x, codebook, monkeypatch)


def test_vq_nearest_tree_nonfinite(monkeypatch):
    """NaN and infinite rows (a NaN row: index 0, distance NaN), then NaN and infinite codes: as the sweep."""
    g = torch.Generator().manual_seed(6)
    x, codebook = torch.randn(150, 8, generator=g), torch.randn(2500, 8, generator=g)
    x[3, 0], x[71, 5], x[149, 7] = torch.nan, torch.inf, -torch.inf
    idx, dist = both(x, codebook, monkeypatch)
    assert idx[3] == 0 and dist[3].isnan()
    codebook[[10, 900], [1, 2]] = torch.tensor([torch.nan, torch.inf])
    both(x, codebook, monkeypatch)


def test_vq_nearest_tree_by_default_at_llamagen_shape(monkeypatch):
    """Unforced, LlamaGen's shape (D 8, 16384 codes, 8192 rows) takes the tree: the answers are the sweep's."""
    g = torch.Generator().manual_seed(12)
    x, codebook = torch.randn(8192, 8, generator=g), torch.randn(16384, 8, generator=g)
    monkeypatch.delenv(ENV, raising=False)
    auto = run(x, codebook, "l2")
    tree = both(x, codebook, monkeypatch)
    assert torch.equal(auto[0], tree[0]) and torch.equal(bits(auto[1]), bits(tree[1]))


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_vq_nearest_tree_every_isa(isa, monkeypatch):
    """Each instruction set's tree search against its own sweep and float64."""
    code = (
        "import os, torch, fastar; from fastar.reference import quantize as ref; g = torch.Generator().manual_seed(8)\n"
        "assert fastar.build_info()['cpu_isa'] == '%s'\n"
        "for D in (8, 3, 17):\n"
        "  x = torch.randn(211, D, generator=g); e = torch.randn(3003, D, generator=g)\n"
        "  os.environ['%s'] = '0'; sweep = fastar.ops.vq_nearest(x, e, return_distance=True)\n"
        "  os.environ['%s'] = '1'; tree = fastar.ops.vq_nearest(x, e, return_distance=True)\n"
        "  assert torch.equal(tree[0], sweep[0]) and torch.equal(tree[1], sweep[1]), D\n"
        "  assert torch.equal(tree[0], ref.vq_nearest(x.double(), e.double())), D" % (isa, ENV, ENV)
    )
    run_with_cpu_isa(isa, code)


@pytest.mark.parametrize("bad", ["2", "yes", ""])
def test_vq_nearest_tree_env_checked(bad, monkeypatch):
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(RuntimeError, match=f"{ENV} must be 0 or 1"):
        fastar.ops.vq_nearest(torch.randn(3, 4), torch.randn(5, 4))
