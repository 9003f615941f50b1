"""vq_nearest's CUDA kernel with the codebook split across blocks (grid y) and merged: bitwise the result of the
unsplit search (indices, distances, ties to the lowest index, NaN rows), both against the float64 reference.
FASTAR_VQ_NEAREST_SLICES forces the slice count, so the emulator reaches both paths without a GPU."""
import pytest
import torch

import fastar
from tests.conftest import backend_device
from tests.test_quantize import check, run

pytestmark = pytest.mark.parametrize("backend", ["simt", "cuda"], indirect=True)

# (N, K, D): VAR's first scale (one row per image, 4096 codes, D 32); K not a multiple of the 64-code tile; K
# under slices x 64; one code tile; D of 1, 8, odd, and past the 160 staged in shared memory.
SHAPES = [(1, 4096, 32), (4, 1000, 8), (3, 100, 1), (70, 130, 33), (2, 64, 17), (9, 700, 163)]


def slices(monkeypatch, s):
    """Forces s codebook slices (None: the automatic choice)."""
    if s is None:
        monkeypatch.delenv("FASTAR_VQ_NEAREST_SLICES", raising=False)
    else:
        monkeypatch.setenv("FASTAR_VQ_NEAREST_SLICES", str(s))


def bits(t):
    return t.cpu().contiguous().view(torch.int32 if t.dtype == torch.float32 else t.dtype)


def test_vq_nearest_slice_plan(backend, monkeypatch):
    """The slice count the glue launches: enough to fill 132 SMs, clamped to the code tiles, lowered to the fewest
    with the same tiles per slice; FASTAR_VQ_NEAREST_SLICES overrides it and is checked."""
    if backend != "simt":
        pytest.skip("the plan is read through fastar._simt")
    plan = fastar._backend._simt.vq_nearest_slices
    slices(monkeypatch, None)
    assert plan(16, 4096, 132) == 64  # one row block: one slice per code tile
    assert plan(64 * 40, 4096, 132) == 4  # 40 row blocks: 4 slices of 16 tiles fill 132 SMs
    assert plan(64 * 132, 4096, 132) == 1  # the row blocks alone fill the device
    assert plan(100, 300, 132) == 5
    for asked, k, used in ((1, 4096, 1), (3, 300, 3), (4, 300, 3), (100, 70, 2), (7, 64, 1)):
        slices(monkeypatch, asked)
        assert plan(1, k, 132) == used, (asked, k)
    for bad in ("0", "-2", "x", "2x", ""):
        slices(monkeypatch, bad)
        with pytest.raises(RuntimeError, match="FASTAR_VQ_NEAREST_SLICES must be a positive integer"):
            plan(1, 64, 132)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_vq_nearest_split_equals_unsplit(backend, dtype, shape, metric, monkeypatch):
    N, K_, D = shape
    g = torch.Generator().manual_seed(N * 7 + K_ + D)
    dev = backend_device(backend)
    x = torch.randn(N, D, generator=g).to(dtype).to(dev)
    codebook = torch.randn(K_, D, generator=g).to(dtype).to(dev)
    slices(monkeypatch, 1)
    idx1, dist1 = check(x, codebook, metric)[0], run(x, codebook, metric)[1]
    for s in (None, 3, 7):  # automatic (a slice per tile here), uneven tiles per slice, more slices than tiles
        slices(monkeypatch, s)
        idx, dist = run(x, codebook, metric)
        assert torch.equal(idx, idx1), s
        assert torch.equal(bits(dist), bits(dist1)), s
    check(x, codebook, metric)  # the last split run, against float64


@pytest.mark.parametrize("offset", [64, 130, 300, 577])
@pytest.mark.parametrize("n_slices", [2, 5, 12])
def test_vq_nearest_split_ties_lowest_index(backend, offset, n_slices, monkeypatch):
    """A copy of each winning code `offset` codes later, in the same or a later slice: the first copy wins."""
    g = torch.Generator().manual_seed(5)
    dev = backend_device(backend)
    base = torch.randn(20, 8, generator=g)
    codebook = torch.randn(offset + 120, 8, generator=g) + 50  # far from every x
    first = torch.arange(20) * 6
    codebook[first + offset] = base
    codebook[first] = base
    perm = torch.randperm(20, generator=g)
    slices(monkeypatch, n_slices)
    idx = fastar.ops.vq_nearest(base[perm].to(dev), codebook.to(dev))
    assert torch.equal(idx.cpu(), first[perm])


def test_vq_nearest_split_nan_rows(backend, monkeypatch):
    """A NaN row has index 0 and distance NaN whatever the slices; the other rows are the unsplit ones."""
    g = torch.Generator().manual_seed(6)
    dev = backend_device(backend)
    x = torch.randn(30, 8, generator=g)
    codebook = torch.randn(400, 8, generator=g)
    x[[0, 11, 29], [0, 5, 7]] = torch.nan
    x[11] = torch.nan
    slices(monkeypatch, 1)
    idx1, dist1 = run(x.to(dev), codebook.to(dev), "l2")
    slices(monkeypatch, 4)
    idx, dist = run(x.to(dev), codebook.to(dev), "l2")
    assert idx[[0, 11, 29]].tolist() == [0, 0, 0] and dist[[0, 11, 29]].isnan().all()
    assert torch.equal(idx, idx1) and torch.equal(bits(dist), bits(dist1))
