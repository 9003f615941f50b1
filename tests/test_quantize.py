"""vq_nearest on every backend against the float64 reference: indices exact except on detected ties."""

import pytest
import torch

import fastar
from fastar.reference import quantize as ref
from tests.conftest import backend_device, run_with_cpu_isa, sanitized
from tests.tolerance import K, assert_close

# (N, K, D): empty, single code, D of 1 and non-multiples of the vector width, tails of the row tiling,
# VAR's D=32 and LlamaGen's D=8 with codebooks larger than one code tile.
SHAPES = [(0, 5, 8), (1, 1, 1), (7, 1, 3), (13, 37, 5), (100, 300, 32), (257, 513, 17), (64, 4096, 8), (29, 1000, 64)]
METRICS = ("l2", "cosine")


def check_indices(idx, x, codebook, metric):
    """Every index is the float64 argmin, or a tie: a code whose float64 distance is within K x the float32
    reference's own error of the minimum. Returns the number of ties taken."""
    d64 = ref.vq_distances(x.double(), codebook.double(), metric=metric)
    d32 = ref.vq_distances(x.float(), codebook.float(), metric=metric)
    if d64.numel() == 0:
        assert idx.numel() == 0
        return 0
    idx = idx.reshape(-1)
    best64 = d64.min(1).values
    gap = d64.gather(1, idx[:, None])[:, 0] - best64
    allowed = K["vq_nearest"] * (d32.double() - d64).abs().max(1).values
    assert ((gap <= allowed) | (gap == 0)).all(), f"non-nearest index: gap {gap.max():.3g} > {allowed.max():.3g}"
    return int((idx != d64.argmin(1)).sum())


def run(x, codebook, metric):
    idx, dist = fastar.ops.vq_nearest(x, codebook, metric=metric, return_distance=True)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
    assert idx.shape == x.shape[:-1] and dist.shape == x.shape[:-1]
    return idx, dist


def check(x, codebook, metric):
    idx, dist = run(x, codebook, metric)
    ties = check_indices(idx.cpu(), x.cpu(), codebook.cpu(), metric)
    # Distances of the chosen codes, against the same codes' distances in float64 and float32.
    x_, cb_ = x.cpu().reshape(-1, x.shape[-1]), codebook.cpu()
    pick = idx.cpu().reshape(-1, 1)
    d64 = ref.vq_distances(x_.double(), cb_.double(), metric=metric).gather(1, pick)[:, 0]
    d32 = ref.vq_distances(x_.float(), cb_.float(), metric=metric).gather(1, pick)[:, 0]
    # The floor's magnitude: the kernels compute ||x||^2 - 2 x.c + ||c||^2, which rounds at its terms' size, not at
    # the (possibly tiny) distance's; at D = 1 on the H200 a 1.7e-8 error, about 0.1 ulp of the terms, was 2.1x the
    # float32 reference's lucky 8.3e-9 and failed against a floor scaled by the distances.
    terms = (x_.double().square().sum(1) + cb_.double()[pick[:, 0]].square().sum(1) if metric == "l2"
             else torch.full_like(d64, 2.0))
    assert_close("vq_nearest", dist.cpu().reshape(-1), d64, d32, scale=terms.max().item() if terms.numel() else 0.0)
    return idx, ties


# sanitize: empty, one code, and partial row, code and depth tiles all at once (257 rows, 513 codes, D 17).
@pytest.mark.parametrize("shape", sanitized(SHAPES, {(0, 5, 8), (1, 1, 1), (257, 513, 17)}), ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_vq_nearest_random(backend, dtype, shape, metric):
    N, K_, D = shape
    g = torch.Generator().manual_seed(N * 7 + K_ + D)
    x = torch.randn(N, D, generator=g).to(dtype)
    codebook = torch.randn(K_, D, generator=g).to(dtype)
    dev = backend_device(backend)
    check(x.to(dev), codebook.to(dev), metric)
    assert fastar.last_backend("vq_nearest") == backend


@pytest.mark.sanitize
def test_vq_nearest_batch_dims_and_noncontiguous(backend, dtype):
    g = torch.Generator().manual_seed(1)
    dev = backend_device(backend)
    x = torch.randn(4, 32, 9, generator=g).to(dtype).to(dev).transpose(1, 2)  # (4, 9, 32), not contiguous
    codebook = torch.randn(64, 32, generator=g).to(dtype).to(dev)
    assert not x.is_contiguous()
    idx, _ = check(x, codebook, "l2")
    assert idx.shape == (4, 9)


def test_vq_nearest_exact_ties_lowest_index(backend, dtype):
    """Duplicated codes tie exactly: the lowest index must win, as torch.argmin."""
    g = torch.Generator().manual_seed(2)
    dev = backend_device(backend)
    base = torch.randn(40, 16, generator=g).to(dtype)
    codebook = torch.cat([base, base, base[:7]])  # code k, k+40 (and k+80 for k < 7) are equal
    perm = torch.randperm(40, generator=g)
    x = base[perm].to(dev)  # each x is exactly one of the codes
    idx = fastar.ops.vq_nearest(x, codebook.to(dev))
    assert torch.equal(idx.cpu(), perm)


@pytest.mark.parametrize("offset", [1, 9, 63, 64, 65, 127, 128, 129, 300])
def test_vq_nearest_ties_across_lanes_and_chunks(backend, offset):
    """A copy of each winning code `offset` positions later: across lanes of one vector, blocks, and the CPU
    kernel's argmin chunks (64 codes on AVX2, 128 on AVX-512); the first copy must win."""
    g = torch.Generator().manual_seed(4)
    dev = backend_device(backend)
    base = torch.randn(40, 8, generator=g)
    codebook = torch.randn(2 * offset + 100, 8, generator=g) + 50  # far from every x
    first = torch.arange(40) * (offset + 40) // 40  # spread over the first offset + 40 positions
    codebook[first + offset] = base
    codebook[first] = base
    perm = torch.randperm(40, generator=g)
    idx = fastar.ops.vq_nearest(base[perm].to(dev), codebook.to(dev))
    assert torch.equal(idx.cpu(), first[perm])


def test_vq_nearest_equidistant_codes(backend):
    """x at the midpoint of two codes: exactly equal distances in float32, lowest index wins."""
    dev = backend_device(backend)
    codebook = torch.tensor([[4.0, 0.0], [0.0, 0.0], [2.0, 2.0], [2.0, -2.0]], device=dev)
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]], device=dev)  # (2,0): codes 0..3 all at distance 4; (1,1): 1 and 2
    assert fastar.ops.vq_nearest(x, codebook).tolist() == [0, 1]


@pytest.mark.parametrize("scale", [1e-18, 1e-6, 1e6, 1e15], ids=lambda s: f"{s:g}")
def test_vq_nearest_magnitudes(backend, scale):
    g = torch.Generator().manual_seed(3)
    dev = backend_device(backend)
    x = (torch.randn(300, 24, generator=g) * scale).to(dev)
    codebook = (torch.randn(500, 24, generator=g) * scale).to(dev)
    check(x, codebook, "l2")


@pytest.mark.sanitize
def test_vq_nearest_nan_rows(backend):
    """A NaN in x gives index 0 and distance NaN; the other rows are unaffected."""
    g = torch.Generator().manual_seed(4)
    dev = backend_device(backend)
    x = torch.randn(50, 8, generator=g)
    codebook = torch.randn(70, 8, generator=g)
    x[[3, 17], [0, 5]] = torch.nan
    idx, dist = run(x.to(dev), codebook.to(dev), "l2")
    assert idx[[3, 17]].tolist() == [0, 0] and dist[[3, 17]].isnan().all()
    keep = torch.ones(50, dtype=torch.bool)
    keep[[3, 17]] = False
    assert torch.equal(idx.cpu()[keep], ref.vq_nearest(x[keep].double(), codebook.double()))


def test_vq_nearest_opcheck(backend):
    if backend == "cuda":
        pytest.skip("opcheck is run on the cpu and simt registrations; cuda shares the fake kernel")
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    g = torch.Generator().manual_seed(5)
    x, codebook = torch.randn(33, 12, generator=g), torch.randn(20, 12, generator=g)
    torch.library.opcheck(ns.vq_nearest.default, (x, codebook, "l2"))
    torch.library.opcheck(ns.vq_nearest.default, (x.bfloat16(), codebook.bfloat16(), "cosine"))


def test_vq_nearest_compiles_fullgraph():
    g = torch.Generator().manual_seed(6)
    x, codebook = torch.randn(2, 50, 16, generator=g), torch.randn(40, 16, generator=g)

    @torch.compile(fullgraph=True)
    def quantize(x, codebook):
        idx = fastar.ops.vq_nearest(x, codebook)
        return codebook[idx]  # (2, 50, 16)

    assert torch.equal(quantize(x, codebook), codebook[ref.vq_nearest(x, codebook)])


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_vq_nearest_every_cpu_isa(isa):
    """Each instruction-set variant of the CPU kernel (picked at load time) matches the reference."""
    code = (
        "import torch, fastar; from fastar.reference import quantize as ref; g = torch.Generator().manual_seed(7);"
        "x = torch.randn(301, 19, generator=g); e = torch.randn(777, 19, generator=g);"
        "assert fastar.build_info()['cpu_isa'] == '%s';"
        "assert torch.equal(fastar.ops.vq_nearest(x, e), ref.vq_nearest(x.double(), e.double()))" % isa
    )
    run_with_cpu_isa(isa, code)


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(5, 4), torch.randn(4)), "codebook must have 2 dims"),
    (lambda: (torch.randn(5, 4), torch.randn(3, 5)), "codebook has D=5 but x has D=4"),
    (lambda: (torch.randint(0, 9, (5, 4)), torch.randn(3, 4)), "x must be one of"),
    (lambda: (torch.randn(5, 4), torch.randn(3, 4, dtype=torch.float64)), "codebook must be one of"),
    (lambda: (torch.randn(5, 4), torch.randn(3, 4, device="meta")), "codebook is on meta but x is on cpu"),
    (lambda: (torch.randn(5, 4), torch.randn(0, 4)), "codebook must hold at least one code"),
    (lambda: (torch.randn(5, 0), torch.randn(3, 0)), "at least one code of D >= 1"),
    (lambda: (torch.tensor(1.0), torch.randn(3, 4)), "x must have at least 1 dims"),
])
def test_vq_nearest_bad_input(make, match):
    x, codebook = make()
    with pytest.raises((TypeError, ValueError), match=match):
        fastar.ops.vq_nearest(x, codebook)


def test_vq_nearest_bad_metric():
    with pytest.raises(ValueError, match="metric must be one of"):
        fastar.ops.vq_nearest(torch.randn(2, 3), torch.randn(4, 3), metric="l1")


def test_vq_nearest_binding_checks():
    """Direct torch.ops callers get named errors from the binding layer too."""
    with pytest.raises(RuntimeError, match="codebook has D=5 but x has D=4"):
        torch.ops.fastar.vq_nearest(torch.randn(5, 4), torch.randn(3, 5), "l2")
    with pytest.raises(RuntimeError, match="metric must be 'l2' or 'cosine'"):
        torch.ops.fastar.vq_nearest(torch.randn(5, 4), torch.randn(3, 4), "l1")
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        torch.ops.fastar.vq_nearest(torch.randn(5, 4).double(), torch.randn(3, 4), "l2")
