"""`python -m fastar selftest [--quick] [--bench] [--ops OP ...]`: this build's kernels against the float64 reference.

For a user who just installed fastar: builds nothing, runs the compiled kernels of every backend present (cuda on
a GPU, cpu always, simt when built) at the tests' awkward shapes and every dtype, and prints one row per output
(op, backend, dtype, shape, max error, tolerance, pass / fail) under the tests' tolerance rule (fastar.tolerance);
integer results exactly, sampling by the reference's draws on the same exponentials and a chi-square bound. Covers every
op of fastar.ops._registry.OPS; a last row per backend fails if a compiled kernel ran in no check. Exits 1 on any
failure. --quick: a subset that takes about a minute. --bench: CUDA-event timings against the peers
installed (fastar/selftest_bench.py), on a GPU only.
"""
import argparse
import contextlib
import functools
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastar
from fastar.ops import AttentionMask
from fastar.reference import diffusion as ref_diffusion
from fastar.reference import dropout as ref_dropout
from fastar.reference import quantize as ref_quantize
from fastar.reference import sampling as ref_sampling
from fastar.tolerance import K, error_and_bound

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (B, H, Hk, Lq, Lk, D) of tests/test_attention.py: one token (the tiny-L kernels), tails of the tiles, grouped heads,
# Lq != Lk, head dims 32 / 64 / 128 and an odd one, then 21 tiny sequences (tests/test_attention_tiny.py). The first
# three make the quick run.
ATTENTION_SHAPES = [(1, 1, 1, 1, 1, 32), (1, 4, 2, 33, 97, 32), (2, 4, 4, 70, 70, 64), (1, 2, 1, 100, 61, 128),
                    (2, 3, 3, 129, 129, 24), (3, 7, 7, 17, 17, 64)]
MASKS = ("full", "causal", "block_causal", "row", "column", "conv")  # VAR's block-causal, DALL-E's three
DECODE_POSITIONS = (2, 9, 40, 70)  # three queries ending there in a 7 text + 8 x 8 image stream: text, rows, the end
DECODE_SHAPE = (2, 4, 2, 3, 71, 32)  # (B, H, Hk, Lq, stream length, D); the caches hold 3 rows more
MULTI_AXIS_SHAPES = [(1, 6, 6, 4, 2, 64, 3), (2, 8, 8, 4, 1, 32, 4)]  # (B, H, W, heads, heads_kv, D, block)
VQ_SHAPES = [(257, 513, 17), (1000, 4096, 32), (4096, 16384, 64)]  # (N, K, D): tiles' tails, then VAR's V and C
MSQ_PATCH_NUMS = [((1, 3, 5, 7), 3, 5, 37), ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 2, 32, 4096)]  # (patch_nums, B, C, V)
SAMPLE_SHAPES = [(3, 7), (2, 4096)]  # rows off a block's warps; VAR's vocabulary
SAMPLE_FILTERS = dict(temperature=1.0, top_k=50, top_p=0.95, min_prob=1e-3)  # every filter at once
DIFFUSION_ROWS_CFG = [(7, 1.0), (10, 2.9)]  # (N, cfg): odd rows; [cond ; uncond] pairs
DIFFUSION_HEAD = (2, 48, 16, 24)  # (depth, width, C, Z): tests/test_diffusion.py's small head


def _randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _to(x, dtype, device):
    """A copy of x, its floating tensors in dtype, every tensor on device (lists, tuples, dicts: each item)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device, dtype if x.is_floating_point() else x.dtype, copy=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(t, dtype, device) for t in x)
    if isinstance(x, dict):
        return {k: _to(v, dtype, device) for k, v in x.items()}
    return x


def _versus_reference(run, inputs, dtype, device, lowp=None):
    """(run(*inputs) on the backend under test, then on the reference backend in float64 and in lowp (default:
    dtype)), all in dtype on device; run returns a list of tensors. The references run first, so last_backend names
    the backend under test; they run on device, so a CUDA generator draws the same numbers for both."""
    refs = []
    for dt in (torch.float64, lowp or dtype):
        with fastar.use_backend("reference"):
            refs.append(run(*_to(inputs, dt, device)))
    return run(*_to(inputs, dtype, device)), *refs


def _rows(prefix, names, tol, got, r64, r_lp, scale=None):
    """One row (what, err, bound) per output under the tolerance rule of op `tol` (fastar.tolerance)."""
    return [(f"{prefix} {n}", *error_and_bound(tol, g, a, b, scale)[:2]) for n, g, a, b in zip(names, got, r64, r_lp)]


def _grads_rows(prefix, got, r64, r_lp, tol):
    """Rows of (out, lse, dq, dk, dv): the gradients' floor relative to their largest (dq, dk cancel to 0 for one
    key)."""
    scale = max([g.abs().max().item() for g in r64[2:] if g.numel()] or [0.0])
    return (_rows(prefix, ("out", "lse"), tol, got[:2], r64[:2], r_lp[:2]) +
            _rows(prefix, ("dq", "dk", "dv"), f"{tol}_bwd", got[2:], r64[2:], r_lp[2:], scale))


def _with_grads(fn):
    """run(q, k, v, dout) -> [out, lse, dq, dk, dv] of fn(q, k, v) -> (out, lse)."""
    def run(q, k, v, dout):
        qkv = [t.requires_grad_() for t in (q, k, v)]
        out, lse = fn(*qkv)
        return [out, lse, *torch.autograd.grad(out, qkv, dout)]
    return run


def _mask(kind, Lk):
    """tests/test_attention.py's masks over Lk keys: VAR's scales pn^2; DALL-E's text, then an 8 x 8 (or smaller)
    grid."""
    if kind in ("full", "causal"):
        return getattr(AttentionMask, kind)()
    if kind == "block_causal":
        lens, pn = [], 1
        while sum(lens) < Lk:
            lens, pn = lens + [min(pn * pn, Lk - sum(lens))], pn + 1
        return AttentionMask.block_causal(lens)
    grid = 8 if Lk >= 64 else 4 if Lk >= 16 else 1
    return AttentionMask.dalle(kind, max(Lk - grid * grid, 0), grid, conv_kernel=3)


def _check_attention(device, dtype, shape, kind):
    """attention's out, lse, dq, dk, dv against the float64 reference."""
    B, H, Hk, Lq, Lk, D = shape
    mask = _mask(kind, Lk)
    inputs = [_randn(B, H, Lq, D, seed=1), _randn(B, Hk, Lk, D, seed=2), _randn(B, Hk, Lk, D, seed=3),
              _randn(B, H, Lq, D, seed=4)]
    run = _with_grads(lambda q, k, v: fastar.ops.attention(q, k, v, mask, return_lse=True))
    return _grads_rows(f"attention {kind}", *_versus_reference(run, inputs, dtype, device), "attention")


def _check_decode(device, dtype, kind):
    """Three queries ending at each of DECODE_POSITIONS, over caches 3 rows longer than the stream."""
    B, H, Hk, Lq, L, D = DECODE_SHAPE
    mask = _mask(kind, L)

    def run(q, k_cache, v_cache):
        outs = [fastar.ops.attention_decode(q[:, :, p - Lq + 1:p + 1], k_cache, v_cache, p + 1, mask, return_lse=True)
                for p in DECODE_POSITIONS]
        return [torch.cat([o[i] for o in outs], 2) for i in (0, 1)]
    inputs = [_randn(B, H, L, D, seed=5), _randn(B, Hk, L + 3, D, seed=6), _randn(B, Hk, L + 3, D, seed=7)]
    return _rows(f"attention_decode {kind}", ("out", "lse"), "attention",
                 *_versus_reference(run, inputs, dtype, device))


def _check_multi_axis(device, dtype, shape):
    B, H, W, heads, hk, D, b = shape
    inputs = [_randn(B, H, W, heads, D, seed=11), _randn(B, H, W, hk, D, seed=12), _randn(B, H, W, hk, D, seed=13),
              _randn(B, H, W, heads, D, seed=14)]
    run = _with_grads(lambda q, k, v: fastar.ops.multi_axis_attention(q, k, v, b, return_lse=True))
    return _grads_rows("multi_axis_attention", *_versus_reference(run, inputs, dtype, device), "multi_axis_attention")


def _check_vq_nearest(device, dtype, shape):
    """The chosen code's float64 distance above the minimum (0 unless a tie within K x the float32 reference's
    error) and the returned distances."""
    N, V, D = shape
    x, codebook = _randn(N, D, seed=8, dtype=dtype), _randn(V, D, seed=9, dtype=dtype)
    idx, dist = fastar.ops.vq_nearest(x.to(device), codebook.to(device), return_distance=True)
    idx = idx.cpu()
    d64 = ref_quantize.vq_distances(x.double(), codebook.double())
    d32 = ref_quantize.vq_distances(x.float(), codebook.float())
    gap = (d64.gather(1, idx[:, None])[:, 0] - d64.min(1).values).max().item()
    allowed = K["vq_nearest"] * (d32.double() - d64).abs().max().item()
    pick = idx[:, None]
    dist_row = error_and_bound("vq_nearest", dist.reshape(-1), d64.gather(1, pick)[:, 0], d32.gather(1, pick)[:, 0])
    return [("vq_nearest index gap", gap, allowed), ("vq_nearest distance", *dist_row[:2])]


def _msq_inputs(case, seed):
    """f, codebook, phi_weight, phi_bias (float32), per-scale indices of tests/test_quantize_multiscale.py's make."""
    patch_nums, B, C, V = case
    g, H = torch.Generator().manual_seed(seed), patch_nums[-1]
    f, codebook = torch.randn(B, C, H, H, generator=g), torch.randn(V, C, generator=g)
    w, b = torch.randn(4, C, C, 3, 3, generator=g) / (3 * C**0.5), torch.randn(4, C, generator=g) * 0.1
    return f, codebook, w, b, [torch.randint(0, V, (B, pn * pn), generator=g) for pn in patch_nums]


def _index_gap_row(op, idx, f, codebook, w, b, patch_nums):
    """Each scale's index against the float64 argmin along the op's own earlier indices: (what, largest gap, K x the
    float32 replay's distance error); f_hat per scale from the reference decode of the indices."""
    gaps, errs = [], []
    d = {}
    for dt in (torch.float64, torch.float32):
        f_hats = ref_quantize.idxBl_to_fhat(idx, codebook.to(dt), w.to(dt), b.to(dt), patch_nums)
        rests = [f.to(dt)] + [f.to(dt) - h for h in f_hats[:-1]]
        d[dt] = [ref_quantize.vq_distances(ref_quantize.area_down(r, pn).permute(0, 2, 3, 1).reshape(-1, f.shape[1]),
                                           codebook.to(dt)).double() for r, pn in zip(rests, patch_nums)]
    for i, d64, d32 in zip(idx, d[torch.float64], d[torch.float32]):
        gaps.append((d64.gather(1, i.reshape(-1, 1))[:, 0] - d64.min(1).values).max().item())
        errs.append((d32 - d64).abs().max().item())
    return (f"{op} index gap", max(gaps), K[op] * max(errs))


def _check_encode(device, case):
    f, codebook, w, b, _ = _msq_inputs(case, seed=1)
    patch_nums = case[0]
    args = [t.to(device) for t in (f, codebook, w, b)]
    idx = [i.cpu() for i in fastar.ops.f_to_idxBl_or_fhat(*args, patch_nums)]
    f_hats = torch.stack(fastar.ops.f_to_idxBl_or_fhat(*args, patch_nums, to_fhat=True))
    refs = [torch.stack(ref_quantize.idxBl_to_fhat(idx, *(t.to(dt) for t in (codebook, w, b)), patch_nums))
            for dt in (torch.float64, torch.float32)]
    return [_index_gap_row("f_to_idxBl_or_fhat", idx, f, codebook, w, b, patch_nums),
            ("f_to_idxBl_or_fhat f_hats", *error_and_bound("f_to_idxBl_or_fhat", f_hats, *refs)[:2])]


def _check_decode_maps(device, case, op):
    """idxBl_to_fhat (all scales' f_hat and the last one), embed_to_fhat, idxBl_to_var_input, and the SN steps of
    get_next_autoregressive_input (every next input, then f_hat)."""
    _, codebook, w, b, idx = _msq_inputs(case, seed=2)
    patch_nums = case[0]
    h = [ref_quantize.embed(i, codebook.double(), pn) for i, pn in zip(idx, patch_nums)]

    def run(codebook, w, b, idx, h):
        if op == "idxBl_to_fhat":
            return [torch.stack(fastar.ops.idxBl_to_fhat(idx, codebook, w, b, patch_nums)),
                    fastar.ops.idxBl_to_fhat(idx, codebook, w, b, patch_nums, last_one=True)]
        if op == "embed_to_fhat":
            return [torch.stack(fastar.ops.embed_to_fhat(h, w, b, patch_nums))]
        if op == "idxBl_to_var_input":
            return [fastar.ops.idxBl_to_var_input(idx, codebook, w, b, patch_nums)]
        f_hat, nxt = h[0].new_zeros(*h[0].shape[:2], patch_nums[-1], patch_nums[-1]), []
        step = ref_quantize.get_next_autoregressive_input if f_hat.dtype == torch.float64 else \
            fastar.ops.get_next_autoregressive_input  # the op takes float32 f_hat only
        for si in range(len(patch_nums)):
            nxt.append(step(si, len(patch_nums), f_hat, h[si], w, b, patch_nums)[1].flatten().clone())
        return [torch.cat(nxt), f_hat]
    names = {"idxBl_to_fhat": ("f_hats", "f_hat"), "get_next_autoregressive_input": ("next inputs", "f_hat")}
    return _rows(op, names.get(op, ("out",)), op,
                 *_versus_reference(run, [codebook, w, b, idx, h], torch.float32, device))


def _check_msq_forward(device, case):
    """f_hat (tolerance rule), codebook hits (exact), loss and gradients (tests/test_quantize_multiscale.py's bounds:
    1e-5 and 1e-4 of the float64 reference along the op's own indices)."""
    f, codebook, w, b, _ = _msq_inputs(case, seed=5)
    patch_nums, V = case[0], case[3]
    leaves = [t.to(device).requires_grad_() for t in (f, codebook, w, b)]
    f_hat, hits, loss = fastar.ops.msq_forward(*leaves, patch_nums)
    (loss + f_hat.square().sum()).backward()
    idx = [i.cpu() for i in fastar.ops.f_to_idxBl_or_fhat(*(t.detach() for t in leaves), patch_nums)]
    leaves64 = [t.detach().double().requires_grad_() for t in (f, codebook, w, b)]
    f_hats64 = ref_quantize.idxBl_to_fhat(idx, *leaves64[1:], patch_nums)
    f64 = leaves64[0]
    loss64 = sum(0.25 * (h.detach() - f64).square().mean() + (h - f64.detach()).square().mean() for h in f_hats64)
    loss64 = loss64 / len(patch_nums)
    f_hat64 = (f_hats64[-1].detach() - f64.detach()) + f64
    (loss64 + f_hat64.square().sum()).backward()
    f_hat32 = ref_quantize.idxBl_to_fhat(idx, codebook, w, b, patch_nums, last_one=True)
    hits_ref = torch.stack([i.reshape(-1).bincount(minlength=V).float() for i in idx])
    rows = [("msq_forward f_hat", *error_and_bound("msq_forward", f_hat, f_hat64, f_hat32)[:2]),
            ("msq_forward hits", (hits.cpu() - hits_ref).abs().max().item(), 0.0),
            ("msq_forward loss", abs(loss.item() - loss64.item()), 1e-5 * loss64.item())]
    for name, t, t64 in zip(("f", "codebook", "phi_weight", "phi_bias"), leaves, leaves64):
        rows.append((f"msq_forward d{name}", (t.grad.cpu().double() - t64.grad).abs().max().item(),
                     1e-4 * t64.grad.abs().max().item() + 1e-6))
    return rows


def _check_sample(device, dtype, shape):
    """The reference's draws for the same exponentials (sample_categorical's contract): a row may differ only where
    the two deciding ratios are within 1e-5 (the kernel's float32 masses), at most 1 % of the rows."""
    logits = _randn(*shape, seed=15, dtype=dtype) * 3
    race = ref_sampling.races(logits.to(device), torch.Generator(device).manual_seed(1)).cpu()
    out = fastar.ops.sample_categorical(logits.to(device), generator=torch.Generator(device).manual_seed(1),
                                        **SAMPLE_FILTERS).cpu().flatten()
    rows = logits.reshape(-1, shape[-1])
    expected = ref_sampling.sample_from_races(rows, race, **SAMPLE_FILTERS)
    ratio = ref_sampling.keep_mask(rows.double(), **SAMPLE_FILTERS)[0] / race.double()
    bad = (out != expected).nonzero().flatten().tolist()
    unexplained = sum(out[r] < 0 or ratio[r, out[r]] < ratio[r, expected[r]] * (1 - 1e-5) for r in bad)
    return [("sample_categorical off draws", unexplained, 0), ("sample_categorical near ties", len(bad),
                                                                 max(1, len(out) // 100))]


def _check_sample_distribution(device, V=60, N=6000):
    """N draws from one row against the exact probabilities of the kept set: Pearson's chi-square below
    df + 6 sqrt(2 df) + 10 (p < 1e-6 for any df; tests/test_sampling.py), and no token of probability 0."""
    row = _randn(V, seed=3) * 1.5
    out = fastar.ops.sample_categorical(row.expand(N, V).contiguous().to(device), **SAMPLE_FILTERS,
                                        generator=torch.Generator(device).manual_seed(2)).cpu()
    kept, _ = ref_sampling.keep_mask(row.double()[None], **SAMPLE_FILTERS)
    probs, counts = (kept / kept.sum())[0], torch.bincount(out, minlength=V).double()
    mass, df = probs > 0, int((probs > 0).sum()) - 1
    stat = ((counts[mass] - N * probs[mass]) ** 2 / (N * probs[mass])).sum().item()
    return [("sample_categorical chi-square", stat, df + 6 * (2 * max(df, 1)) ** 0.5 + 10),
            ("sample_categorical p=0 draws", counts[~mass].sum().item(), 0)]


def _head_weights(depth, seed=0):
    """tests/test_diffusion.py's random float64 head: eps ~ 1 and v in about [-1, 1], a chain that moves."""
    _, width, C, Z = DIFFUSION_HEAD
    g, weights = torch.Generator().manual_seed(seed), {}
    for k, shape in ref_diffusion.head_shapes(depth, width, C, Z).items():
        t = torch.randn(shape, generator=g, dtype=torch.float64) / (shape[1] if len(shape) == 2 else 1) ** 0.5
        weights[k] = 1 + 0.1 * t if k.endswith("in_ln.weight") else 0.1 * t if k.endswith("bias") else \
            0.3 * t if "adaLN" in k else t
    return weights


def _check_diffusion_sample(device, precision, N, cfg):
    """20 DDPM steps from one generator seed (the reference draws the same noise on the same device). bf16: a mode
    of the CPU kernels only (the device kernels refuse it), run on any CPU (FASTAR_EMULATED_BF16)."""
    if precision == "bf16" and fastar._backend.active(torch.device(device)) != "cpu":
        return []
    def run(z, weights):  # the float64 reference is the exact math; the low-precision one rounds as the mode does
        return [fastar.ops.diffusion_sample(z, weights, num_steps=20, cfg=cfg, generator=torch.Generator(
            z.device).manual_seed(7), precision="fp32" if z.dtype == torch.float64 else precision)]
    inputs = [_randn(N, DIFFUSION_HEAD[3], seed=N), _head_weights(DIFFUSION_HEAD[0])]
    tol = "diffusion_sample" + ("_bf16" if precision == "bf16" else "")
    with _emulated_bf16(precision == "bf16" and device == "cpu"):
        return _rows("diffusion_sample", (f"{precision} out",), tol,
                     *_versus_reference(run, inputs, torch.float32, device))


@contextlib.contextmanager
def _emulated_bf16(on):
    """FASTAR_EMULATED_BF16=1 while on: the bf16 path's correctness on a CPU without bf16 GEMMs (not its speed)."""
    old = os.environ.get("FASTAR_EMULATED_BF16")
    if on:
        os.environ["FASTAR_EMULATED_BF16"] = "1"
    try:
        yield
    finally:
        if on:
            os.environ.pop("FASTAR_EMULATED_BF16") if old is None else os.environ.update(FASTAR_EMULATED_BF16=old)


def _check_diffusion_loss(device):
    """MAR's training loss of 6 rows (t at both ends of the chain) and its gradients (z, the head's parameters)."""
    from fastar.models.mar import SimpleMLPAdaLN
    _, width, C, Z = DIFFUSION_HEAD
    g = torch.Generator().manual_seed(0)
    x_start, noise, z = (torch.randn(6, n, generator=g) * s for n, s in ((C, 0.5), (C, 1), (Z, 1)))
    t = torch.tensor([0, 1, 7, 500, 998, 999])

    def run(x_start, noise, z, t, weights):
        head = SimpleMLPAdaLN(C, width, Z, 1)
        head.load_state_dict(weights)
        head.to(z.device, z.dtype)
        z.requires_grad_()
        loss = fastar.ops.diffusion_loss(x_start, z, head, t=t, noise=noise)
        loss.sum().backward()
        return [loss, z.grad, torch.cat([p.grad.flatten() for p in head.parameters()])]
    return _rows("diffusion_loss", ("loss", "dz", "dhead"), "diffusion_loss",
                 *_versus_reference(run, [x_start, noise, z, t, _head_weights(1)], torch.float32, device))


def _check_dropout(device, dtype):
    """The reference's mask and values for one seed, and the backward (the same mask on the gradient): exact."""
    x = _randn(3, 1001, seed=16, dtype=dtype).to(device).requires_grad_()
    out = fastar.ops.dropout(x, 0.3, generator=torch.Generator().manual_seed(4))
    (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    seed = ref_dropout.draw_seed(torch.Generator().manual_seed(4))
    want = ref_dropout.dropout_with_seed(x.detach().cpu(), seed, 0.3)
    want_dx = ref_dropout.dropout_with_seed(torch.ones_like(x).cpu(), seed, 0.3)
    return [("dropout values off", int((out.detach().cpu() != want).sum()), 0),
            ("dropout grad off", int((dx.cpu() != want_dx).sum()), 0)]


def _check_blur_pool(device, dtype, shape):
    """BlurPool2D, its backward and the backward's backward (R1's) against the reference."""
    B, C, H, W = shape

    def run(x, g, gg):
        x, g = x.requires_grad_(), g.requires_grad_()
        y = fastar.ops.blur_pool(x)
        (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
        return [y, gx, torch.autograd.grad(gx, g, gg)[0]]
    inputs = [_randn(*shape, seed=60), _randn(B, C, H // 2, W // 2, seed=61), _randn(*shape, seed=62)]
    return _rows("blur_pool", ("out", "dx", "d(dx)/dgrad"), "blur_pool",
                 *_versus_reference(run, inputs, dtype, device))


def _check_linear(device, M):
    """A decode step's linear (M rows) and its gradients against the reference, float32."""
    def run(x, w, b, dout):
        xwb = [t.requires_grad_() for t in (x, w, b)]
        out = fastar.ops.linear(*xwb)
        return [out, *torch.autograd.grad(out, xwb, dout)]
    inputs = [_randn(M, 300, seed=17), _randn(70, 300, seed=18), _randn(70, seed=19), _randn(M, 70, seed=20)]
    return _rows("linear", ("out", "dx", "dweight", "dbias"), "linear",
                 *_versus_reference(run, inputs, torch.float32, device))


def _check_transformer_decode(device, block):
    """One decode step (2 rows) through 4 layers of width 64, 4 heads, and the cache entries it writes, float32:
    gpt2 blocks under DALL-E's masks (row, column, row, conv), llama blocks (RoPE) causal."""
    masks = ([AttentionMask.dalle(kind, 5, 4, 3) for kind in ("row", "column", "row", "conv")] if block == "gpt2"
             else [AttentionMask.causal()] * 4)
    shapes = ([(64,), (64,), (192, 64), (192,), (64, 64), (64,), (64,), (64,), (128, 64), (128,), (64, 128), (64,)]
              if block == "gpt2" else [(64,), (192, 64), (64, 64), (64,), (96, 64), (96, 64), (64, 96)])
    n = len(shapes)

    def run(x, rope, *t):
        layers = [list(t[n * i:n * i + n]) for i in range(4)]
        ks, vs = list(t[4 * n:4 * n + 4]), list(t[4 * n + 4:4 * n + 8])
        out = fastar.ops.transformer_decode(x, layers, ks, vs, 13, masks, heads=4, block=block,
                                            rope=rope if block == "llama" else None)
        return [out, torch.stack(ks), torch.stack(vs)]
    weights = [_randn(*s, seed=30 + i) * 0.2 + (1 if len(s) == 1 and i % n in (0, 3 if block == "llama" else 6)
                                                 else 0) for i, s in enumerate(shapes * 4)]
    caches = [_randn(2, 4, 21, 16, seed=90 + i) for i in range(8)]
    angles = _randn(1, 8, seed=28) * 3
    rope = torch.stack([angles.cos(), angles.sin()], -1)
    return _rows(f"transformer_decode {block}", ("out", "k caches", "v caches"), "transformer_decode",
                 *_versus_reference(run, [_randn(2, 1, 64, seed=29), rope, *weights, *caches], torch.float32, device))


def _check_conv3x3(device, shape):
    """A 3x3 convolution (Winograd on the CPU) against the reference, float32: odd sides, tiles along rows and
    across them."""
    B, Ci, Co, H, W = shape
    inputs = [_randn(B, Ci, H, W, seed=40), _randn(Co, Ci, 3, 3, seed=41) / (9 * Ci) ** 0.5, _randn(Co, seed=42),
              _randn(B, Co, H, W, seed=43)]

    def run(x, w, b, dy):  # the output, and under autograd the three gradients (dx: the kernel on the adjoint)
        x, w, b = (t.requires_grad_() for t in (x, w, b))
        y = fastar.ops.conv3x3(x, w, b)
        return [y.detach(), *torch.autograd.grad(y, (x, w, b), dy)]
    return _rows("conv3x3", ("out", "dx", "dw", "db"), "conv3x3", *_versus_reference(run, inputs, torch.float32, device))


def _check_mlp(device, shape):
    """An MLP with a residual (one CPU kernel), returned and into out, and one with softmax groups (folded attention)
    instead of the GELU, against the reference, float32: rows off the register blocks, widths off the panels, K past
    one partial sum, groups off the vectors and of one."""
    N, C, hidden, group = shape
    inputs = [_randn(N, C, seed=43), _randn(hidden, C, seed=44) / C ** 0.5, _randn(hidden, seed=45),
              _randn(C, hidden, seed=46) / hidden ** 0.5, _randn(C, seed=47)]

    def run(x, w1, b1, w2, b2):  # returned, written into a given out, with softmax groups
        return [fastar.ops.mlp(x, w1, b1, w2, b2, x), fastar.ops.mlp(x, w1, b1, w2, b2, x, out=torch.empty_like(x)),
                fastar.ops.mlp(x, w1, b1, w2, b2, softmax_group=group)]
    return _rows("mlp", ("out", "into out", "softmax groups"), "mlp",
                 *_versus_reference(run, inputs, torch.float32, device))


def _check_gelu_with_derivative(device, approximate):
    """The GELU and its derivative in one pass against the reference, float32, exact and tanh: a length off the
    vectors and past a thread's grain."""
    return _rows("gelu_with_derivative", ("y", "dy/dx"), "gelu_with_derivative", *_versus_reference(
        lambda x: list(fastar.ops.gelu_with_derivative(x, approximate)), [_randn(20001, seed=50) * 3],
        torch.float32, device))


def _check_linear_weight_grad(device, shape):
    """A Linear's weight gradient grad^T x (the float32 GEMM library) against the reference, float32."""
    M, N, K = shape
    return _rows("linear_weight_grad", ("dweight",), "linear",
                 *_versus_reference(lambda g, x: [fastar.ops.linear_weight_grad(g, x)],
                                    [_randn(M, N, seed=48), _randn(M, K, seed=49)], torch.float32, device))


# ops with a CPU kernel only (no CUDA kernel to check on cuda or under simt)
CPU_ONLY = {"conv3x3", "mlp", "gelu_with_derivative", "linear_weight_grad"}


def cases(quick):
    """(op, dtype name, shape, check(device)) of every check: every op of fastar.ops._registry.OPS."""
    n = 1 if quick else 2
    out = []
    for dtype in DTYPES:
        dt = str(dtype).removeprefix("torch.")
        for shape in ATTENTION_SHAPES[:3] if quick else ATTENTION_SHAPES:
            for kind in ("causal",) if quick else ("full", "causal"):
                out.append(("attention", dt, shape, functools.partial(_check_attention, dtype=dtype, shape=shape,
                                                                      kind=kind)))
        for kind in ("conv",) if quick else MASKS[1:]:  # the masks' own paths at one shape
            if kind != "causal":
                out.append(("attention", dt, ATTENTION_SHAPES[2], functools.partial(
                    _check_attention, dtype=dtype, shape=ATTENTION_SHAPES[2], kind=kind)))
        for kind in ("full", "row") if quick else ("full", "causal", "row", "column", "conv"):
            out.append(("attention_decode", dt, DECODE_SHAPE, functools.partial(_check_decode, dtype=dtype, kind=kind)))
        for shape in MULTI_AXIS_SHAPES[:n]:
            out.append(("multi_axis_attention", dt, shape, functools.partial(_check_multi_axis, dtype=dtype,
                                                                             shape=shape)))
        for shape in VQ_SHAPES[:n]:
            out.append(("vq_nearest", dt, shape, functools.partial(_check_vq_nearest, dtype=dtype, shape=shape)))
        for shape in SAMPLE_SHAPES[:n]:
            out.append(("sample_categorical", dt, shape, functools.partial(_check_sample, dtype=dtype, shape=shape)))
        out.append(("dropout", dt, (3, 1001), functools.partial(_check_dropout, dtype=dtype)))
        out.append(("blur_pool", dt, (2, 3, 13, 18), functools.partial(_check_blur_pool, dtype=dtype,
                                                                        shape=(2, 3, 13, 18))))
    out.append(("sample_categorical", "float32", (6000, 60), _check_sample_distribution))
    for case in MSQ_PATCH_NUMS[:n]:
        out.append(("f_to_idxBl_or_fhat", "float32", case[0], functools.partial(_check_encode, case=case)))
        out.append(("msq_forward", "float32", case[0], functools.partial(_check_msq_forward, case=case)))
        for op in ("idxBl_to_fhat", "embed_to_fhat", "idxBl_to_var_input", "get_next_autoregressive_input"):
            out.append((op, "float32", case[0], functools.partial(_check_decode_maps, case=case, op=op)))
    for precision in ("fp32", "bf16"):
        for N, cfg in DIFFUSION_ROWS_CFG[:n]:
            out.append(("diffusion_sample", "float32", (N, cfg), functools.partial(
                _check_diffusion_sample, precision=precision, N=N, cfg=cfg)))
    out.append(("diffusion_loss", "float32", (6, DIFFUSION_HEAD[2]), _check_diffusion_loss))
    for M in (1, 5)[:n]:
        out.append(("linear", "float32", (M, 300, 70), functools.partial(_check_linear, M=M)))
    for block in ("gpt2", "llama"):
        out.append(("transformer_decode", "float32", (2, 1, 64), functools.partial(_check_transformer_decode,
                                                                                   block=block)))
    for shape in ((2, 5, 7, 9, 13), (1, 32, 20, 6, 70))[:n]:
        out.append(("conv3x3", "float32", shape, functools.partial(_check_conv3x3, shape=shape)))
    for shape in ((37, 20, 33), (500, 64, 256))[:n]:
        out.append(("linear_weight_grad", "float32", shape, functools.partial(_check_linear_weight_grad, shape=shape)))
    for shape in ((13, 20, 70, 10), (50, 64, 256, 16))[:n]:
        out.append(("mlp", "float32", shape, functools.partial(_check_mlp, shape=shape)))
    for approximate in ("none", "tanh"):
        out.append(("gelu_with_derivative", "float32", (20001, approximate), functools.partial(
            _check_gelu_with_derivative, approximate=approximate)))
    return out


def backends_to_check():
    """(backend, device) of every compiled backend present; says what is missing."""
    built, out = fastar.backends(), []
    if built["cuda"] and torch.cuda.is_available():
        out.append(("cuda", "cuda"))
    else:
        why = "fastar was built without CUDA" if not built["cuda"] else "torch sees no CUDA GPU"
        print(f"selftest: no CUDA GPU to check ({why}); checking the CPU kernels" +
              (" and the CUDA kernels under the simt emulator" if built["simt"] else ""))
    if built["cpu"]:
        out.append(("cpu", "cpu"))
    if built["simt"]:
        out.append(("simt", "cpu"))
    return out


class _KernelLog(TorchDispatchMode):
    """Records the compiled kernels (torch.ops.fastar.*, fastar_simt.*) called under it."""
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("fastar", "fastar_simt"):
            overload = func._schema.overload_name  # "out" for fastar::mlp.out, as the dispatcher names it
            self.seen.add(func._schema.name + (f".{overload}" if overload else ""))
        return func(*args, **(kwargs or {}))


def compiled_kernels(backend):
    """The compiled kernels of `backend` ('cpu', 'cuda', 'simt'): the schemas with a kernel for its dispatch key."""
    ns, key = {"cpu": ("fastar", "CPU"), "cuda": ("fastar", "CUDA"), "simt": ("fastar_simt", "CPU")}[backend]
    return {name for name in torch._C._dispatch_get_all_op_names()
            if name.startswith(ns + "::") and torch._C._dispatch_has_kernel_for_dispatch_key(name, key)}


def run_checks(quick, ops=None, out=None):
    """Runs the checks, prints the table (to out, default stdout); returns the number of failed rows (an exception
    counts as one). Without ops, a last row per backend fails when a compiled kernel ran in no check."""
    out = out or sys.stdout
    # float32 means float32: no TF32 in cuDNN's convolutions (its default) or cuBLAS (restored after the checks)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _run_checks(quick, ops, out)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _run_checks(quick, ops, out):
    failures = 0
    if not backends_to_check():  # fastar._C missing or failing to load: nothing compiled to check is a failure
        why = fastar.build_info().get("error") or f"fastar.backends() = {fastar.backends()}"
        print(f"selftest: FAIL: no compiled kernels to check ({why})", file=out)
        return 1
    print(f"{'op':<28} {'backend':<7} {'dtype':<9} {'shape':<26} {'max error':>10} {'tolerance':>10}  result", file=out)
    for backend, device in backends_to_check():
        seen = set()
        for op, dt, shape, check in cases(quick or backend == "simt"):  # emulation: the quick subset
            if ops and op not in ops:
                continue
            if backend == "simt" and quick and op in ("vq_nearest", "sample_categorical") and dt != "float32":
                continue  # the emulator runs every CUDA thread on the CPU: one dtype keeps --quick quick
            if backend != "cpu" and op in CPU_ONLY:
                continue
            try:
                with fastar.use_backend(backend), _KernelLog(seen):
                    rows = check(device)
                ran = {fastar.last_backend(op)}
                rows = [(what, err, bound, "pass" if err <= bound and ran == {backend} else
                         "FAIL" if err > bound else f"FAIL (ran {ran.pop()})") for what, err, bound in rows]
            except Exception as e:  # a kernel that raises is a failure of its row, not of the run
                rows = [(op, float("nan"), float("nan"), f"FAIL ({type(e).__name__}: {str(e).splitlines()[0][:80]})")]
            for what, err, bound, result in rows:
                failures += result != "pass"
                print(f"{what:<28} {backend:<7} {dt:<9} {str(shape):<26} {err:>10.3g} {bound:>10.3g}  {result}",
                      file=out, flush=True)
        if not ops:
            missed = sorted(compiled_kernels(backend) - seen)
            failures += bool(missed)
            print(f"{'every kernel checked':<28} {backend:<7} {'':<9} {'':<26} {len(missed):>10} {0:>10}  " +
                  (f"FAIL (unchecked: {', '.join(missed)})" if missed else "pass"), file=out, flush=True)
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastar selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset of shapes (about a minute)")
    parser.add_argument("--bench", action="store_true", help="then time the CUDA kernels against their peers")
    parser.add_argument("--ops", nargs="+", help="only these ops (attention, attention_decode, vq_nearest, ...)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops or ()) - {op for op, *_ in cases(False)})
    if unknown:
        known = ", ".join(sorted({c[0] for c in cases(False)}))
        parser.error(f"--ops: no check of {', '.join(unknown)}; the ops: {known}")
    start = time.perf_counter()
    failures = run_checks(args.quick, args.ops)
    print(f"selftest: {'all passed' if not failures else f'{failures} FAILED'} in {time.perf_counter() - start:.0f} s")
    if args.bench:
        if torch.cuda.is_available() and fastar.backends()["cuda"]:
            from fastar import selftest_bench
            selftest_bench.main(quick=args.quick)
        else:
            print("selftest --bench: no CUDA GPU, nothing to time (CPU speed: pytest benchmarks --benchmark-only)")
    raise SystemExit(1 if failures else 0)
