"""mlp (a transformer MLP in one CPU kernel) against the float64 reference within the tolerance rule, at awkward
shapes on every instruction set, with the GELU and with softmax groups (folded attention); into out, in place over
its residual or x; strided rows; its declines (float64, autograd, backends without a kernel) run the torch
formulation; opcheck; bad inputs named. HiT's generator running it: tests/test_hit_model.py. The same for
gelu_with_derivative (the GELU and its derivative in one pass) and the models' GELU under autograd on it."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastar
from fastar.reference.mlp import gelu_with_derivative as gelu_reference
from fastar.reference.mlp import mlp as reference
from fastar.torch.mlp import gelu_with_derivative as gelu_torch
from tests.conftest import run_with_cpu_isa, sanitized
from tests.tolerance import assert_close

# (N, C, hidden, C_out): one row; rows short of a register block (6 / 12) and one past it; widths off every panel
# (2 vectors: 16 / 32 columns) with one column and one hidden unit; K past one partial sum (64) for both products;
# HiT's widths (32, 64, 128 with 4x hidden) at rows that end short; an empty batch
SHAPES = [(1, 1, 1, 1), (5, 3, 7, 5), (13, 20, 33, 70), (25, 64, 256, 64), (7, 130, 1, 17), (37, 1, 200, 3),
          (301, 32, 128, 32), (100, 128, 512, 128), (0, 8, 32, 8)]


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float() * scale


def weights(C, hidden, C_out, seed=1):
    return (randn(hidden, C, seed=seed, scale=C ** -0.5), randn(hidden, seed=seed + 1, scale=0.5),
            randn(C_out, hidden, seed=seed + 2, scale=hidden ** -0.5), randn(C_out, seed=seed + 3, scale=0.5))


# (N, C, hidden, C_out, softmax_group): groups of one vector (16 lanes on AVX-512, two on AVX2), several vectors,
# off the vectors (the scalar path), one unit, the whole hidden row; HiT's cross-attention (4 heads x 16 latents)
GROUPED = [(13, 20, 64, 20, 16), (7, 9, 96, 5, 32), (30, 64, 64, 64, 16), (5, 6, 21, 4, 3), (3, 5, 8, 7, 1),
           (9, 12, 40, 12, 40)]


def check(shape, residual=True, softmax_group=0):
    N, C, hidden, C_out = shape
    x, ws = randn(N, C, seed=0), weights(C, hidden, C_out)
    r = randn(N, C_out, seed=9) if residual else None
    out = fastar.ops.mlp(x, *ws, r, softmax_group=softmax_group)
    assert fastar.last_backend("mlp") == "cpu" and out.shape == (N, C_out)
    want64 = reference(x.double(), *(w.double() for w in ws), None if r is None else r.double(),
                       softmax_group=softmax_group)
    assert_close("mlp", out, want64, reference(x, *ws, r, softmax_group=softmax_group))


@pytest.mark.parametrize("shape", sanitized(SHAPES, set()), ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no_residual"])
def test_matches_float64(shape, residual):
    check(shape, residual)


@pytest.mark.parametrize("case", GROUPED, ids=str)
def test_softmax_groups_match_float64(case):
    """softmax_group: a softmax over each group of hidden units instead of the GELU."""
    check(case[:4], softmax_group=case[4])


def test_softmax_groups_are_attention():
    """mlp with softmax_group L is multi-query attention to L keys with its projections folded in (as HiT's
    generator runs its cross-attention): scores x (k w_q / sqrt(D))^T, outputs p (W_o v^T)^T."""
    N, C, heads, D, L = 50, 24, 3, 8, 5
    x, wq, bq, wo, bo = (randn(N, C, seed=20), randn(heads * D, C, seed=21, scale=0.3), randn(heads * D, seed=22),
                         randn(C, heads * D, seed=23, scale=0.3), randn(C, seed=24))
    k, v = randn(1, 1, L, D, seed=25), randn(1, 1, L, D, seed=26)
    q = F.linear(x.double(), wq.double(), bq.double()).view(1, N, heads, D).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k.double().expand(1, heads, L, D), v.double().expand(1, heads, L, D))
    want64 = x.double() + F.linear(o.transpose(1, 2).reshape(N, heads * D), wo.double(), bo.double())
    kh, vh = k[0].expand(heads, L, D), v[0].expand(heads, L, D)
    a = torch.einsum("hld,hdc->hlc", kh, wq.view(heads, D, C)).reshape(heads * L, C) / D ** 0.5
    c = torch.einsum("hld,hd->hl", kh, bq.view(heads, D)).reshape(heads * L) / D ** 0.5
    m = torch.einsum("chd,hld->chl", wo.view(C, heads, D), vh).reshape(C, heads * L)
    out = fastar.ops.mlp(x, a, c, m, bo, x, softmax_group=L)
    assert (out - want64).abs().max() < 1e-5 * want64.abs().max()


ISA_CHILD = """
import fastar
from tests.test_mlp import GELU_SHAPES, GROUPED, SHAPES, check, check_gelu
assert fastar.build_info()["cpu_isa"] == "%s"
for shape in SHAPES:
    check(shape)
for case in GROUPED:
    check(case[:4], softmax_group=case[4])
for approximate in ("none", "tanh"):
    for shape in GELU_SHAPES:
        check_gelu(shape, approximate)
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_isa(isa):
    """Each instruction set's kernel (register blocks of 6 or 12 rows x 2 vectors)."""
    run_with_cpu_isa(isa, ISA_CHILD % isa)


def test_gelu_over_its_whole_range():
    """The kernel's GELU (an erfc formula) against float64 at pre-activations from -12 to 12 (through an identity
    first layer and an identity second), within the rule; in the negative tail (v in [-9, -3], GELU down to 1e-18)
    within 1e-5 relative error, which a GELU computed as v (1 + erf(v / sqrt 2)) / 2 in float32 misses by orders."""
    v = torch.linspace(-12, 12, 4001)[:, None]
    one = torch.ones(1, 1)
    out = fastar.ops.mlp(v, one, torch.zeros(1), one, torch.zeros(1))
    assert_close("mlp", out, F.gelu(v.double()), F.gelu(v))
    neg = (v[:, 0] < -3) & (v[:, 0] > -9)
    exact = v[neg, 0].double() * torch.special.erfc(-v[neg, 0].double() / 2 ** 0.5) / 2  # F.gelu's float64 is 0 here
    rel = ((out[neg, 0].double() - exact) / exact).abs().max()
    assert rel < 1e-5, f"relative error {rel:.2e} in GELU's negative tail"


# gelu_with_derivative: empty, one value, fewer than a vector (8 on AVX2, 16 on AVX-512), one past a lockstep group
# of 8 vectors, past a thread's grain (16384), and leading dims
GELU_SHAPES = [(0,), (1,), (7,), (129,), (40000,), (3, 5, 33)]


def check_gelu(shape, approximate):
    x = randn(*shape, seed=11, scale=3.0)
    y, d = fastar.ops.gelu_with_derivative(x, approximate)
    assert fastar.last_backend("gelu_with_derivative") == "cpu" and y.shape == d.shape == x.shape
    want64 = gelu_reference(x.double(), approximate)
    ref32 = gelu_reference(x, approximate)
    for out, w64, r32 in zip((y, d), want64, ref32):
        assert_close("gelu_with_derivative", out, w64, r32)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", GELU_SHAPES, ids=str)
def test_gelu_with_derivative_matches_float64(shape, approximate):
    check_gelu(shape, approximate)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_with_derivative_over_its_whole_range(approximate):
    """From -12 to 12 within the rule against torch's float32 GELU and gelu_backward; in the negative tail (x in
    [-9, -3], values down to 1e-18) within 2e-5 relative error, where torch's float32 ones lose every digit; and
    through a strided x."""
    x = torch.linspace(-12, 12, 8001)
    y, d = fastar.ops.gelu_with_derivative(x[::2], approximate)
    want64 = gelu_reference(x[::2].double(), approximate)
    for out, w64, r32 in zip((y, d), want64, gelu_reference(x[::2], approximate)):
        assert_close("gelu_with_derivative", out, w64, r32)
        neg = (x[::2] < -3) & (x[::2] > -9)
        rel = ((out[neg].double() - w64[neg]) / w64[neg]).abs().max()
        assert rel < 2e-5, f"relative error {rel:.2e} in the negative tail"


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_at_infinities_and_huge_inputs(approximate):
    """Non-finite and huge x as the float64 reference: gelu(+inf) = inf (v - v erfc / 2 gave inf - inf 0, NaN, in
    mlp too), the tanh derivative past |x| ~ 1e13 is 1 or 0 (its overflowed polynomial times exp's 0 gave NaN);
    -inf and NaN give NaN, as torch's."""
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([inf, -inf, nan, 1e13, -1e13, 1e19, -1e19, 1e30, -1e30, 3e38, -3e38, 20.0, -20.0])
    for out, want in zip(fastar.ops.gelu_with_derivative(x, approximate), gelu_reference(x.double(), approximate)):
        torch.testing.assert_close(out, want.float(), rtol=1e-6, atol=0, equal_nan=True)
    if approximate == "none":  # mlp's GELU of a pre-activation b1 (an inf x would meet the padded units' 0 weights)
        one = torch.ones(1, 1)
        for b1 in x[:, None]:
            out = fastar.ops.mlp(torch.zeros(1, 1), one, b1, one, torch.zeros(1))
            torch.testing.assert_close(out[0], F.gelu(b1.double()).float(), rtol=1e-6, atol=0, equal_nan=True)


def test_gelu_with_derivative_declines_run_the_torch_formulation():
    """float64, bfloat16, autograd and backends without the kernel run torch's gelu and gelu_backward (a one-time
    warning each); the reference and torch backends run their formulation silently."""
    x = randn(10, seed=12)
    for dt in (torch.float64, torch.bfloat16):
        with pytest.warns(UserWarning, match="the CPU kernel takes float32"):
            out = fastar.ops.gelu_with_derivative(x.to(dt), "tanh")
        assert all(torch.equal(a, b) for a, b in zip(out, gelu_torch(x.to(dt), "tanh")))
    xg = x.clone().requires_grad_()
    with pytest.warns(UserWarning, match="no backward"):
        y, d = fastar.ops.gelu_with_derivative(xg)
    y.sum().backward()
    assert torch.equal(xg.grad, d.detach()) and fastar.last_backend("gelu_with_derivative") == "torch"
    with fastar.use_backend("simt"), pytest.warns(UserWarning, match="a CPU kernel only"):
        fastar.ops.gelu_with_derivative(x)
    for backend, formulation in (("torch", gelu_torch), ("reference", gelu_reference)):
        with fastar.use_backend(backend), warnings.catch_warnings():
            warnings.simplefilter("error")
            assert all(torch.equal(a, b) for a, b in zip(fastar.ops.gelu_with_derivative(x), formulation(x)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_models_gelu_under_autograd(approximate):
    """fastar.models.layers.gelu: under autograd on the cpu backend it runs the kernel and its backward is the
    product with the saved derivative: value and gradient within the rule of float64; a backward that would build a
    graph for a double backward raises; without autograd, and on the torch backend, it is F.gelu itself."""
    from fastar.models.layers import gelu
    x, g = randn(37, 19, seed=13, scale=3.0), randn(37, 19, seed=14)
    xg = x.clone().requires_grad_()
    y = gelu(xg, approximate)
    assert y.grad_fn is not None and "_Gelu" in type(y.grad_fn).__name__
    y.backward(g)
    x64 = x.double().requires_grad_()
    F.gelu(x64, approximate=approximate).backward(g.double())
    x32 = x.clone().requires_grad_()
    F.gelu(x32, approximate=approximate).backward(g)
    assert_close("gelu_with_derivative", y, F.gelu(x.double(), approximate=approximate),
                 F.gelu(x, approximate=approximate))
    assert_close("gelu_with_derivative", xg.grad, x64.grad, x32.grad)
    xg2 = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="layers.gelu: a backward with create_graph=True is not supported"):
        torch.autograd.grad(gelu(xg2, approximate).sum(), xg2, create_graph=True)
    assert torch.equal(gelu(x, approximate), F.gelu(x, approximate=approximate))
    with fastar.use_backend("torch"):
        assert gelu(x.clone().requires_grad_(), approximate).grad_fn.name() == "GeluBackward0"


def test_leading_dims_strided_rows_and_out():
    """x (..., C) with rows wider than C (a slice of a wider tensor), a transposed residual, and out: written into,
    in place over the residual and over x itself, or apart; partial overlaps are refused."""
    C, hidden = 24, 40
    ws = weights(C, hidden, C)
    wide = randn(3, 5, C + 7, seed=3)
    x = wide[..., :C]
    r = randn(3, C, 5, seed=4).transpose(1, 2)
    want64 = reference(x.double(), *(w.double() for w in ws), r.double())
    ref32 = reference(x, *ws, r)
    assert_close("mlp", fastar.ops.mlp(x, *ws, r), want64, ref32)
    out = torch.empty(3, 5, C)
    assert fastar.ops.mlp(x, *ws, r, out=out) is out
    assert_close("mlp", out, want64, ref32)
    r2 = r.contiguous()
    assert fastar.ops.mlp(x, *ws, r2, out=r2) is r2
    assert_close("mlp", r2, want64, ref32)
    x2 = x.contiguous()
    want64 = reference(x2.double(), *(w.double() for w in ws), x2.double())
    ref32 = reference(x2, *ws, x2)
    assert fastar.ops.mlp(x2, *ws, x2, out=x2) is x2
    assert_close("mlp", x2, want64, ref32)
    base = randn(30, C, seed=5)
    with pytest.raises(RuntimeError, match="out overlaps x without being its own rows"):
        torch.ops.fastar.mlp.out(base[:20], *ws, None, out=base[10:])


def test_no_rows_with_strided_x_or_out():
    """Zero rows of a strided x, residual or out (an empty view counts as contiguous whatever its strides): an empty
    result, not the kernel's refusal of a non-unit column stride."""
    C, hidden = 6, 10
    ws = weights(C, hidden, C)
    x = torch.empty(0, 2 * C)[:, ::2]
    y = fastar.ops.mlp(x, *ws)
    assert y.shape == (0, C) and fastar.last_backend("mlp") == "cpu"
    out = torch.empty(2, 0, 2 * C)[..., ::2]
    assert fastar.ops.mlp(torch.empty(2, 0, C), *ws, x.view(2, 0, C), out=out) is out


def test_declines_run_the_torch_formulation():
    """float64, autograd and backends without the kernel run the torch ops (a one-time warning each), gradients
    included; the reference and torch backends run their formulation silently."""
    x, ws = randn(4, 6, seed=6), weights(6, 10, 3)
    with pytest.warns(UserWarning, match="the CPU kernel takes float32"):
        out = fastar.ops.mlp(x.double(), *(w.double() for w in ws))
    assert torch.equal(out, reference(x.double(), *(w.double() for w in ws)))
    w1 = ws[0].clone().requires_grad_()
    with pytest.warns(UserWarning, match="no backward"):
        fastar.ops.mlp(x, w1, *ws[1:]).sum().backward()
    w1b = ws[0].clone().requires_grad_()
    reference(x, w1b, *ws[1:]).sum().backward()
    assert torch.equal(w1.grad, w1b.grad)
    with fastar.use_backend("simt"), pytest.warns(UserWarning, match="a CPU kernel only"):
        fastar.ops.mlp(x, *ws)
    assert fastar.last_backend("mlp") == "torch"
    for backend in ("torch", "reference"):
        with fastar.use_backend(backend), warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(fastar.ops.mlp(x, *ws), reference(x, *ws))


def test_opcheck():
    x, ws, r = randn(14, 9, seed=7), weights(9, 20, 5), randn(14, 5, seed=8)
    ns = torch.ops.fastar
    torch.library.opcheck(ns.mlp.default, (x, *ws, r))
    torch.library.opcheck(ns.mlp.default, (x, *ws, None))
    torch.library.opcheck(ns.mlp.out, (x, *ws, r), {"out": torch.empty(14, 5)})
    torch.library.opcheck(ns.mlp.out, (x, *ws, None), {"out": torch.empty(14, 5)})
    torch.library.opcheck(ns.mlp.default, (x, *ws, r, 4))
    torch.library.opcheck(ns.gelu_with_derivative.default, (randn(3, 50, seed=15), "tanh"))
    torch.library.opcheck(ns.gelu_with_derivative.default, (randn(3, 50, seed=15)[:, ::3],))


def test_gelu_with_derivative_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="gelu_with_derivative: x must be one of"):
        fastar.ops.gelu_with_derivative(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fastar.ops.gelu_with_derivative([1.0])
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        fastar.ops.gelu_with_derivative(torch.zeros(3), "erf")
    with pytest.raises(RuntimeError, match="gelu_with_derivative: approximate must be 'none' or 'tanh'"):
        torch.ops.fastar.gelu_with_derivative(torch.zeros(3), "erf")
    with pytest.raises(RuntimeError, match="gelu_with_derivative: x must be float32"):
        torch.ops.fastar.gelu_with_derivative(torch.zeros(3, dtype=torch.float64))


def test_bad_inputs_name_the_argument():
    x, (w1, b1, w2, b2) = torch.zeros(4, 6), weights(6, 10, 3)
    with pytest.raises(TypeError, match="x must be one of"):
        fastar.ops.mlp(x.half(), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="w2 must be one of"):
        fastar.ops.mlp(x, w1, b1, w2.double(), b2)
    with pytest.raises(ValueError, match=r"w1 must be \(hidden, 6\) for x of 6 columns, got \(10, 5\)"):
        fastar.ops.mlp(x, w1[:, :5], b1, w2, b2)
    with pytest.raises(ValueError, match=r"b1 must be \(10,\)"):
        fastar.ops.mlp(x, w1, b1[:4], w2, b2)
    with pytest.raises(ValueError, match=r"w2 must be \(C_out, 10\) for w1's 10 rows"):
        fastar.ops.mlp(x, w1, b1, w2[:, :9], b2)
    with pytest.raises(ValueError, match=r"b2 must be \(3,\)"):
        fastar.ops.mlp(x, w1, b1, w2, b2[:1])
    with pytest.raises(ValueError, match=r"residual must be \(4, 3\)"):
        fastar.ops.mlp(x, w1, b1, w2, b2, torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"out must be \(4, 3\)"):
        fastar.ops.mlp(x, w1, b1, w2, b2, out=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="softmax_group must be 0 .GELU. or divide the 10 hidden units, got 3"):
        fastar.ops.mlp(x, w1, b1, w2, b2, softmax_group=3)
    with pytest.raises(ValueError, match="w1 must have 2 dims"):
        fastar.ops.mlp(x, w1[0], b1, w2, b2)
    ns = torch.ops.fastar
    with pytest.raises(RuntimeError, match=r"mlp: w1 must be \(hidden, 6\)"):
        ns.mlp(x, w1[:, :5].contiguous(), b1, w2, b2, None)
    with pytest.raises(RuntimeError, match="mlp: x must have unit column stride"):
        ns.mlp(torch.zeros(6, 4).t(), w1, b1, w2, b2, None)
    with pytest.raises(RuntimeError, match="mlp: the weights and biases must be contiguous"):
        ns.mlp(x, torch.zeros(10, 8)[:, :6], b1, w2, b2, None)
    with pytest.raises(RuntimeError, match="mlp: softmax_group must be 0 .GELU. or divide the 10 hidden units, got 4"):
        ns.mlp(x, w1, b1, w2, b2, None, 4)
    with pytest.raises(RuntimeError, match=r"mlp: out must be \(4, 3\)"):
        ns.mlp.out(x, w1, b1, w2, b2, None, out=torch.zeros(4, 4))
