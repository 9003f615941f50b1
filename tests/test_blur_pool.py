"""blur_pool (BlurPool2D) on every backend: forward, backward and double backward (R1's) against the float64
reference within the tolerance rule at odd, tiny and wide sizes; gradcheck to second order; the two references
(taps by slicing, the official depthwise convolution) agree; bad inputs named; opcheck; HiT's discriminator runs it."""
import pytest
import torch

import fastar
from fastar.reference import blur_pool as ref
from fastar.torch import blur_pool as official
from tests.conftest import backend_device, sanitized
from tests.tolerance import assert_close

# (B, C, H, W): the smallest input; odd sides (the last row / column reads one padding row less); one side 2; a
# discriminator's 130-wide rows; an empty batch
SHAPES = [(1, 1, 2, 2), (2, 3, 7, 5), (1, 2, 2, 9), (1, 4, 66, 130), (0, 2, 4, 4)]


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def forward_and_grads(x, g, gg):
    """blur_pool(x), d/dx <blur_pool(x), g> and d/dg <d/dx <blur_pool(x), g>, gg> (R1's double backward: the
    backward's own backward), on whichever backend is active."""
    x = x.detach().requires_grad_()
    g = g.detach().requires_grad_()
    y = fastar.ops.blur_pool(x)
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    (ggx,) = torch.autograd.grad(gx, g, gg)
    return y, gx, ggx


@pytest.mark.parametrize("shape", sanitized(SHAPES, {(1, 1, 2, 2), (2, 3, 7, 5)}), ids=str)
def test_matches_reference(backend, dtype, shape):
    B, C, H, W = shape
    x64, g64, gg64 = randn(*shape, seed=1), randn(B, C, H // 2, W // 2, seed=2), randn(*shape, seed=3)
    dev = backend_device(backend)
    out = forward_and_grads(x64.to(dtype).to(dev), g64.to(dtype).to(dev), gg64.to(dtype).to(dev))
    assert fastar.last_backend("blur_pool") == backend
    assert out[0].dtype == dtype and out[0].shape == (B, C, H // 2, W // 2) and out[0].is_contiguous()
    with fastar.use_backend("reference"):
        want64 = forward_and_grads(x64, g64, gg64)
        lowp = forward_and_grads(x64.to(dtype), g64.to(dtype), gg64.to(dtype))
    for got, want, low in zip(out, want64, lowp):
        assert_close("blur_pool", got, want, low)


@pytest.mark.one_schedule  # thread orders: test_matches_reference's; here the Jacobians, 4x fewer launches
def test_gradcheck_to_second_order(backend):
    x = randn(1, 2, 7, 6, seed=4).to(backend_device(backend)).requires_grad_()  # an odd side
    assert torch.autograd.gradcheck(fastar.ops.blur_pool, (x,))
    assert torch.autograd.gradgradcheck(fastar.ops.blur_pool, (x,))
    assert fastar.last_backend("blur_pool") == backend


@pytest.mark.parametrize("H", [8, 7])
def test_non_finite_reach_the_outputs_that_read_them(backend, H):
    """A NaN or inf in the first row or column reaches only the outputs (input gradients) that read it, as the
    reference's: the CPU kernel once padded with the first row times a zero tap, a NaN in the last output row (even
    H) and NaN for inf at the borders."""
    dev = backend_device(backend)
    for bad in (float("nan"), float("inf")):
        x, g = randn(1, 1, H, 6, seed=4).float(), randn(1, 1, H // 2, 3, seed=5).float()
        x[0, 0, 0, 0], x[0, 0, :, 5], g[0, 0, 0, 0], g[0, 0, :, 2] = bad, bad, bad, bad
        y, gx, _ = forward_and_grads(x.to(dev), g.to(dev), torch.zeros_like(x).to(dev))
        for got, want in zip((y, gx), (ref.blur_pool(x.double()), ref.blur_pool_backward(g.double(), H, 6))):
            torch.testing.assert_close(got.cpu().double(), want, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_references_agree():
    """The taps by slicing (the oracle) and the official depthwise F.conv2d (the torch backend), float64; the
    oracle's adjoint is autograd's gradient of the official formulation."""
    x, g = randn(2, 3, 11, 8, seed=5).requires_grad_(), randn(2, 3, 5, 4, seed=6)
    y = official.blur_pool(x)
    torch.testing.assert_close(ref.blur_pool(x), y, rtol=0, atol=1e-14)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(ref.blur_pool_backward(g, 11, 8), gx, rtol=0, atol=1e-14)
    with fastar.use_backend("torch"):
        assert torch.equal(fastar.ops.blur_pool(x), y)


def test_any_strides():
    """A channels-last or sliced x gives the values of its contiguous copy."""
    x = randn(2, 5, 12, 10, seed=7).float()
    want = fastar.ops.blur_pool(x)
    assert torch.equal(fastar.ops.blur_pool(x.to(memory_format=torch.channels_last)), want)
    assert torch.equal(fastar.ops.blur_pool(torch.cat([x, x], 3)[..., :10]), want)


@pytest.mark.parametrize("x, err, match", [
    (torch.zeros(3, 4, 4), ValueError, "x must have 4 dims"),
    (torch.zeros(1, 1, 4, 4, dtype=torch.int64), TypeError, "x must be one of"),
    (torch.zeros(1, 1, 1, 4), ValueError, "at least 2 x 2"),
    ("x", TypeError, "x must be a torch.Tensor")])
def test_bad_inputs(x, err, match):
    with pytest.raises(err, match=match):
        fastar.ops.blur_pool(x)


def test_binding_checks_name_the_argument():
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        torch.ops.fastar.blur_pool(torch.zeros(1, 2, 4, 6).transpose(2, 3))
    with pytest.raises(RuntimeError, match=r"grad must be \(B, C, 2, 3\)"):
        torch.ops.fastar.blur_pool_backward(torch.zeros(1, 2, 3, 3), 5, 6)
    with pytest.raises(RuntimeError, match="height and width must be >= 2"):
        torch.ops.fastar.blur_pool_backward(torch.zeros(1, 2, 0, 3), 1, 6)


def test_opcheck(backend):
    if backend == "cuda":
        pytest.skip("opcheck runs on the cpu and simt registrations; cuda shares the fake kernels")
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    x = torch.randn(2, 3, 7, 6, requires_grad=True)
    torch.library.opcheck(ns.blur_pool.default, (x,))
    torch.library.opcheck(ns.blur_pool_backward.default, (torch.randn(2, 3, 3, 3, requires_grad=True), 7, 6))


def test_hit_discriminator_runs_it():
    """HiT's discriminator blurs through the op: R1's gradient on the cpu backend matches the official
    depthwise formulation of the torch backend."""
    from fastar.models.hit import StyleGANDiscriminator
    torch.manual_seed(0)
    D = StyleGANDiscriminator(16, max_channels=8).double()
    x = randn(2, 3, 16, 16, seed=8)

    def r1():
        real = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(D.parameters()), allow_unused=True)  # the biases after
        # the last nonlinearity leave the input gradient alone

    got = r1()
    assert fastar.last_backend("blur_pool") == "cpu"
    with fastar.use_backend("torch"):
        want = r1()
    assert sum(a is not None for a in got) > 10
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
