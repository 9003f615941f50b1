"""The torch backend (plain PyTorch as users write it, the benchmarks' baseline) against the float64 reference:
the same checks as each op's own tests, with the tolerance rule, run under fastar.use_backend("torch"); then
the fallback to it where a kernel does not take the inputs, and the dispatch helper's contract."""
import warnings

import pytest
import torch

import fastar
from fastar.ops import _registry
from fastar.ops._registry import Decline, op
from tests import test_attention as attention_tests
from tests import test_attention_decode as decode_tests
from tests import test_quantize as quantize_tests
from tests import test_quantize_multiscale as msq_tests
from tests.conftest import DTYPES


@pytest.fixture
def torch_backend():
    with fastar.use_backend("torch"):
        yield "torch"


dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))


@dtypes
@pytest.mark.parametrize("shape", attention_tests.SHAPES, ids=str)
@pytest.mark.parametrize("kind", attention_tests.KINDS)
def test_attention_masks(torch_backend, dtype, kind, shape):
    attention_tests.test_attention_masks(torch_backend, dtype, kind, shape)


@pytest.mark.parametrize("kind", attention_tests.KINDS)
def test_attention_padded_key_lengths(torch_backend, kind):
    attention_tests.test_attention_padded_key_lengths(torch_backend, kind)


@dtypes
@pytest.mark.parametrize("kind", ["full", "causal", "block_causal"])
def test_attention_strided_rows(torch_backend, dtype, kind):
    attention_tests.test_attention_strided_rows(torch_backend, dtype, kind)


def test_attention_wide_head_and_scale(torch_backend):
    attention_tests.test_attention_var_block_causal(torch_backend, attention_tests.VAR_PATCH_NUMS)
    attention_tests.test_attention_scale(torch_backend)
    q, k, v = (attention_tests.randn(1, 1, 64, 640, dtype=torch.float32, seed=s) for s in (1, 2, 3))
    attention_tests.check(q, k, v, None, torch_backend)


@dtypes
@pytest.mark.parametrize("shape", [(2, 4, 2, 30, 90, 77, 64), (1, 1, 1, 1, 50, 40, 32), (2, 4, 2, 3, 50, 0, 32)],
                         ids=["scale", "one-token", "empty-cache"])
def test_attention_decode(torch_backend, dtype, shape):
    attention_tests.test_attention_decode(torch_backend, dtype, shape)


@pytest.mark.parametrize("Lq", [1, 3])
@pytest.mark.parametrize("kind", decode_tests.KINDS)
def test_attention_decode_masks(torch_backend, kind, Lq):
    decode_tests.test_attention_decode_every_position_reduced_grid(torch_backend, torch.float32, kind, Lq)
    decode_tests.test_attention_decode_padded_text(torch_backend, torch.float32, kind)


@dtypes
@pytest.mark.parametrize("shape", quantize_tests.SHAPES, ids=str)
@pytest.mark.parametrize("metric", quantize_tests.METRICS)
def test_vq_nearest(torch_backend, dtype, shape, metric):
    quantize_tests.test_vq_nearest_random(torch_backend, dtype, shape, metric)


def test_vq_nearest_ties_and_nan_rows(torch_backend):
    quantize_tests.test_vq_nearest_exact_ties_lowest_index(torch_backend, torch.float32)
    quantize_tests.test_vq_nearest_equidistant_codes(torch_backend)
    quantize_tests.test_vq_nearest_nan_rows(torch_backend)


@pytest.mark.parametrize("case", ["256px", "odd", "one-scale", "empty"])
def test_multiscale_quantizer(torch_backend, case):
    msq_tests.test_encode_indices(torch_backend, case)
    msq_tests.test_teacher_forcing_input(torch_backend, case)
    for last_one in (False, True):
        msq_tests.test_decode(torch_backend, case, last_one)


@pytest.mark.parametrize("case", ["256px", "odd"])
def test_multiscale_quantizer_steps(torch_backend, case):
    msq_tests.test_encode_to_fhat(torch_backend, case)
    msq_tests.test_inference_steps(torch_backend, case, "channels_last")
    msq_tests.test_training_forward(torch_backend, case)


def test_multiscale_quantizer_bfloat16_computes_float32(torch_backend):
    """VAR runs its quantizer in float32: bfloat16 maps are quantized as their float32 values."""
    f, codebook, w, b, patch_nums, _ = msq_tests.make("odd")
    low = [t.bfloat16() for t in (f, codebook, w, b)]
    ms_idx_Bl = fastar.ops.f_to_idxBl_or_fhat(*low, patch_nums)
    assert fastar.last_backend("f_to_idxBl_or_fhat") == "torch"
    with fastar.use_backend("reference"):
        expected = fastar.ops.f_to_idxBl_or_fhat(*(t.float() for t in low), patch_nums)
    assert all(torch.equal(a, e) for a, e in zip(ms_idx_Bl, expected))


@pytest.fixture
def toy_ops(monkeypatch):
    """The toy ops a test defines stay out of the registry's OPS (what fastar selftest must cover)."""
    monkeypatch.setattr(_registry, "OPS", dict(_registry.OPS))


def test_device_without_kernels_runs_torch_warned(toy_ops):
    """Tensors on a device no fastar kernel is built for (meta here) run the torch formulation, warned once."""
    calls = []

    @op(reference=lambda x: calls.append("reference") or x, torch=lambda x: calls.append("torch") or x + 1)
    def plus_two(x):
        return x.device, None

    with pytest.warns(UserWarning, match="plus_two: no fastar kernel for meta tensors is built .* torch backend"):
        assert plus_two(torch.zeros(3, device="meta")).shape == (3,)
    assert calls == ["torch"] and fastar.last_backend("plus_two") == "torch"


def test_declined_kernel_runs_torch_once_warned(toy_ops):
    """A body that declines its kernel runs the torch formulation on a compiled backend, warns once per reason,
    and last_backend names torch; on the reference backend the reference still runs."""
    calls = []

    @op(reference=lambda x: calls.append("reference") or x, torch=lambda x: calls.append("torch") or x + 1)
    def plus_one(x):
        return x.device, Decline(f"no kernel takes {x.shape[0]} rows")

    x = torch.zeros(3)
    with fastar.use_backend("cpu"), pytest.warns(UserWarning, match="plus_one: no kernel takes 3 rows; running the "
                                                                    "torch backend"):
        assert plus_one(x).tolist() == [1, 1, 1]
    assert fastar.last_backend("plus_one") == "torch"
    with fastar.use_backend("cpu"), warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call is silent
        plus_one(x)
    with fastar.use_backend("reference"):
        plus_one(x)
    assert calls == ["torch", "torch", "reference"] and fastar.last_backend("plus_one") == "reference"
