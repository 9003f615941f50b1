"""VAR's multi-scale residual quantization (issue 4) on every backend against the float64 reference.

Indices: each scale is replayed in float64 (and float32) along the indices the op chose; every index must be the
float64 argmin of its scale, or a tie: within K x the float32 replay's own distance error of the minimum.
Maps: within K x the float32 reference's error of the float64 one (tests/tolerance.py).
"""
import pytest
import torch

import fastar
from fastar import ops
from fastar.reference import quantize as ref
from tests.conftest import backend_device, sanitized
from tests.tolerance import K, assert_close

# (patch_nums, B, C, V): VAR's 256 px and 512 px schedules, then odd sizes: B = 1, C and V off every tile, one
# scale, pn not dividing H (overlapping area bins), repeated patch sizes, an empty batch.
CASES = {
    "256px": ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 1, 32, 4096),
    "512px": ((1, 2, 3, 4, 6, 9, 13, 18, 24, 32), 1, 32, 512),
    "odd": ((1, 3, 5, 7), 3, 5, 37),
    "one-scale": ((3,), 1, 4, 9),
    "repeat": ((1, 2, 2, 5, 5), 1, 7, 20),
    "empty": ((1, 2, 4), 0, 3, 5),
    "40-scales": ((1,) * 20 + (2,) * 19 + (3,), 2, 3, 6),  # more scales than one CUDA launch takes (32)
}
# The sanitized run's cases: every path of the kernels at small sizes (VAR's schedules only add work); 40-scales
# where the scales are split over launches (msq_up, msq_add_down).
SMALL = ("odd", "one-scale", "repeat", "empty")


def make(case, dtype=torch.float32, seed=0):
    patch_nums, B, C, V = CASES[case]
    H = patch_nums[-1]
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, C, H, H, generator=g, dtype=dtype)
    codebook = torch.randn(V, C, generator=g, dtype=dtype)
    phi_weight = torch.randn(4, C, C, 3, 3, generator=g, dtype=dtype) / (3 * C**0.5)  # Phi near the identity
    phi_bias = torch.randn(4, C, generator=g, dtype=dtype) * 0.1
    ms_idx_Bl = [torch.randint(0, V, (B, pn * pn), generator=g) for pn in patch_nums]
    return f, codebook, phi_weight, phi_bias, patch_nums, ms_idx_Bl


def to(dev, *tensors):
    return [t.to(dev) for t in tensors]


def replay(f, codebook, phi_weight, phi_bias, patch_nums, ms_idx_Bl, dtype):
    """The reference encode loop in `dtype` following the given indices: (z (B pn^2, C), f_hat) per scale."""
    f, codebook, phi_weight, phi_bias = (t.to(dtype) for t in (f, codebook, phi_weight, phi_bias))
    SN, H = len(patch_nums), patch_nums[-1]
    f_rest, f_hat, out = f.clone(), torch.zeros_like(f), []
    for si, (pn, idx_Bl) in enumerate(zip(patch_nums, ms_idx_Bl)):
        z = ref.area_down(f_rest, pn).permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        k = ref.phi_index(SN, phi_weight.shape[0])[si]
        h = ref.phi(ref.bicubic_up(ref.embed(idx_Bl.cpu(), codebook, pn), H), phi_weight, phi_bias, k)
        f_hat, f_rest = f_hat + h, f_rest - h
        out.append((z, f_hat))
    return out


def check_encode_indices(ms_idx_Bl, f, codebook, phi_weight, phi_bias, patch_nums):
    """Every index is the float64 argmin of its scale (along the op's own earlier indices) or a detected tie."""
    r64 = replay(f, codebook, phi_weight, phi_bias, patch_nums, ms_idx_Bl, torch.float64)
    r32 = replay(f, codebook, phi_weight, phi_bias, patch_nums, ms_idx_Bl, torch.float32)
    ties = 0
    for si, (idx_Bl, (z64, _), (z32, _)) in enumerate(zip(ms_idx_Bl, r64, r32)):
        d64 = ref.vq_distances(z64, codebook.double())
        d32 = ref.vq_distances(z32, codebook.float()).double()
        idx = idx_Bl.cpu().reshape(-1)
        gap = d64.gather(1, idx[:, None])[:, 0] - d64.min(1).values
        allowed = K["f_to_idxBl_or_fhat"] * (d32 - d64).abs().max(1).values
        assert ((gap == 0) | (gap <= allowed)).all(), f"scale {si}: non-nearest index, gap {gap.max():.3g}"
        ties += int((idx != d64.argmin(1)).sum())
    return ties


def test_phi_index_table():
    assert ref.phi_index(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)  # VAR's released quant_resi, ties included
    assert ref.phi_index(10, 1) == (0,) * 10
    assert ref.phi_index(10, 10) == tuple(range(10))
    assert ref.phi_index(1, 4) == (0,)


@pytest.mark.parametrize("case", sanitized(CASES, SMALL))
def test_encode_indices(backend, case):
    f, codebook, w, b, patch_nums, _ = make(case)
    dev = backend_device(backend)
    ms_idx_Bl = ops.f_to_idxBl_or_fhat(*to(dev, f, codebook, w, b), patch_nums)
    assert [tuple(i.shape) for i in ms_idx_Bl] == [(f.shape[0], pn * pn) for pn in patch_nums]
    assert all(i.dtype == torch.int64 for i in ms_idx_Bl)
    check_encode_indices(ms_idx_Bl, f, codebook, w, b, patch_nums)
    assert fastar.last_backend("f_to_idxBl_or_fhat") == backend


@pytest.mark.parametrize("case", sanitized(["256px", "odd"], SMALL))
def test_encode_to_fhat(backend, case):
    f, codebook, w, b, patch_nums, _ = make(case, seed=1)
    dev = backend_device(backend)
    ms_idx_Bl = ops.f_to_idxBl_or_fhat(*to(dev, f, codebook, w, b), patch_nums)
    f_hats = ops.f_to_idxBl_or_fhat(*to(dev, f, codebook, w, b), patch_nums, to_fhat=True)
    r64 = replay(f, codebook, w, b, patch_nums, ms_idx_Bl, torch.float64)
    r32 = replay(f, codebook, w, b, patch_nums, ms_idx_Bl, torch.float32)
    for f_hat, (_, f64), (_, f32) in zip(f_hats, r64, r32):
        assert f_hat.shape == f.shape and f_hat.dtype == torch.float32
        assert_close("f_to_idxBl_or_fhat", f_hat.cpu(), f64, f32)


@pytest.mark.parametrize("case", sanitized(CASES, (*SMALL, "40-scales")))
@pytest.mark.parametrize("last_one", [False, True])
def test_decode(backend, case, last_one):
    _, codebook, w, b, patch_nums, ms_idx_Bl = make(case, seed=2)
    dev = backend_device(backend)
    out = ops.idxBl_to_fhat(to(dev, *ms_idx_Bl), *to(dev, codebook, w, b), patch_nums, last_one=last_one)
    args64 = (ms_idx_Bl, codebook.double(), w.double(), b.double(), patch_nums)
    r64 = ref.idxBl_to_fhat(*args64, last_one=last_one)
    r32 = ref.idxBl_to_fhat(ms_idx_Bl, codebook, w, b, patch_nums, last_one=last_one)
    for o, o64, o32 in zip(*(([x] if last_one else x) for x in (out, r64, r32))):
        assert_close("idxBl_to_fhat", o.cpu(), o64, o32)
    # The same from the code maps themselves (embed_to_fhat).
    ms_h_BChw = [ref.embed(i, codebook, pn).to(dev) for i, pn in zip(ms_idx_Bl, patch_nums)]
    out_h = ops.embed_to_fhat(ms_h_BChw, *to(dev, w, b), patch_nums, last_one=last_one)
    for o, o_h in zip(*(([x] if last_one else x) for x in (out, out_h))):
        torch.testing.assert_close(o_h, o, rtol=0, atol=0)


@pytest.mark.parametrize("case", sanitized(CASES, (*SMALL, "40-scales")))
def test_teacher_forcing_input(backend, case):
    _, codebook, w, b, patch_nums, ms_idx_Bl = make(case, seed=3)
    dev = backend_device(backend)
    out = ops.idxBl_to_var_input(to(dev, *ms_idx_Bl), *to(dev, codebook, w, b), patch_nums)
    L = sum(pn * pn for pn in patch_nums)
    assert out.shape == (ms_idx_Bl[0].shape[0], L - patch_nums[0] ** 2, codebook.shape[1])
    r64 = ref.idxBl_to_var_input(ms_idx_Bl, codebook.double(), w.double(), b.double(), patch_nums)
    r32 = ref.idxBl_to_var_input(ms_idx_Bl, codebook, w, b, patch_nums)
    if out.numel():
        assert_close("idxBl_to_var_input", out.cpu(), r64, r32)


@pytest.mark.sanitize
@pytest.mark.parametrize("n_phi", [1, 2])
def test_decode_empty_batch_scales_sharing_a_phi(backend, n_phi):
    """B = 0 with runs of scales sharing a Phi (one conv per run, split per scale): still one map per scale. The
    split by the batch size B = 0 gave one map per run (idxBl_to_fhat / embed_to_fhat returned too few maps, and
    idxBl_to_var_input raised in msq_add_down)."""
    patch_nums, C, V = (1, 2, 2, 3, 4), 3, 7
    g = torch.Generator().manual_seed(5)
    codebook = torch.randn(V, C, generator=g)
    w, b = torch.randn(n_phi, C, C, 3, 3, generator=g) / 5, torch.randn(n_phi, C, generator=g)
    ms_idx_Bl = [torch.zeros(0, pn * pn, dtype=torch.long) for pn in patch_nums]
    dev = backend_device(backend)
    args = (to(dev, *ms_idx_Bl), *to(dev, codebook, w, b), patch_nums)
    for out in (ops.idxBl_to_fhat(*args),
                ops.embed_to_fhat([ref.embed(i, codebook, pn).to(dev) for i, pn in zip(ms_idx_Bl, patch_nums)],
                                  *to(dev, w, b), patch_nums)):
        assert [tuple(f.shape) for f in out] == [(0, C, 4, 4)] * len(patch_nums)
    assert fastar.last_backend("embed_to_fhat") == backend
    want = ref.idxBl_to_var_input(ms_idx_Bl, codebook, w, b, patch_nums)
    assert ops.idxBl_to_var_input(*args).shape == want.shape == (0, 4 + 4 + 9 + 16, C)


@pytest.mark.parametrize("case", sanitized(["256px", "512px", "odd"], SMALL))
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_inference_steps(backend, case, layout):
    """The SN steps of get_next_autoregressive_input, f_hat updated in place in either memory layout."""
    _, codebook, w, b, patch_nums, ms_idx_Bl = make(case, seed=4)
    dev = backend_device(backend)
    SN, H, (B, C) = len(patch_nums), patch_nums[-1], (ms_idx_Bl[0].shape[0], codebook.shape[1])
    f_hat = torch.zeros(B, C, H, H, device=dev)
    if layout == "channels_last":
        f_hat = f_hat.contiguous(memory_format=torch.channels_last)
    f64, f32 = torch.zeros(B, C, H, H, dtype=torch.float64), torch.zeros(B, C, H, H)
    for si, (idx_Bl, pn) in enumerate(zip(ms_idx_Bl, patch_nums)):
        h = ref.embed(idx_Bl, codebook, pn)
        out, nxt = ops.get_next_autoregressive_input(si, SN, f_hat, h.to(dev), *to(dev, w, b), patch_nums)
        assert out is f_hat
        f64, n64 = ref.get_next_autoregressive_input(si, SN, f64, h.double(), w.double(), b.double(), patch_nums)
        f32, n32 = ref.get_next_autoregressive_input(si, SN, f32, h, w, b, patch_nums)
        assert nxt.shape == n64.shape
        assert_close("get_next_autoregressive_input", nxt.cpu(), n64, n32)
    assert_close("get_next_autoregressive_input", f_hat.cpu(), f64, f32)


@pytest.mark.parametrize("case", sanitized(["256px", "odd"], SMALL))
def test_training_forward(backend, case):
    f, codebook, w, b, patch_nums, _ = make(case, seed=5)
    dev = backend_device(backend)
    leaves = [t.to(dev).requires_grad_() for t in (f, codebook, w, b)]
    f_hat, hits, loss = ops.msq_forward(*leaves, patch_nums)
    ms_idx_Bl = ops.f_to_idxBl_or_fhat(*to(dev, f, codebook, w, b), patch_nums)
    check_encode_indices(ms_idx_Bl, f, codebook, w, b, patch_nums)
    assert hits.shape == (len(patch_nums), codebook.shape[0]) and hits.dtype == torch.float32
    assert torch.equal(hits.cpu(), torch.stack([i.cpu().reshape(-1).bincount(minlength=codebook.shape[0])
                                                for i in ms_idx_Bl]).float())
    (loss + f_hat.square().sum()).backward()
    # The reference in float64 along the same indices: one training forward per scale's f_hat.
    leaves64 = [t.detach().double().requires_grad_() for t in (f, codebook, w, b)]
    _, f_hats64 = zip(*replay(*leaves64, patch_nums, ms_idx_Bl, torch.float64))
    _, f_hats32 = zip(*replay(f, codebook, w, b, patch_nums, ms_idx_Bl, torch.float32))
    f64 = leaves64[0]
    loss64 = sum(0.25 * (h.detach() - f64).square().mean() + (h - f64.detach()).square().mean() for h in f_hats64)
    loss64 = loss64 / len(patch_nums)
    f_hat64 = (f_hats64[-1].detach() - f64.detach()) + f64
    (loss64 + f_hat64.square().sum()).backward()
    assert_close("msq_forward", f_hat.detach().cpu(), f_hat64.detach(), f_hats32[-1])
    assert abs(loss.item() - loss64.item()) <= 1e-5 * loss64.item()
    for t, t64 in zip(leaves, leaves64):
        err = (t.grad.cpu().double() - t64.grad).abs().max().item()
        assert err <= 1e-4 * t64.grad.abs().max().item() + 1e-6, err


@pytest.mark.sanitize
def test_training_forward_gradcheck(backend):
    """float64 gradcheck of the loss through the codebook gather + upsample and the Phi. The detached terms (the
    straight-through f_hat, the commitment term with beta) are gradients by definition, not derivatives: they are
    checked against the reference's autograd in test_training_forward; here beta = 0 and f is a constant."""
    g = torch.Generator().manual_seed(6)
    patch_nums, C, V = (1, 2, 4), 3, 7
    dev = backend_device(backend)
    f = torch.randn(2, C, 4, 4, generator=g, dtype=torch.float64)
    codebook = torch.randn(V, C, generator=g, dtype=torch.float64)
    w = torch.randn(2, C, C, 3, 3, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(2, C, generator=g, dtype=torch.float64) * 0.1
    f = f.to(dev)
    inputs = [t.to(dev).requires_grad_() for t in (codebook, w, b)]

    def fn(codebook, w, b):
        return ops.msq_forward(f, codebook, w, b, patch_nums, beta=0.0)[2]

    # CUDA sums the codebook gradient with atomics: two backwards differ in the last bits (float64 here)
    nondet = 1e-10 if backend == "cuda" else 0.0
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True, nondet_tol=nondet)


def test_compiled_ops_opcheck(backend):
    if backend == "cuda":
        pytest.skip("opcheck is run on the cpu and simt registrations; cuda shares the fake kernels")
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    g = torch.Generator().manual_seed(7)
    cl = torch.channels_last
    f_hat, f_rest, h = (torch.randn(2, 5, 7, 7, generator=g).contiguous(memory_format=cl) for _ in range(3))
    codebook = torch.randn(11, 5, generator=g)
    idx = torch.randint(0, 11, (2, 1 + 9 + 49), generator=g)
    torch.library.opcheck(ns.msq_residual_search.default, (f_hat, f_rest, h, codebook, 3))
    torch.library.opcheck(ns.msq_residual_search.default, (f_hat, f_rest, None, codebook, 7))
    torch.library.opcheck(ns.msq_up.default, (codebook, idx, [1, 3, 7], 7))
    torch.library.opcheck(ns.msq_up.default, (torch.randn(2, 13, 5, generator=g, dtype=torch.float64), None,
                                              [2, 3], 7))
    torch.library.opcheck(ns.msq_add_down.default, (f_hat, [h, h], [2, 0]))


# (H, pn, B, C): bins overlapping (pn not dividing H), the 512 px schedule's sizes at B = 1, many images per search
# block (pn = 1), rows longer than the fused kernel's shared memory (C > kMsqFusedMaxC = 160), and pn == H.
SEARCH_ROWS = [(7, 3, 3, 5), (32, 9, 1, 32), (32, 13, 1, 13), (16, 1, 70, 8), (5, 2, 2, 161), (7, 7, 2, 5)]
SEARCH_ROWS_SMALL = {(7, 3, 3, 5), (16, 1, 70, 8), (5, 2, 2, 161), (7, 7, 2, 5)}  # sanitize: one of each kind


@pytest.mark.parametrize("H, pn, B, C", sanitized(SEARCH_ROWS, SEARCH_ROWS_SMALL, unpack=True))
def test_residual_search_rows(backend, H, pn, B, C):
    """msq_residual_search computes the right rows: the codebook holds each row's true area-down of the updated
    f_rest, shuffled among decoys (the rows before the update, of f_rest shifted by one pixel along x or y below pn = H), so each
    index must name that row's own code exactly; the update is exact."""
    g = torch.Generator().manual_seed(8)
    cl = torch.channels_last
    f_hat, f_rest, h = (torch.randn(B, C, H, H, generator=g).contiguous(memory_format=cl) for _ in range(3))
    updated = f_rest - h

    def rows(f):  # (B pn^2, C)
        return ref.area_down(f, pn).permute(0, 2, 3, 1).reshape(-1, C)

    # At pn == H a shifted row is a neighbour's true row: no shifted decoys there.
    shifted = [] if pn == H else [torch.cat([updated[..., 1:], updated[..., -1:]], -1),
                                  torch.cat([updated[..., 1:, :], updated[..., -1:, :]], -2)]
    codes = torch.cat([rows(f) for f in [updated, f_rest, *shifted]])
    perm = torch.randperm(codes.shape[0], generator=g)
    dev = backend_device(backend)
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    out_hat, out_rest = f_hat.clone().to(dev), f_rest.clone().to(dev)  # updated in place
    idx = ns.msq_residual_search(out_hat, out_rest, h.to(dev), codes[perm].contiguous().to(dev), pn)
    assert idx.shape == (B, pn * pn)
    assert torch.equal(perm[idx.cpu().reshape(-1)], torch.arange(B * pn * pn))
    assert torch.equal(out_hat.cpu(), f_hat + h) and torch.equal(out_rest.cpu(), updated)


def test_decode_bad_index():
    _, codebook, w, b, patch_nums, ms_idx_Bl = make("odd")
    for bad in (-1, codebook.shape[0]):
        idx = [i.clone() for i in ms_idx_Bl]
        idx[2][0, 3] = bad
        for fn in (ops.idxBl_to_fhat, ops.idxBl_to_var_input):
            with pytest.raises(IndexError, match=r"ms_idx_Bl\[2\] holds an index outside \[0, 37\)"):
                fn(idx, codebook, w, b, patch_nums)
    with pytest.raises(RuntimeError, match=r"idx holds a code index outside \[0, 37\)"):
        torch.ops.fastar.msq_up(codebook, torch.full((1, 4), 37), [2], 5)


@pytest.mark.parametrize("mutate, match", [
    (lambda a: {**a, "patch_nums": (1, 3, 5, 6)}, r"patch_nums\[-1\]=6 must equal the map's H=W=7"),
    (lambda a: {**a, "codebook": a["codebook"][:, :4]}, "Cvae=4 but the feature map has C=5"),
    (lambda a: {**a, "phi_weight": a["phi_weight"][:, :, :, :2]}, "phi_weight must be"),
    (lambda a: {**a, "patch_nums": (1, 9, 7)}, "must not exceed the last one"),
    (lambda a: {**a, "patch_nums": ()}, "patch_nums must be a non-empty"),
    (lambda a: {**a, "patch_nums": torch.tensor(a["patch_nums"])}, "patch_nums must be a non-empty list or tuple"),
    (lambda a: {**a, "f_BChw": a["f_BChw"][..., :6]}, "f_BChw must be square"),
    (lambda a: {**a, "codebook": a["codebook"].int()}, "codebook must be one of"),
])
def test_encode_bad_input(mutate, match):
    f, codebook, w, b, patch_nums, _ = make("odd")
    args = mutate({"f_BChw": f, "codebook": codebook, "phi_weight": w, "phi_bias": b, "patch_nums": patch_nums})
    with pytest.raises((TypeError, ValueError), match=match):
        ops.f_to_idxBl_or_fhat(**args)


def test_other_functions_bad_input():
    f, codebook, w, b, patch_nums, ms_idx_Bl = make("odd")
    with pytest.raises(ValueError, match=r"ms_idx_Bl\[1\] must be \(B=3, 9\)"):
        ops.idxBl_to_fhat([ms_idx_Bl[0], ms_idx_Bl[2], ms_idx_Bl[1], ms_idx_Bl[3]], codebook, w, b, patch_nums)
    with pytest.raises(ValueError, match="ms_idx_Bl holds 3 scales but patch_nums 4"):
        ops.idxBl_to_var_input(ms_idx_Bl[:3], codebook, w, b, patch_nums)
    with pytest.raises(ValueError, match="h_BChw of patch size patch_nums"):
        ops.get_next_autoregressive_input(1, 4, torch.zeros(3, 5, 7, 7), torch.zeros(3, 5, 5, 5), w, b, patch_nums)
    with pytest.raises(ValueError, match="Cvae=5 but the feature map has C=4"):
        ops.get_next_autoregressive_input(0, 4, torch.zeros(3, 4, 7, 7), torch.zeros(3, 4, 1, 1), w, b, patch_nums)
    with pytest.raises(ValueError, match="the last patch size patch_nums"):
        ops.msq_forward(f, codebook, w, b, (1, 3, 5))


def test_binding_checks():
    """Direct torch.ops callers get named errors from the binding layer too."""
    cl = torch.channels_last
    f = torch.zeros(1, 4, 5, 5).contiguous(memory_format=cl)
    with pytest.raises(RuntimeError, match="f_rest must be channels_last contiguous"):
        torch.ops.fastar.msq_residual_search(f, torch.zeros(1, 4, 5, 5), None, torch.zeros(3, 4), 2)
    with pytest.raises(RuntimeError, match="codebook has C=3 but the maps have C=4"):
        torch.ops.fastar.msq_residual_search(f, f.clone(), None, torch.zeros(3, 3), 2)
    with pytest.raises(RuntimeError, match=r"patch_nums must lie in \[1, 5\], got 6"):
        torch.ops.fastar.msq_residual_search(f, f.clone(), None, torch.zeros(3, 4), 6)
    with pytest.raises(RuntimeError, match=r"idx must be \(B, 5\)"):
        torch.ops.fastar.msq_up(torch.zeros(3, 4), torch.zeros(1, 4, dtype=torch.long), [1, 2], 5)
    with pytest.raises(RuntimeError, match="h holds 1 maps but patch_nums 2"):
        torch.ops.fastar.msq_add_down(f, [f], [1, 2])


def test_low_precision_inputs_give_float32_maps_on_every_backend():
    """bfloat16 code maps, codebook and Phi: float32 maps from the kernels and the reference alike (the reference's
    convolution once refused bfloat16 maps beside a float32 bias, and returned bfloat16 where the kernels give
    float32)."""
    f, codebook, w, b, patch_nums, ms_idx_Bl = make("odd")
    ms_h = [torch.randn(f.shape[0], f.shape[1], pn, pn, generator=torch.Generator().manual_seed(pn)).bfloat16()
            for pn in patch_nums]
    out = {}
    for backend in ("cpu", "reference"):
        with fastar.use_backend(backend):
            out[backend] = (ops.embed_to_fhat(ms_h, w, b, patch_nums)[-1],
                            ops.f_to_idxBl_or_fhat(f.bfloat16(), codebook.bfloat16(), w.bfloat16(), b.bfloat16(),
                                                   patch_nums, to_fhat=True)[-1])
    for got, want in zip(out["cpu"], out["reference"]):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # the same float32 arithmetic, summed otherwise


def test_next_input_refuses_a_batch_mismatch():
    f, codebook, w, b, patch_nums, _ = make("odd")
    h = torch.randn(f.shape[0] + 1, f.shape[1], patch_nums[0], patch_nums[0])
    with pytest.raises(ValueError, match="h_BChw .* and f_hat .* must have the same batch"):
        ops.get_next_autoregressive_input(0, len(patch_nums), f.clone(), h, w, b, patch_nums)


def test_devices_are_checked_before_the_kernels():
    """A map or Phi on the meta device beside CPU tensors sent the call to the fake kernel (uninitialized memory,
    f_hat not updated): now an error naming the tensor."""
    f, codebook, phi_weight, phi_bias, patch_nums, _ = make("odd")
    f_hat, h = torch.zeros_like(f), torch.zeros(f.shape[0], f.shape[1], patch_nums[0], patch_nums[0])
    with pytest.raises(ValueError, match="h_BChw is on meta but f_hat is on cpu"):
        ops.get_next_autoregressive_input(0, len(patch_nums), f_hat, h.to("meta"), phi_weight, phi_bias, patch_nums)
    ms_h = [torch.zeros(f.shape[0], f.shape[1], pn, pn) for pn in patch_nums]
    with pytest.raises(ValueError, match=r"ms_h_BChw\[0\] is on cpu but phi_weight is on meta"):
        ops.embed_to_fhat(ms_h, phi_weight.to("meta"), phi_bias.to("meta"), patch_nums)


@pytest.mark.filterwarnings("ignore:fastar.ops")  # meta tensors run the torch backend, as it says
def test_meta_inputs_give_meta_results():
    """Shapes on the meta device (the index check and the reference's NaN fix-up read values: .item() failed)."""
    f, codebook, phi_weight, phi_bias, patch_nums, ms_idx_Bl = (t.to("meta") if isinstance(t, torch.Tensor) else
                                                                 [i.to("meta") for i in t] if isinstance(t, list)
                                                                 else t for t in make("odd"))
    assert ops.vq_nearest(f.permute(0, 2, 3, 1), codebook).shape == f.permute(0, 2, 3, 1).shape[:-1]
    idx = ops.f_to_idxBl_or_fhat(f, codebook, phi_weight, phi_bias, patch_nums)
    assert [tuple(i.shape) for i in idx] == [tuple(i.shape) for i in ms_idx_Bl]
    assert ops.idxBl_to_fhat(ms_idx_Bl, codebook, phi_weight, phi_bias, patch_nums, last_one=True).shape == f.shape
    L = sum(pn * pn for pn in patch_nums[1:])
    assert ops.idxBl_to_var_input(ms_idx_Bl, codebook, phi_weight, phi_bias, patch_nums).shape == (f.shape[0], L,
                                                                                                  f.shape[1])
    f_hat, hits, loss = ops.msq_forward(f, codebook, phi_weight, phi_bias, patch_nums)  # bincount has no meta kernel
    assert (f_hat.shape, hits.shape, loss.shape, hits.device.type) == (f.shape, (len(patch_nums), codebook.shape[0]),
                                                                       (), "meta")


@pytest.mark.parametrize("backend", ["cpu", "torch", "reference"])
def test_msq_forward_mixed_float_dtypes(backend):
    """Phi in float64 beside float32 maps: every backend computes in f's float32 (the torch and reference
    formulations failed in conv2d on the dtype mismatch)."""
    f, codebook, phi_weight, phi_bias, patch_nums, _ = make("odd")
    with fastar.use_backend(backend):
        f_hat, _, loss = ops.msq_forward(f, codebook, phi_weight.double(), phi_bias, patch_nums)
    want, _, want_loss = ref.msq_forward(f, codebook, phi_weight, phi_bias, patch_nums)
    assert f_hat.dtype == torch.float32
    torch.testing.assert_close(f_hat, want, rtol=1e-4, atol=1e-5)
