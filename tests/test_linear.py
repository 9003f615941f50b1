"""linear (the few-row kernels for decoding) on every backend: against the float64 reference within the tolerance
rule, row counts past one group of 4 and K off the vector widths, bias or none, leading dims, every CPU ISA, the
backward (autograd and gradcheck), opcheck, and bad inputs named; linear_weight_grad (a Linear's weight gradient on
the float32 GEMM library) against float64, in the models' Linear backward, its declines and bad inputs."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastar
from fastar.reference import linear as ref
from tests.conftest import backend_device, run_with_cpu_isa, sanitized
from tests.tolerance import assert_close

# (M, K, N): one decode row at DALL-E's MLP, a row per group size, groups of 4 and a tail, K off every vector width
# (1, 37, 1000), N across several 128 KB blocks and below the CUDA block's 8 warps, rows of x past 16 KB (two weight
# rows at a time, an odd one left), empty rows, columns and features
SHAPES = [(1, 512, 2048), (1, 1, 1), (2, 37, 5), (3, 64, 9), (4, 1000, 130), (5, 100, 33), (9, 300, 257),
          (4, 2050, 7), (3, 1500, 6), (0, 8, 4), (3, 8, 0), (2, 0, 3)]


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def check(x, w, b, backend):
    dev = backend_device(backend)
    out = fastar.ops.linear(x.to(dev), w.to(dev), None if b is None else b.to(dev))
    assert fastar.last_backend("linear") == backend and out.dtype == x.dtype
    want64 = ref.linear(x.double(), w.double(), None if b is None else b.double())
    assert_close("linear", out, want64, ref.linear(x, w, b))
    return out


@pytest.mark.parametrize("shape", sanitized(SHAPES, {(2, 37, 5), (5, 100, 33), (0, 8, 4)}), ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_matches_reference(backend, shape, bias):
    M, K, N = shape
    x, w = randn(M, K, seed=M + K), randn(N, K, seed=N)
    out = check(x, w, randn(N, seed=7) if bias else None, backend)
    assert out.shape == (M, N)


@pytest.mark.parametrize("shape", sanitized([(1, 512, 2048), (3, 37, 5), (5, 100, 33)], {(3, 37, 5)}), ids=str)
def test_bfloat16_weights(backend, shape):
    """float32 x with bfloat16 weights (a decode step reading half the bytes): the product with the weights widened
    exactly, within the rule of float32 against float64; d x through the widened weights, d weight in bfloat16."""
    M, K, N = shape
    x, w, b = randn(M, K, seed=M), randn(N, K, seed=N).bfloat16(), randn(N, seed=3)
    check(x, w, b, backend)
    dev = backend_device(backend)
    xg, wg = x.to(dev).requires_grad_(), w.to(dev).requires_grad_()
    out = fastar.ops.linear(xg, wg, b.to(dev))
    dout = torch.randn_like(out)
    dx, dw = torch.autograd.grad(out, (xg, wg), dout)
    assert dw.dtype == torch.bfloat16
    assert_close("linear", dx, dout.cpu().double() @ w.double(), dout.cpu() @ w.float())


def test_float64_leading_dims_and_strides(backend):
    """float64 against its own reference; x (2, 3, K) and a non-contiguous x (a transposed view) as F.linear."""
    x, w, b = randn(2, 3, 70, seed=1, dtype=torch.float64), randn(11, 70, seed=2, dtype=torch.float64), None
    out = check(x, w, b, backend)
    assert out.shape == (2, 3, 11)
    xt = randn(70, 3, seed=3).t()  # (3, 70), strides (1, 3)
    check(xt, randn(6, 70, seed=4), randn(6, seed=5), backend)


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_unaligned_rows(backend, weights):
    """x and the weight one element past a 16-byte boundary (views into larger storage), K a multiple of the vector
    width: the CUDA kernel's 16-byte loads must not run there (the emulator reports a misaligned vector access)."""
    x = randn(3 * 64 + 1, seed=11)[1:].view(3, 64)
    w = randn(5 * 64 + 1, seed=12).to(weights)[1:].view(5, 64)
    assert x.data_ptr() % 16 and w.data_ptr() % 16
    check(x, w, randn(5, seed=13), backend)


def test_backward(backend):
    """Gradients of x, weight and bias against the reference's, and gradcheck of the compiled op in float64."""
    dev = backend_device(backend)
    x, w, b = (t.to(dev).requires_grad_() for t in (randn(3, 20, seed=8, dtype=torch.float64),
                                                     randn(7, 20, seed=9, dtype=torch.float64),
                                                     randn(7, seed=10, dtype=torch.float64)))
    out = fastar.ops.linear(x, w, b)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, w, b), dout)
    want = torch.autograd.grad(ref.linear(x, w, b), (x, w, b), dout)
    for g, e in zip(got, want):
        assert_close("linear", g, e, e)
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    assert torch.autograd.gradcheck(lambda *t: ns.linear(*t), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: ns.linear(x, w, None), (x, w))


def test_opcheck(backend):
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    dev = backend_device(backend)
    x, w, b = (randn(*s, seed=i).to(dev).requires_grad_() for i, s in enumerate(((5, 40), (9, 40), (9,))))
    torch.library.opcheck(ns.linear.default, (x, w, b))
    torch.library.opcheck(ns.linear.default, (x, w, None))


ISA_CHILD = """
import torch, fastar
from tests.test_linear import SHAPES, check, randn
assert fastar.build_info()["cpu_isa"] == "%s"
for M, K, N in SHAPES:
    check(randn(M, K, seed=M), randn(N, K, seed=N), randn(N, seed=K), "cpu")
    check(randn(M, K, seed=M), randn(N, K, seed=N).bfloat16(), randn(N, seed=K), "cpu")
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_isa(isa):
    """Each instruction set's kernel (4, 8 or 16 floats a vector: other K tails) in a child process."""
    run_with_cpu_isa(isa, ISA_CHILD % isa)


def test_torch_backend_is_f_linear():
    x, w, b = randn(3, 16, seed=1), randn(5, 16, seed=2), randn(5, seed=3)
    with fastar.use_backend("torch"):
        out = fastar.ops.linear(x, w, b)
    assert torch.equal(out, torch.nn.functional.linear(x, w, b))


def test_bad_inputs_name_the_argument():
    x, w = torch.zeros(2, 8), torch.zeros(3, 8)
    with pytest.raises(ValueError, match="x has 8 features.*takes 9"):
        fastar.ops.linear(x, torch.zeros(3, 9))
    with pytest.raises(TypeError, match="x must be one of"):
        fastar.ops.linear(x.bfloat16(), w)
    with pytest.raises(TypeError, match="weight is torch.float64, x is torch.float32"):
        fastar.ops.linear(x, w.double())
    with pytest.raises(TypeError, match="weight is torch.bfloat16, x is torch.float64: .*float32 x with bfloat16"):
        fastar.ops.linear(x.double(), w.bfloat16())
    with pytest.raises(RuntimeError, match="float32 x with bfloat16 weights"):
        torch.ops.fastar.linear(x.double(), w.bfloat16(), None)
    with pytest.raises(ValueError, match="weight must have 2 dims"):
        fastar.ops.linear(x, w[None])
    with pytest.raises(ValueError, match=r"bias must be \(3,\)"):
        fastar.ops.linear(x, w, torch.zeros(4))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        fastar.ops.linear(x, [[0.0] * 8])
    with pytest.raises(RuntimeError, match="x and weight must be contiguous"):
        torch.ops.fastar.linear(x, torch.zeros(8, 3).t(), None)


# linear_weight_grad: (M, N, K)
GRAD_SHAPES = [(1, 1, 1), (7, 3, 5), (300, 64, 256), (1000, 130, 33), (0, 4, 6)]


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=str)
def test_weight_grad_matches_float64(shape):
    """grad^T x against float64 within the rule, through the float32 GEMM library (oneDNN's matmul here)."""
    M, N, K = shape
    g, x = randn(M, N, seed=30), randn(M, K, seed=31)
    out = fastar.ops.linear_weight_grad(g, x)
    assert fastar.last_backend("linear_weight_grad") == "cpu" and out.shape == (N, K)
    assert_close("linear", out, g.double().t() @ x.double(), g.t() @ x)


def test_weight_grad_leading_dims_and_strides():
    """(..., N) and (..., K) with leading dims; grad read transposed in place (a unit stride in dim 0), x a slice of
    rows wider than K."""
    g = randn(40, 3, 7, seed=32).transpose(0, 2)  # (7, 3, 40), no unit stride in its last dim
    x = randn(7, 3, 50, seed=33)[..., :20]
    out = fastar.ops.linear_weight_grad(g, x)
    want = g.reshape(-1, 40).double().t() @ x.reshape(-1, 20).double()
    assert_close("linear", out, want, g.reshape(-1, 40).t() @ x.reshape(-1, 20))


def test_weight_grad_in_the_models_linear(monkeypatch):
    """fastar.models.layers.linear's backward on oneDNN takes d weight from linear_weight_grad (the same gradient
    as F.linear's within the rule); under create_graph it stays a differentiable torch product."""
    from fastar.models import layers
    if layers.onednn_declines(torch.zeros(1, 2), torch.zeros(3, 2)) is not None:
        pytest.skip(f"layers.linear runs F.linear here: {layers.onednn_declines(torch.zeros(1, 2), torch.zeros(3, 2))}")
    calls, fn = [], fastar.ops.linear_weight_grad
    monkeypatch.setattr(fastar.ops, "linear_weight_grad", lambda g, x: calls.append(g.shape) or fn(g, x))
    x, w, b = randn(2, 9, 16, seed=34), randn(24, 16, seed=35).requires_grad_(), randn(24, seed=36)
    layers.linear(x, w, b).square().sum().backward()
    assert calls == [(18, 24)]
    w64 = w.detach().double().requires_grad_()
    F.linear(x.double(), w64, b.double()).square().sum().backward()
    w32 = w.detach().clone().requires_grad_()
    F.linear(x, w32, b).square().sum().backward()
    assert_close("linear", w.grad, w64.grad, w32.grad)
    (gw,) = torch.autograd.grad(layers.linear(x, w, b).square().sum(), w, create_graph=True)
    assert gw.requires_grad and len(calls) == 1


def test_weight_grad_declines_and_bad_inputs():
    g, x = randn(5, 3, seed=37), randn(5, 4, seed=38)
    with pytest.warns(UserWarning, match="the CPU kernel takes float32"):
        assert torch.equal(fastar.ops.linear_weight_grad(g.double(), x.double()), g.double().t() @ x.double())
    with fastar.use_backend("simt"), pytest.warns(UserWarning, match="a CPU kernel only"):
        fastar.ops.linear_weight_grad(g, x)
    with pytest.warns(UserWarning, match="no backward"):
        fastar.ops.linear_weight_grad(g.requires_grad_(), x)
    g = g.detach()
    with fastar.use_backend("torch"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fastar.ops.linear_weight_grad(g, x), g.t() @ x)
    with pytest.raises(ValueError, match="must share their leading dims"):
        fastar.ops.linear_weight_grad(g, x[:4])
    assert fastar.ops.linear_weight_grad(g[:, :0], x).shape == (0, 4)  # no output features: an empty gradient
    with pytest.raises(TypeError, match="x must be one of"):
        fastar.ops.linear_weight_grad(g, x.double())
    ns = torch.ops.fastar
    with pytest.raises(RuntimeError, match="linear_weight_grad: grad has 5 rows, x 4"):
        ns.linear_weight_grad(g, x[:4])
    with pytest.raises(RuntimeError, match="linear_weight_grad: x must have a unit stride in one dim"):
        ns.linear_weight_grad(g[:3], randn(9, 8, seed=2)[::3, ::2])  # strides (24, 2)
    torch.library.opcheck(ns.linear_weight_grad.default, (g, x))


@pytest.mark.parametrize("backend", ["cpu", "torch", "reference"])
def test_weight_grad_of_zero_width(backend):
    """A zero-width x or grad gives the empty (N, K) gradient on every backend (the reference's reshape(-1, 0)
    failed)."""
    with fastar.use_backend(backend):
        assert fastar.ops.linear_weight_grad(torch.ones(5, 3), torch.ones(5, 0)).shape == (3, 0)
        assert fastar.ops.linear_weight_grad(torch.ones(5, 0), torch.ones(5, 4)).shape == (0, 4)
