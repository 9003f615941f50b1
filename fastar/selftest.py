"""`python -m fastar selftest [--quick] [--bench] [--ops OP ...]`: this build's kernels against the float64 reference.

For a user who just installed fastar: builds nothing, runs the compiled kernels of every backend present (cuda on
a GPU, cpu always, simt when built) at the tests' awkward shapes and every dtype, and prints one row per output
(op, backend, dtype, shape, max error, tolerance, pass / fail) under the tests' tolerance rule (fastar.tolerance);
exits 1 on any failure. --quick: a subset that takes about a minute. --bench: CUDA-event timings against the peers
installed (fastar/selftest_bench.py), on a GPU only.
"""
import argparse
import sys
import time

import torch

import fastar
from fastar.ops import AttentionMask
from fastar.reference import attention as ref_attention
from fastar.reference import quantize as ref_quantize
from fastar.tolerance import K, error_and_bound

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (B, H, Hk, Lq, Lk, D) of tests/test_attention.py: one token, tails of the tiles, grouped heads, Lq != Lk,
# head dims 32 / 64 / 128 and an odd one. The first three make the quick run.
ATTENTION_SHAPES = [(1, 1, 1, 1, 1, 32), (1, 4, 2, 33, 97, 32), (2, 4, 4, 70, 70, 64), (1, 2, 1, 100, 61, 128),
                    (2, 3, 3, 129, 129, 24)]
VQ_SHAPES = [(257, 513, 17), (1000, 4096, 32), (4096, 16384, 64)]  # (N, K, D): tiles' tails, then VAR's V and C
MSQ_PATCH_NUMS = [((1, 3, 5, 7), 3, 5, 37), ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 2, 32, 4096)]  # (patch_nums, B, C, V)


def _randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _check_attention(device, dtype, shape, kind):
    """Rows (what, err, bound) of attention's out, lse, dq, dk, dv against the float64 reference."""
    B, H, Hk, Lq, Lk, D = shape
    q, k, v = _randn(B, H, Lq, D, seed=1), _randn(B, Hk, Lk, D, seed=2), _randn(B, Hk, Lk, D, seed=3)
    dout = _randn(B, H, Lq, D, seed=4)
    mask = AttentionMask.causal() if kind == "causal" else AttentionMask.full()

    def run(fn, dt, dev):
        qkv = [t.to(dt).to(dev).requires_grad_() for t in (q, k, v)]
        out, lse = fn(*qkv, mask, return_lse=True)
        return [out, lse, *torch.autograd.grad(out, qkv, dout.to(dt).to(dev))]

    got = run(fastar.ops.attention, dtype, device)
    r64, r_lp = run(ref_attention.attention, torch.float64, "cpu"), run(ref_attention.attention, dtype, "cpu")
    scale = max(g.abs().max().item() for g in r64[2:] if g.numel())  # dq, dk cancel to 0 for a single key
    rows = []
    for i, what in enumerate(("out", "lse", "dq", "dk", "dv")):
        op = "attention" if i < 2 else "attention_bwd"
        rows.append((f"attention {kind} {what}", *error_and_bound(op, got[i], r64[i], r_lp[i],
                                                                   None if i < 2 else scale)[:2]))
    return rows


def _check_decode(device, dtype, shape):
    B, H, Hk, _, Lk, D = shape
    q, k, v = _randn(B, H, 1, D, seed=5), _randn(B, Hk, Lk + 7, D, seed=6), _randn(B, Hk, Lk + 7, D, seed=7)
    out = fastar.ops.attention_decode(*(t.to(dtype).to(device) for t in (q, k, v)), Lk)
    ref = [ref_attention.attention(*(t.to(dt)[:, :, :Lk] if t is not q else t.to(dt) for t in (q, k, v)))
           for dt in (torch.float64, dtype)]
    return [("attention_decode out", *error_and_bound("attention", out, *ref)[:2])]


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


def _check_idxBl_to_fhat(device, case):
    patch_nums, B, C, V = case
    g = torch.Generator().manual_seed(10)
    codebook = torch.randn(V, C, generator=g)
    w, b = torch.randn(4, C, C, 3, 3, generator=g) / (3 * C**0.5), torch.randn(4, C, generator=g) * 0.1
    idx = [torch.randint(0, V, (B, pn * pn), generator=g) for pn in patch_nums]
    out = fastar.ops.idxBl_to_fhat([i.to(device) for i in idx], *(t.to(device) for t in (codebook, w, b)), patch_nums,
                                   last_one=True)
    r64 = ref_quantize.idxBl_to_fhat(idx, codebook.double(), w.double(), b.double(), patch_nums, last_one=True)
    r32 = ref_quantize.idxBl_to_fhat(idx, codebook, w, b, patch_nums, last_one=True)
    return [("idxBl_to_fhat f_hat", *error_and_bound("idxBl_to_fhat", out, r64, r32)[:2])]


def cases(quick):
    """(op, dtype name, shape, check(device)) of every check."""
    n_attn, n_vq, n_msq = (3, 1, 1) if quick else (len(ATTENTION_SHAPES), len(VQ_SHAPES) - 1, len(MSQ_PATCH_NUMS))
    out = []
    for dtype in DTYPES:
        dt = str(dtype).removeprefix("torch.")
        for shape in ATTENTION_SHAPES[:n_attn]:
            for kind in ("causal",) if quick else ("full", "causal"):
                out.append(("attention", dt, shape, lambda dev, d=dtype, s=shape, m=kind: _check_attention(dev, d, s, m)))
        out.append(("attention_decode", dt, ATTENTION_SHAPES[2],
                    lambda dev, d=dtype: _check_decode(dev, d, ATTENTION_SHAPES[2])))
        for shape in VQ_SHAPES[:n_vq]:
            out.append(("vq_nearest", dt, shape, lambda dev, d=dtype, s=shape: _check_vq_nearest(dev, d, s)))
    for case in MSQ_PATCH_NUMS[:n_msq]:
        out.append(("idxBl_to_fhat", "float32", case[0], lambda dev, c=case: _check_idxBl_to_fhat(dev, c)))
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


def run_checks(quick, ops=None, out=None):
    """Runs the checks, prints the table (to out, default stdout); returns the number of failed rows (an exception
    counts as one)."""
    out, failures = out or sys.stdout, 0
    print(f"{'op':<28} {'backend':<7} {'dtype':<9} {'shape':<26} {'max error':>10} {'tolerance':>10}  result", file=out)
    for backend, device in backends_to_check():
        for op, dt, shape, check in cases(quick or backend == "simt"):  # emulation: the quick subset
            if ops and op not in ops:
                continue
            if backend == "simt" and quick and op == "vq_nearest" and dt != "float32":
                continue  # the emulator runs every CUDA thread on the CPU: one dtype keeps --quick quick
            try:
                with fastar.use_backend(backend):
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
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastar selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset of shapes (about a minute)")
    parser.add_argument("--bench", action="store_true", help="then time the CUDA kernels against their peers")
    parser.add_argument("--ops", nargs="+", help="only these ops (attention, attention_decode, vq_nearest, ...)")
    args = parser.parse_args(argv)
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
