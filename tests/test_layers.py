"""fastar.models.layers.Linear: nn.Linear whose float32 CPU inference runs on oneDNN where that is the faster GEMM
(CPUs not made by Intel), and F.linear everywhere else; checked by the ops it dispatches and against float64."""
import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fastar
from fastar import _backend
from fastar.models import layers
from fastar.models.layers import Linear, gelu, linear, linear_gelu
from fastar.models.var.basic_var import SelfAttention
from tests.tolerance import assert_close


class Ops(TorchDispatchMode):
    """The names of the ATen-level ops run inside the block, and how often each ran."""

    def __init__(self):
        super().__init__()
        self.names, self.counts = set(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        self.counts[func.name()] = self.counts.get(func.name(), 0) + 1
        return func(*args, **(kwargs or {}))


def ran(layer, x):
    with Ops() as ops:
        out = layer(x)
    return out, ops.names


def test_default_library_follows_the_kernels_gemm(monkeypatch):
    """The models' Linear layers take the kernels' float32 GEMM library: oneDNN on non-Intel CPUs where its matmul
    takes float32 (AVX-512), MKL on Intel and on AVX2-only CPUs (where it was faster: AMD Zen 3); the rule itself:
    test_diffusion.py::test_gemm_library_choice."""
    monkeypatch.delenv("FASTAR_FP32_GEMM", raising=False)
    assert _backend.fp32_linear_library() == fastar.build_info()["cpu_fp32_gemm"]
    monkeypatch.setenv("FASTAR_FP32_GEMM", "openblas")
    with pytest.raises(ValueError, match="FASTAR_FP32_GEMM must be one of \\('mkl', 'onednn'\\), got 'openblas'"):
        _backend.fp32_linear_library()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (2, 5, 48), (0, 48), (1, 48), (2, 2, 48), (5, 48), "transposed"])
def test_onednn_inference_matches_float64(monkeypatch, shape, bias):
    """No grad, float32, cpu backend, FASTAR_FP32_GEMM=onednn: the oneDNN op runs, or fastar.ops.linear for up to
    DECODE_ROWS rows, and agrees with the float64 reference by the tolerance rule (2D, 3D, empty, a non-contiguous
    input)."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias)
    x = torch.randn(48, 9).t() if shape == "transposed" else torch.randn(shape)
    with torch.no_grad():
        out, names = ran(layer, x)
    decode = x.numel() <= layers.DECODE_ROWS * 48
    assert ("fastar::linear" if decode else "mkldnn::_linear_pointwise") in names
    assert not (decode and "mkldnn::_linear_pointwise" in names)
    ref64 = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    assert out.shape == ref64.shape and out.dtype == torch.float32
    if out.numel():
        assert_close("linear", out, ref64, F.linear(x, layer.weight, layer.bias))


def test_falls_back_to_f_linear(monkeypatch):
    """F.linear (never oneDNN) on the torch and reference backends (the official formulation), in bfloat16, and with
    FASTAR_FP32_GEMM=mkl."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    layer, x = Linear(16, 8), torch.randn(4, 16)
    with torch.no_grad():
        for backend in _backend.PYTHON_BACKENDS:
            with fastar.use_backend(backend):
                assert not any(n.startswith("mkldnn::") for n in ran(layer, x)[1])
        assert not any(n.startswith("mkldnn::") for n in ran(layer.bfloat16(), x.bfloat16())[1])
        monkeypatch.setenv("FASTAR_FP32_GEMM", "mkl")
        assert not any(n.startswith("mkldnn::") for n in ran(layer.float(), x)[1])


@pytest.mark.parametrize("wants", ["x", "weight", "bias", "all"])
def test_training_runs_onednn(monkeypatch, wants):
    """Under autograd the forward and d x run on oneDNN (_OneDNNLinear), d weight on torch.mm; every gradient asked
    for agrees with float64 autograd by the tolerance rule (against F.linear's float32 ones), the others stay None."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 20, 48), torch.randn(80, 48) / 7, torch.randn(80)
    g = torch.randn(3, 20, 80)
    leaves = {"x": x, "weight": w, "bias": b}
    asked = list(leaves) if wants == "all" else [wants]

    def grads(dtype, fn):
        ts = {k: t.detach().to(dtype).requires_grad_(k in asked) for k, t in leaves.items()}
        fn(ts["x"], ts["weight"], ts["bias"]).backward(g.to(dtype))
        return {k: ts[k].grad for k in leaves}

    with Ops() as ops:
        got = grads(torch.float32, linear)
    assert ops.counts["mkldnn::_linear_pointwise"] == 1 + (wants in ("x", "all"))
    ref64, ref32 = grads(torch.float64, F.linear), grads(torch.float32, F.linear)
    for k in leaves:
        assert (got[k] is None) == (k not in asked)
        if k in asked:
            assert_close("linear", got[k], ref64[k], ref32[k])


def test_double_backward(monkeypatch):
    """A gradient of a gradient (HiT's R1 penalty): under create_graph the first backward is differentiable."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    x, w, b = torch.randn(5, 12, requires_grad=True), torch.randn(7, 12, requires_grad=True), torch.randn(7)

    def penalty(fn):
        y = torch.tanh(fn(x, w, b))
        (dx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return torch.autograd.grad(dx.pow(2).sum(), w)[0]

    with Ops() as ops:
        got = penalty(linear)
    assert "mkldnn::_linear_pointwise" in ops.names
    assert torch.allclose(got, penalty(F.linear), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["linear", "conv3x3"])
def test_input_grads_only_skips_the_weight_gradients(monkeypatch, layer):
    """R1's first backward, the gradient at the input only, inside fastar.ops.input_grads_only(): the layer's
    backward computes no weight or bias gradient (torch's own layers skip them; a Python autograd.Function computed
    them for nothing), and the input gradient and the penalty's weight gradients are those without it, bit for bit;
    an autograd.grad of the weight inside it raises."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    if layer == "linear":
        x, w, b = torch.randn(5, 12), torch.randn(7, 12), torch.randn(7)
        fn, weight_op = linear, "aten::mm"  # d x and d w are both products; d b a sum
    else:
        x, w, b = torch.randn(1, 3, 6, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
        fn, weight_op = fastar.ops.conv3x3, "aten::convolution_backward"  # d x is the kernel on the adjoint
    for t in (x, w, b):
        t.requires_grad_()

    def r1(skip):
        y = torch.tanh(fn(x, w, b))
        with Ops() as ops, fastar.ops.input_grads_only() if skip else contextlib.nullcontext():
            (dx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return [dx, *torch.autograd.grad(dx.square().sum(), (w, b))], ops.counts

    (got, ran_skip), (want, ran_all) = r1(True), r1(False)
    for g, v in zip(got, want):
        assert torch.equal(g, v)
    bias_sum = "aten::sum.dim_IntList"
    assert ran_skip.get(weight_op, 0) == ran_all[weight_op] - 1 and bias_sum in ran_all and bias_sum not in ran_skip
    with fastar.ops.input_grads_only(), pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(fn(x, w, b).sum(), w)


def test_var_qkv_projection_runs_onednn(monkeypatch):
    """VAR's q/k/v projection (the weight with the concatenated q / zero-k / v bias) takes the same path as its
    Linear layers in inference: two oneDNN products in a SelfAttention (qkv and proj), and its output agrees with the
    block run in float64 by the tolerance rule."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    attn = SelfAttention(32, 2)
    with torch.no_grad():
        attn.q_bias.normal_(), attn.v_bias.normal_()
        x = torch.randn(2, 5, 32)
        counted = Ops()
        with counted:
            out = attn(x)
        assert counted.counts["mkldnn::_linear_pointwise"] == 2
        monkeypatch.setenv("FASTAR_FP32_GEMM", "mkl")
        ref = attn(x)
        ref64 = attn.double()(x.double())
    assert_close("linear", out, ref64, ref)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_linear_gelu(monkeypatch, approximate):
    """An MLP's first layer: on the oneDNN path one oneDNN product with the GELU fused (no aten gelu), agreeing with
    float64 by the tolerance rule; on the torch backend F.linear then F.gelu, bit for bit; under autograd the product
    then fastar.ops.gelu_with_derivative (models.layers.gelu), output and weight gradient within the rule."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 7, 48), torch.randn(96, 48) / 7, torch.randn(96)
    two = F.gelu(F.linear(x, w, b), approximate=approximate)
    with torch.no_grad():
        with Ops() as ops:
            out = linear_gelu(x, w, b, approximate=approximate)
        assert ops.counts == {"mkldnn::_linear_pointwise": 1}
        assert_close("linear", out, F.gelu(F.linear(x.double(), w.double(), b.double()), approximate=approximate), two)
        with fastar.use_backend("torch"):
            assert torch.equal(linear_gelu(x, w, b, approximate=approximate), two)
        x1 = x[:1, :3]  # a decode step's 3 rows: fastar.ops.linear then the GELU
        with Ops() as ops:
            out = linear_gelu(x1, w, b, approximate=approximate)
        assert ops.counts.get("fastar::linear") == 1 and "mkldnn::_linear_pointwise" not in ops.names
        assert_close("linear", out, F.gelu(F.linear(x1.double(), w.double(), b.double()), approximate=approximate),
                     two[:1, :3])
    w.requires_grad_()
    with Ops() as ops:
        out = linear_gelu(x, w, b, approximate=approximate)
    assert "fastar::gelu_with_derivative" in ops.names and "aten::gelu" not in ops.names
    ref64 = F.gelu(F.linear(x.double(), w.double(), b.double()), approximate=approximate)
    assert_close("linear", out, ref64, two)
    out.sum().backward()
    w64, w32 = w.detach().double().requires_grad_(), w.detach().clone().requires_grad_()
    F.gelu(F.linear(x.double(), w64, b.double()), approximate=approximate).sum().backward()
    F.gelu(F.linear(x, w32, b), approximate=approximate).sum().backward()
    assert_close("linear", w.grad, w64.grad, w32.grad)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        linear_gelu(x, w, b, approximate="erf")


def test_training_step_compiles_with_inductor(monkeypatch):
    """A Linear, an MLP's first layer with its GELU, and the GELU alone, under autograd, compiled by torch.compile's
    default backend (inductor) with fullgraph: no graph break (fastar's op records and namespace cache stay eager-only),
    the Linear on F.linear inside the compiler (inductor cannot lower an unpacked oneDNN linear), and the loss and
    gradients within the rule of float64, as the eager step's."""
    monkeypatch.setenv("FASTAR_FP32_GEMM", "onednn")
    torch.manual_seed(0)
    x, w1, w2 = torch.randn(40, 24), torch.randn(64, 24) / 5, torch.randn(24, 64) / 8

    def step(x, w1, w2):
        return (linear(gelu(linear_gelu(x, w1, None, "tanh"), "none"), w2) ** 2).sum()

    def grads(fn, dtype):
        ws = [t.to(dtype).requires_grad_() for t in (w1, w2)]
        loss = fn(x.to(dtype), *ws)
        return [loss.detach(), *torch.autograd.grad(loss, ws)]

    eager, ref64 = grads(step, torch.float32), grads(step, torch.float64)
    with fastar.use_backend("torch"):
        ref32 = grads(step, torch.float32)
    compiled = grads(torch.compile(step, fullgraph=True), torch.float32)
    torch._dynamo.reset()
    for got, want, e, r in zip(compiled, ref64, eager, ref32):
        assert_close("linear", got, want, r)
        assert_close("linear", e, want, r)


def test_same_parameters_as_nn_linear():
    torch.manual_seed(0)
    a = nn.Linear(8, 4)
    torch.manual_seed(0)
    b = Linear(8, 4)
    assert isinstance(b, nn.Linear)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_decode_weights_bfloat16(monkeypatch):
    """Inside decode_weights(module, bfloat16) a Linear's decode steps (<= DECODE_ROWS_BF16 rows, no autograd) read a
    bfloat16 copy of its weight through fastar.ops.linear, bit for bit the op on the rounded weight (forward_gelu too);
    more rows and autograd keep the float32 weight; on exit the copies are gone and the state dict is unchanged."""
    torch.manual_seed(0)
    mlp = nn.Sequential(Linear(48, 96), Linear(96, 48))
    state = {k: v.clone() for k, v in mlp.state_dict().items()}
    x1, x8 = torch.randn(3, 48), torch.randn(8, 48)
    with torch.no_grad(), layers.decode_weights(mlp):
        fc1 = mlp[0]
        assert fc1.decode_weight.dtype == torch.bfloat16
        assert torch.equal(fc1(x1), fastar.ops.linear(x1, fc1.weight.bfloat16(), fc1.bias))
        assert torch.equal(fc1.forward_gelu(x1), F.gelu(fastar.ops.linear(x1, fc1.weight.bfloat16(), fc1.bias)))
        assert torch.equal(fc1(x8), fastar.ops.linear(x8, fc1.weight.bfloat16(), fc1.bias))  # 8 rows: bfloat16 too
        x9 = torch.randn(9, 48)
        with Ops() as ops:
            fc1(x9)
        assert "mkldnn::_linear_pointwise" in ops.names or "aten::addmm" in ops.names  # float32 GEMM, more rows
        assert_close("linear", fc1(x9), F.linear(x9.double(), fc1.weight.double(), fc1.bias.double()),
                     F.linear(x9, fc1.weight, fc1.bias))
    want = mlp(x1)
    with layers.decode_weights(mlp):
        out = mlp(x1)  # under autograd: the float32 weights
    assert out.requires_grad and torch.equal(out, want)
    assert "decode_weight" not in vars(mlp[0]) and mlp[0].decode_weight is None
    assert all(torch.equal(v, state[k]) for k, v in mlp.state_dict().items())
    with layers.decode_weights(mlp):  # nested: the inner float32 copies, then the outer bfloat16 ones again
        with layers.decode_weights(mlp, torch.float32):
            assert mlp[0].decode_weight.dtype == torch.float32
        assert mlp[0].decode_weight.dtype == torch.bfloat16
    assert mlp[0].decode_weight is None
    with pytest.raises(ValueError, match="dtype must be torch.bfloat16 or torch.float32, got torch.float16"):
        with layers.decode_weights(mlp, torch.float16):
            pass
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got Tensor"):
        with layers.decode_weights(x1):
            pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_weights_packed_on_huge_pages(dtype):
    """decode_weights' copies are views of one allocation, each 64-byte aligned, equal to the weights rounded to dtype;
    past 4 MB together that allocation comes from fastar's CPU block cache (huge pages), below it from torch's
    allocator; past a quarter of the cache's limit one copy per weight (float32: the weights themselves). The weights
    themselves stay where they were. bf16_products' copies are never packed (one allocation each)."""
    torch.manual_seed(0)
    for widths, cached in [((700, 900, 1100), 1), ((24, 40, 56), 0)]:
        mlp = nn.Sequential(Linear(widths[0], widths[1]), Linear(widths[1], widths[2]), Linear(widths[2], widths[0]))
        before = fastar.cpu_cache_info()
        with layers.decode_weights(mlp, dtype):
            after = fastar.cpu_cache_info()
            copies = [m.decode_weight for m in mlp]
            for m, c in zip(mlp, copies):
                assert c.dtype == dtype and c.is_contiguous() and c.data_ptr() % 64 == 0
                assert torch.equal(c, m.weight.detach().to(dtype))
                assert c.data_ptr() != m.weight.data_ptr()
            assert len({c.untyped_storage().data_ptr() for c in copies}) == 1
            ends = sorted((c.data_ptr(), c.data_ptr() + c.numel() * c.element_size()) for c in copies)
            assert all(e <= s for (_, e), (s, _) in zip(ends, ends[1:]))  # no two overlap
        served = after["hits"] + after["misses"] - before["hits"] - before["misses"]
        assert served == cached, (widths, served)
    limit_mb = fastar.cpu_cache_info()["limit_bytes"] >> 20
    fastar.set_cpu_cache_limit(16)  # a quarter of it, 4 MB, below the weights' 9.6 MB (float32) / 4.8 MB (bf16)
    try:
        mlp = nn.Sequential(Linear(700, 900), Linear(900, 1100), Linear(1100, 700))
        with layers.decode_weights(mlp, dtype):
            copies = [m.decode_weight for m in mlp]
            assert all(torch.equal(c, m.weight.detach().to(dtype)) for m, c in zip(mlp, copies))
            assert len({c.untyped_storage().data_ptr() for c in copies}) == 3
            same = [c.data_ptr() == m.weight.data_ptr() for m, c in zip(mlp, copies)]
            assert all(same) if dtype == torch.float32 else not any(same)
    finally:
        fastar.set_cpu_cache_limit(limit_mb)
    with layers.bf16_products(mlp):
        assert len({m.product_weight.untyped_storage().data_ptr() for m in mlp}) == 3
