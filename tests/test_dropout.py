"""dropout on every backend: the reference's Philox mask and values exactly (Random123's known answers for the
generator itself), the backward as the same mask, the keep rate and scale, seeds, the p and training edges, bad
inputs and opcheck."""
import pytest
import torch

import fastar
from fastar.reference import dropout as ref
from tests.conftest import backend_device, run_with_cpu_isa, sanitized

SHAPES = [(1,), (7,), (3, 1001), (2, 3, 64)]  # a lone element, counters' tails, several counters per row


def test_philox_known_answers():
    """Random123's kat_vectors for philox4x32-10: (counter words, key words) -> output words."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, want in cases:
        got = ref.philox4x32(*(torch.tensor([c]) for c in counter), *key)
        assert [int(w) for w in got] == list(want)


@pytest.mark.parametrize("shape", sanitized(SHAPES, {(7,), (3, 1001)}), ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_matches_reference(backend, dtype, shape, p):
    """One seed: the reference's mask and values bit for bit (x times the float32 scale, rounded once)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(dtype)
    out = fastar.ops.dropout(x.to(backend_device(backend)), p, generator=torch.Generator().manual_seed(9))
    assert fastar.last_backend("dropout") == backend and out.dtype == dtype and out.shape == x.shape
    want = ref.dropout_with_seed(x, ref.draw_seed(torch.Generator().manual_seed(9)), p)
    assert torch.equal(out.cpu(), want)


ISA_CHILD = """
import torch, fastar
from fastar.reference import dropout as ref
assert fastar.build_info()["cpu_isa"] == "%s"
for n in (1, 63, 64, 65, 4 * 16 * 3 + 7, 100003):  # within one block of counters, at and past its edges, many
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    for seed in (0, 2**62 - 1, 12345678901234):
        assert torch.equal(torch.ops.fastar.dropout(x, seed, 0.3), ref.dropout_with_seed(x, seed, 0.3)), (n, seed)
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_isa(isa):
    """Each instruction set's float32 kernel (Philox on 2, 4 or 8 counters a vector): the reference's mask and
    values bit for bit, at block tails and seeds with both key words set."""
    run_with_cpu_isa(isa, ISA_CHILD % isa)


def test_float64_and_backward(backend):
    """float64 in float64, and the gradient is the same mask and scale on dout (and gradcheck's numerical one)."""
    dev = backend_device(backend)
    x = torch.randn(5, 37, dtype=torch.float64, device=dev, requires_grad=True)
    out = fastar.ops.dropout(x, 0.4, generator=torch.Generator().manual_seed(6))
    seed = ref.draw_seed(torch.Generator().manual_seed(6))
    assert torch.equal(out.detach().cpu(), ref.dropout_with_seed(x.detach().cpu(), seed, 0.4))
    dout = torch.randn_like(x)
    (dx,) = torch.autograd.grad(out, x, dout)
    assert torch.equal(dx.cpu(), ref.dropout_with_seed(dout.cpu(), seed, 0.4))
    ops = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    assert torch.autograd.gradcheck(lambda t: ops.dropout(t, 123, 0.4), (x,))


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_dropped_nan_and_inf_stay_nan(backend, dtype, p):
    """A dropped NaN or inf is NaN, as torch's x * mask (the kernels once wrote 0 there, hiding the NaN); a kept one
    is NaN or inf; the other rows are the reference's."""
    x = torch.randn(3, 70, generator=torch.Generator().manual_seed(4)).to(dtype)
    x[0], x[1] = float("nan"), float("inf")
    out = fastar.ops.dropout(x.to(backend_device(backend)), p, generator=torch.Generator().manual_seed(2)).cpu()
    assert out[0].isnan().all() and (out[1].isnan() | (out[1] == float("inf"))).all() and out[1].isnan().any()
    want = ref.dropout_with_seed(x, ref.draw_seed(torch.Generator().manual_seed(2)), p)
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)


def test_keep_rate_and_scale():
    """A million elements: the kept fraction within 6 sigma of 1 - p, each kept one x / (1 - p), the rest 0."""
    n, p = 1 << 20, 0.3
    x = torch.rand(n) + 1
    out = fastar.ops.dropout(x, p, generator=torch.Generator().manual_seed(0))
    kept = out != 0
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(kept.sum().item() - n * (1 - p)) < 6 * sigma
    assert torch.equal(out[kept], x[kept] * torch.tensor(1 / (1 - p), dtype=torch.float32))


def test_seeds_and_edges(backend):
    dev = backend_device(backend)
    x = torch.randn(4, 100, device=dev)
    run = lambda seed: fastar.ops.dropout(x, 0.5, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    torch.manual_seed(5)
    a = fastar.ops.dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(a, fastar.ops.dropout(x, 0.5))  # the global generator when None
    assert fastar.ops.dropout(x, 0.0) is x and fastar.ops.dropout(x, 0.5, training=False) is x
    assert torch.equal(fastar.ops.dropout(x, 1.0), torch.zeros_like(x))
    t = x.t()  # not contiguous: the op's contiguous copy, the same mask as on that copy
    assert torch.equal(fastar.ops.dropout(t, 0.5, generator=torch.Generator().manual_seed(3)),
                       fastar.ops.dropout(t.contiguous(), 0.5, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("kw, match", [(dict(p=1.5), "p must be in"), (dict(p=-0.1), "p must be in"),
                                       (dict(x=torch.zeros(3, dtype=torch.int64)), "x must be one of"),
                                       (dict(generator=3), "generator must be a CPU torch.Generator")])
def test_bad_inputs(kw, match):
    kw = {"x": torch.zeros(3), "p": 0.5, **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        fastar.ops.dropout(kw.pop("x"), **kw)


def test_binding_checks_name_the_argument():
    with pytest.raises(RuntimeError, match="p must be in"):
        torch.ops.fastar.dropout(torch.zeros(3), 0, 2.0)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        torch.ops.fastar.dropout(torch.zeros(4, 3).t(), 0, 0.5)


def test_opcheck(backend):
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    x = torch.randn(6, 37, device=backend_device(backend), requires_grad=True)
    torch.library.opcheck(ns.dropout.default, (x, 77, 0.25))


def test_torch_backend_is_nn_dropout():
    """The torch backend runs F.dropout (torch's draws): the same keep rate, not the same mask."""
    x = torch.ones(1 << 16)
    with fastar.use_backend("torch"):
        torch.manual_seed(0)
        out = fastar.ops.dropout(x, 0.25)
    torch.manual_seed(0)
    assert torch.equal(out, torch.nn.functional.dropout(x, 0.25))
