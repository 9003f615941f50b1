"""vq_nearest's CPU kernel sweeping the codebook in cache slices (groups of row micro-tiles per slice, each row's
best carried across slices): bitwise the result of the automatic plan and of the float64 reference, ties to the
lowest index across slices, NaN rows. FASTAR_VQ_NEAREST_CPU_SLICE forces codes per slice (rounded up to whole
argmin chunks: one chunk for 1), so small codebooks reach many slice boundaries."""
import pytest
import torch

import fastar
from fastar.reference import quantize as ref
from tests.conftest import run_with_cpu_isa
from tests.test_quantize import check, run

ENV = "FASTAR_VQ_NEAREST_CPU_SLICE"

# (N, K, D): LlamaGen's D 8 and VAR's 32 (their unrolled kernels) with K not a multiple of the lanes and rows past
# one group of micro-tiles with a partial tile; D 17 at run time; K under one chunk.
SHAPES = [(300, 1001, 8), (203, 777, 32), (131, 515, 17), (9, 13, 8)]


def bits(t):
    return t.contiguous().view(torch.int32)


def slice_codes(monkeypatch, n):
    """Forces n codes per slice (None: the automatic L2-sized slices)."""
    if n is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, str(n))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_vq_nearest_cpu_slices_equal_one_sweep(shape, metric, monkeypatch):
    N, K_, D = shape
    g = torch.Generator().manual_seed(N + K_ + D)
    x, codebook = torch.randn(N, D, generator=g), torch.randn(K_, D, generator=g)
    slice_codes(monkeypatch, None)  # one slice: these codebooks are under the L2 budget
    idx1, dist1 = check(x, codebook, metric)[0], run(x, codebook, metric)[1]
    assert torch.equal(idx1, ref.vq_nearest(x.double(), codebook.double(), metric=metric))
    for n in (1, 50, 333, 10**9):  # one chunk per slice, slices not a multiple of a chunk, one slice
        slice_codes(monkeypatch, n)
        idx, dist = run(x, codebook, metric)
        assert torch.equal(idx, idx1), n
        assert torch.equal(bits(dist), bits(dist1)), n


@pytest.mark.parametrize("offset", [1, 8, 191, 192, 193, 255, 256, 257, 500])
@pytest.mark.parametrize("n", [1, 300])
def test_vq_nearest_cpu_slices_ties_lowest_index(offset, n, monkeypatch):
    """A copy of each winning code `offset` codes later, in the same chunk, the next, or a later slice (a chunk is
    192 codes at D 8 on AVX2, 256 on AVX-512; n = 1 slices at every chunk, 300 at every second): the first copy
    wins."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(40, 8, generator=g)
    codebook = torch.randn(2 * offset + 300, 8, generator=g) + 50  # far from every x
    first = torch.arange(40) * (offset + 250) // 40
    codebook[first + offset] = base
    codebook[first] = base
    perm = torch.randperm(40, generator=g)
    slice_codes(monkeypatch, n)
    assert torch.equal(fastar.ops.vq_nearest(base[perm], codebook), first[perm])


def test_vq_nearest_cpu_slices_nan_rows(monkeypatch):
    """A NaN row has index 0 and distance NaN whatever the slices; the other rows are those of one sweep."""
    g = torch.Generator().manual_seed(6)
    x, codebook = torch.randn(150, 8, generator=g), torch.randn(700, 8, generator=g)
    x[[0, 71, 149], [0, 5, 7]] = torch.nan
    x[71] = torch.nan
    slice_codes(monkeypatch, None)
    idx1, dist1 = run(x, codebook, "l2")
    slice_codes(monkeypatch, 1)
    idx, dist = run(x, codebook, "l2")
    assert idx[[0, 71, 149]].tolist() == [0, 0, 0] and dist[[0, 71, 149]].isnan().all()
    assert torch.equal(idx, idx1) and torch.equal(bits(dist), bits(dist1))


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_vq_nearest_cpu_slices_every_isa(isa, monkeypatch):
    """Each instruction set's kernel (its own tile and chunk) with one chunk per slice, against float64."""
    slice_codes(monkeypatch, 1)
    code = (
        "import torch, fastar; from fastar.reference import quantize as ref; g = torch.Generator().manual_seed(8);"
        "assert fastar.build_info()['cpu_isa'] == '%s'\n"
        "for D in (8, 32, 19):\n"
        "  x = torch.randn(211, D, generator=g); e = torch.randn(1003, D, generator=g)\n"
        "  assert torch.equal(fastar.ops.vq_nearest(x, e), ref.vq_nearest(x.double(), e.double())), D" % isa
    )
    run_with_cpu_isa(isa, code)


@pytest.mark.parametrize("bad", ["0", "-2", "x", "2x", ""])
def test_vq_nearest_cpu_slice_env_checked(bad, monkeypatch):
    slice_codes(monkeypatch, bad)
    with pytest.raises(RuntimeError, match=f"{ENV} must be a positive integer"):
        fastar.ops.vq_nearest(torch.randn(3, 4), torch.randn(5, 4))
