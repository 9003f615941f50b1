"""vq_nearest at VAR's tokenizer shape and LlamaGen's, and VAR's multi-scale quantizer functions. Baseline: the
torch backend, VAR's own loop (addmm + argmin, area / bicubic interpolation, the Phi convs); peers for the search:
faiss IndexFlatL2 and cdist + argmin. At LlamaGen's D = 8 the CPU kernel searches through its k-d tree (the
leaves whose bounding box can hold a nearer code); the extra column "fastar, full sweep" forces the sweep of every
code (FASTAR_VQ_NEAREST_CPU_TREE=0), the same answers bit for bit."""
import os

import pytest
import torch

import fastar
from benchmarks.harness import compare
from fastar import torch as torch_impl
from fastar.reference import quantize as ref

try:
    import faiss
except ImportError:  # optional benchmark dependency
    faiss = None

BASELINE = "VAR's loop (torch backend)"
SHAPES = {"VAR N=65536 K=4096 D=32": (65536, 4096, 32), "LlamaGen N=16384 K=16384 D=8": (16384, 16384, 8)}


SWEEP = "fastar, full sweep (no k-d tree)"


def full_sweep(x, codebook, env="FASTAR_VQ_NEAREST_CPU_TREE"):
    before = os.environ.get(env)
    os.environ[env] = "0"
    try:
        return fastar.ops.vq_nearest(x, codebook)
    finally:
        os.environ.pop(env) if before is None else os.environ.__setitem__(env, before)


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_vq_nearest(benchmark, shape, peak_gflops):
    N, K, D = SHAPES[shape]
    benchmark.group = f"vq_nearest {shape}"
    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    x_np, codebook_np = x.numpy(), codebook.numpy()

    def run_faiss():
        index = faiss.IndexFlatL2(D)
        index.add(codebook_np)
        return torch.from_numpy(index.search(x_np, 1)[1][:, 0])

    contenders = {
        BASELINE: lambda: torch_impl.quantize.vq_nearest(x, codebook),
        "cdist+argmin": lambda: torch.cdist(x, codebook).argmin(1),
    }
    if faiss is not None:
        contenders["faiss IndexFlatL2"] = run_faiss
    if D <= 8:
        contenders[SWEEP] = lambda: full_sweep(x, codebook)

    ours = fastar.ops.vq_nearest(x, codebook)
    agree = {name: (fn() == ours).float().mean().item() for name, fn in contenders.items()}
    flops = 2 * N * K * D  # every code scored for every row: the sweep's work
    tree = {"share_of": SWEEP, "share_note": "fastar's k-d tree scores only the codes that could be nearest, fewer "
            "than this count"} if SWEEP in contenders else {}
    compare(benchmark, lambda: fastar.ops.vq_nearest(x, codebook), contenders, baseline=BASELINE, op="vq_nearest",
            shape=shape, agreement=agree, gflop=flops / 1e9, fma_floor_ms=flops / peak_gflops / 1e6, **tree)


# ---- VAR's multi-scale residual quantization at VAR-d16's shapes (issue 4), and the 512 px schedule ----

SCHEDULES = {  # name -> (patch_nums, B); C = 32, V = 4096 as the released VQVAE
    "256px B=32": ((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 32),
    "512px B=8": ((1, 2, 3, 4, 6, 9, 13, 18, 24, 32), 8),
}
MSQ_STEPS = {"encode": "f_to_idxBl_or_fhat", "decode": "idxBl_to_fhat", "decode (last f_hat)": "idxBl_to_fhat",
             "teacher-forcing input": "idxBl_to_var_input",
             "10 inference steps": "get_next_autoregressive_input"}  # step -> the op it times


def _quantizer(patch_nums, B, C=32, V=4096):
    g = torch.Generator().manual_seed(0)
    H = patch_nums[-1]
    f = torch.randn(B, C, H, H, generator=g)
    codebook = torch.randn(V, C, generator=g)
    phi_weight = torch.randn(4, C, C, 3, 3, generator=g) / (3 * C**0.5)
    phi_bias = torch.randn(4, C, generator=g) * 0.1
    return f, codebook, phi_weight, phi_bias


def _steps(impl, f, codebook, w, b, patch_nums, ms_idx_Bl):
    """The timed functions of one implementation (fastar.ops or fastar.torch.quantize). The inference steps update
    the f_hat each sampler allocates: fastar's VAR a channels_last one (the layout its ops update in place), the
    official autoregressive_infer_cfg an NCHW one (sos.new_zeros)."""
    SN = len(patch_nums)
    ms_h_BChw = [ref.embed(i, codebook, pn) for i, pn in zip(ms_idx_Bl, patch_nums)]
    zeros = torch.zeros_like(f, memory_format=torch.channels_last if impl is fastar.ops else torch.contiguous_format)

    def infer():
        f_hat = zeros.clone()
        for si in range(SN):
            f_hat, _ = impl.get_next_autoregressive_input(si, SN, f_hat, ms_h_BChw[si], w, b, patch_nums)
        return f_hat

    return {
        "encode": lambda: impl.f_to_idxBl_or_fhat(f, codebook, w, b, patch_nums),
        "decode": lambda: impl.idxBl_to_fhat(ms_idx_Bl, codebook, w, b, patch_nums),
        "decode (last f_hat)": lambda: impl.idxBl_to_fhat(ms_idx_Bl, codebook, w, b, patch_nums, last_one=True),
        "teacher-forcing input": lambda: impl.idxBl_to_var_input(ms_idx_Bl, codebook, w, b, patch_nums),
        "10 inference steps": infer,
    }


def _phi_convs(step, f, w, b, patch_nums):
    """The Phi convolutions a step runs, as fastar runs them (channels_last, runs of scales sharing a Phi batched,
    or summed first when only the last f_hat is wanted)."""
    SN, B = len(patch_nums), f.shape[0]
    up = f.contiguous(memory_format=torch.channels_last)
    if step == "decode (last f_hat)":
        return lambda: [torch.nn.functional.conv2d(up, w[k], b[k], padding=1) for k in set(ref.phi_index(SN, 4))]
    if step in ("decode", "teacher-forcing input"):
        n = SN if step == "decode" else SN - 1
        ks = ref.phi_index(SN, 4)[:n]
        runs = [(k, ks.index(k), ks.count(k)) for k in dict.fromkeys(ks)]  # (Phi, first scale, scales)
        ups = up.repeat(n, 1, 1, 1)
        return lambda: [torch.nn.functional.conv2d(ups[i * B:(i + m) * B], w[k], b[k], padding=1) for k, i, m in runs]
    return lambda: [torch.nn.functional.conv2d(up, w[0], b[0], padding=1) for _ in range(SN)]


@pytest.mark.parametrize("step", MSQ_STEPS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_msq(benchmark, schedule, step):
    patch_nums, B = SCHEDULES[schedule]
    benchmark.group = f"VAR multi-scale quantizer {schedule}: {step}"
    f, codebook, w, b = _quantizer(patch_nums, B)
    ms_idx_Bl = fastar.ops.f_to_idxBl_or_fhat(f, codebook, w, b, patch_nums)
    ours = _steps(fastar.ops, f, codebook, w, b, patch_nums, ms_idx_Bl)[step]
    theirs = _steps(torch_impl.quantize, f, codebook, w, b, patch_nums, ms_idx_Bl)[step]
    agreement, diffs = {}, {}
    if step == "encode":  # identical indices: the fraction of equal ones
        same = sum(int((x == y).sum()) for x, y in zip(ours(), theirs()))
        agreement[BASELINE] = same / sum(i.numel() for i in ms_idx_Bl)
    else:  # maps: the largest difference over every one returned
        maps = zip(*(r if isinstance(r, list) else [r] for r in (ours(), theirs())))
        diffs[BASELINE] = max((x - y).abs().max().item() for x, y in maps)
    extra = compare(benchmark, ours, {BASELINE: theirs}, baseline=BASELINE,
                    parts={"Phi convs (torch's, not fused by design)": _phi_convs(step, f, w, b, patch_nums)},
                    op=MSQ_STEPS[step], shape=schedule, agreement=agreement, max_abs_diff=diffs)
    extra["phi_conv_share"] = extra["Phi convs (torch's, not fused by design)"]["ratio"]
