"""diffusion_sample (MAR's diffusion-head p_sample_loop) on every backend against the float64 reference."""
import os
import warnings

import pytest
import torch

import fastar
from fastar.reference import diffusion as ref
from tests.conftest import backend_device, sanitized
from tests.tolerance import assert_close

# (N, cfg): one row, two, odd, empty without guidance; [cond ; uncond] pairs with it.
ROWS_CFG = [(1, 1.0), (2, 1.0), (7, 1.0), (0, 1.0), (2, 3.0), (10, 2.9), (0, 4.0)]
DEPTH, WIDTH, C, Z = 2, 48, 16, 24  # a small head: the loop's logic, not its size, is under test


@pytest.fixture
def diffusion_backend(backend):
    # fastar_simt (and cuda) define the schema before a kernel exists: skip only while none is registered.
    ns = "fastar_simt" if backend == "simt" else "fastar"
    key = "CUDA" if backend == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::diffusion_sample", key):
        pytest.skip(f"no {backend} diffusion_sample kernel yet")
    return backend


def make_head(depth=DEPTH, width=WIDTH, seed=0):
    """Random float64 head weights scaled so that eps ~ 1 and v in about [-1, 1]: a chain that moves."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for k, shape in ref.head_shapes(depth, width, C, Z).items():
        fan_in = shape[1] if len(shape) == 2 else 1
        t = torch.randn(shape, generator=g, dtype=torch.float64) / fan_in ** 0.5
        if k.endswith("in_ln.weight"):
            t = 1 + 0.1 * t
        elif k.endswith("bias"):
            t = 0.1 * t
        elif "adaLN" in k:
            t = 0.3 * t
        weights[k] = t
    return weights


def sample_all(z, weights, seed, device="cpu", **kw):
    """(fastar on the active backend, reference float64, reference float32) on the CPU, all run on `device` with a
    generator of that device and the same seed (the references draw the kernel's noise there)."""
    def gen():
        return torch.Generator(device).manual_seed(seed)
    z, weights = z.to(device), {k: v.to(device) for k, v in weights.items()}
    w32 = {k: v.float() for k, v in weights.items()}
    out = fastar.ops.diffusion_sample(z.float(), w32, generator=gen(), **kw)
    return tuple(t.cpu() for t in (out, ref.diffusion_sample(z.double(), weights, generator=gen(), **kw),
                                   ref.diffusion_sample(z.float(), w32, generator=gen(), **kw)))


@pytest.mark.parametrize("N,cfg", sanitized(ROWS_CFG, {(7, 1.0), (10, 2.9)}, unpack=True))
def test_diffusion_sample(diffusion_backend, N, cfg):
    z = torch.randn(N, Z, generator=torch.Generator().manual_seed(N))
    out, ref64, ref32 = sample_all(z, make_head(), seed=7, device=backend_device(diffusion_backend), num_steps=20,
                                   cfg=cfg)
    assert out.shape == (N // 2 if cfg != 1.0 else N, C)
    assert fastar.last_backend("diffusion_sample") == diffusion_backend
    if N:
        assert_close("diffusion_sample", out, ref64, ref32)


@pytest.mark.parametrize("backend", ["cuda"], indirect=True)
def test_diffusion_sample_cuda_graph(backend):
    """cuda_graph=True: the first call captures, the next ones replay; every call equals the eager one from the same
    generator state bit for bit (the graph's draws are the eager call's), leaves the generator where the eager call
    does, and a new cfg (baked into the kernels) captures another graph."""
    from fastar.ops import _cuda_graph
    _cuda_graph.clear()
    w = {k: v.float().cuda() for k, v in make_head().items()}
    for generator in (torch.Generator("cuda"), None):
        for i, cfg in enumerate((2.9, 2.9, 2.9, 1.5)):
            z = torch.randn(10, Z, generator=torch.Generator().manual_seed(i)).cuda()
            outs, after = [], []
            for graph in (False, True):
                (generator.manual_seed(5) if generator is not None else torch.cuda.manual_seed(5))
                outs.append(fastar.ops.diffusion_sample(z, w, num_steps=20, cfg=cfg, generator=generator,
                                                        cuda_graph=graph))
                after.append(torch.randn(4, device="cuda", generator=generator))
            assert torch.equal(outs[0], outs[1]) and torch.equal(after[0], after[1]), (cfg, i)
    assert len(_cuda_graph._GRAPHS) == 4  # (2.9, 1.5) x (generator, default), one each
    _cuda_graph.clear()


def onednn_takes_f32_matmul():
    """Whether torch's oneDNN matmul runs float32 products on this CPU: only where oneDNN has bf16 support (AVX-512
    BW/VL/DQ or AVX-NE-CONVERT, /proc/cpuinfo) within the ONEDNN_MAX_CPU_ISA cap; AVX2-only CPUs get MKL."""
    flags = set(next((ln.split(":")[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), []))
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    capped = cap in ("SSE41", "AVX", "AVX2", "AVX2_VNNI")
    return (torch.backends.mkldnn.is_available() and not capped
            and ({"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags))


@pytest.mark.parametrize("library", ["mkl", "onednn"])
def test_diffusion_sample_rows_over_threads(monkeypatch, capfd, library):
    """Enough rows (N W^2 >= 2^22 multiply-adds per GEMM) for the CPU loop to split its row passes over the threads
    and let the GEMMs thread (smaller heads run on the calling thread, on MKL): same result as the reference, on both
    float32 GEMM libraries whatever this CPU's default (FASTAR_FP32_GEMM; oneDNN's log shows which one ran: its
    inner product on weights reordered once a call). The profiler sees the loop's 3 D + 2 GEMMs a step as
    fastar::blas::mm_f32 (benchmarks/bench_mar.py's head split)."""
    N, threads = 2 * 2000, torch.get_num_threads()
    z = torch.randn(N, Z, generator=torch.Generator().manual_seed(3))
    monkeypatch.setenv("FASTAR_FP32_GEMM", library)
    ran = library if onednn_takes_f32_matmul() else "mkl"  # AVX2-only CPUs: MKL either way
    assert fastar.build_info()["cpu_fp32_gemm"] == ran
    torch.set_num_threads(2)
    capfd.readouterr()
    try:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.profiler.profile() as prof:
            out, ref64, ref32 = sample_all(z, make_head(), seed=7, num_steps=3, cfg=2.0)
    finally:
        torch.set_num_threads(threads)
    assert fastar.last_backend("diffusion_sample") == "cpu"
    assert ("exec,cpu,inner_product" in capfd.readouterr().out) == (ran == "onednn")  # blas::PackedWeight
    assert_close("diffusion_sample", out, ref64, ref32)
    events = {e.key: e.count for e in prof.key_averages()}
    assert events["fastar::blas::mm_f32"] == 3 * (3 * DEPTH + 2)
    assert events.get("mkldnn::_reorder_linear_weight", 0) == (3 * DEPTH + 2 if ran == "onednn" else 0)  # once a call


# one_schedule: the kernel takes the temperature as a per-step noise scale, 0 on every call's last step, with no branch
# on it; test_diffusion_sample runs the same kernels under every thread order, here it is the 100 steps' accuracy.
@pytest.mark.one_schedule
@pytest.mark.parametrize("temperature", [0.0, 0.95, 1.2])
def test_diffusion_sample_temperature(diffusion_backend, temperature):
    z = torch.randn(6, Z, generator=torch.Generator().manual_seed(1))
    out, ref64, ref32 = sample_all(z, make_head(depth=1), seed=3, device=backend_device(diffusion_backend),
                                   num_steps=100, temperature=temperature, cfg=1.5)
    assert_close("diffusion_sample", out, ref64, ref32)


def test_diffusion_sample_depth_zero(diffusion_backend):
    z = torch.randn(3, Z, generator=torch.Generator().manual_seed(2))
    out, ref64, ref32 = sample_all(z, make_head(depth=0), seed=5, device=backend_device(diffusion_backend),
                                   num_steps=10)
    assert_close("diffusion_sample", out, ref64, ref32)


def test_noise_order_is_the_official_one():
    """x_T from N/2 rows under cfg, then (N, C) every step: a different order gives different tokens."""
    z = torch.randn(4, Z, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = make_head()
    seeded = ref.diffusion_sample(z, w, num_steps=5, cfg=2.0, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, C, generator=g, dtype=torch.float32)
    assert not torch.equal(x_T, torch.zeros_like(x_T))
    # The conditional half's chain with its noise taken explicitly, one head call per step.
    schedule = ref.spaced_schedule(5)
    x = torch.cat([x_T, x_T]).double()
    for i in reversed(range(5)):
        out = ref.head_forward_with_cfg(w, x, schedule[i, 0].long().expand(4), z, 2.0)
        _, sqrt_recip, sqrt_recipm1, coef1, coef2, min_log, max_log = schedule[i]
        frac = (out[:, C:] + 1) / 2
        mean = coef1 * (sqrt_recip * x - sqrt_recipm1 * out[:, :C]) + coef2 * x
        noise = torch.randn(4, C, generator=g, dtype=torch.float32).double()
        x = mean + (i != 0) * torch.exp(0.5 * (frac * max_log + (1 - frac) * min_log)) * noise
    torch.testing.assert_close(seeded, x[:2], rtol=1e-12, atol=1e-12)


def test_spaced_schedule():
    s = ref.spaced_schedule(100)
    t = s[:, 0].long().tolist()
    assert len(set(t)) == 100 and t[0] == 0 and t[-1] == 999 and t == sorted(t)
    assert t[:4] == [0, 10, 20, 30]
    assert (s[:, 5] <= s[:, 6] + 1e-12).all()  # the learned range: posterior log-variance <= log beta
    with pytest.raises(ValueError, match="num_steps"):
        ref.spaced_schedule(1)


@pytest.mark.parametrize("case,match", [
    ("z_width", "z has width"), ("odd_cfg", "even count"), ("weight_shape", r"weights\['res_blocks.1.mlp.0.weight'\]"),
    ("missing", r"lack 'final_layer.linear.bias'"), ("z_dtype", "z must be"), ("num_steps", "num_steps"),
    ("weights_type", "weights must be"), ("cuda_graph", "cuda_graph=True captures the CUDA kernels")])
def test_bad_inputs(case, match):
    w = {k: v.float() for k, v in make_head().items()}
    z = torch.randn(3, Z)
    kw = {}
    if case == "z_width":
        z = torch.randn(3, Z + 1)
    elif case == "odd_cfg":
        kw["cfg"] = 2.0
    elif case == "weight_shape":
        w["res_blocks.1.mlp.0.weight"] = torch.zeros(WIDTH, WIDTH + 1)
    elif case == "missing":
        del w["final_layer.linear.bias"]
    elif case == "z_dtype":
        z = z.double()
    elif case == "num_steps":
        kw["num_steps"] = 1
    elif case == "weights_type":
        w = list(w.values())
    elif case == "cuda_graph":  # on CPU tensors (cpu and simt backends)
        kw["cuda_graph"] = True
    with pytest.raises((ValueError, TypeError), match=match):
        fastar.ops.diffusion_sample(z, w, **kw)


def test_module_weights(diffusion_backend):
    """A module with SimpleMLPAdaLN's attribute names is taken as is (its state dict)."""
    device = backend_device(diffusion_backend)
    w = {k: v.float().to(device) for k, v in make_head(depth=1).items()}
    module = torch.nn.Module()
    for k, v in w.items():
        *path, name = k.split(".")
        owner = module
        for p in path:
            if not hasattr(owner, p):
                owner.add_module(p, torch.nn.Module())
            owner = getattr(owner, p)
        owner.register_parameter(name, torch.nn.Parameter(v))
    z = torch.randn(2, Z, device=device)
    a = fastar.ops.diffusion_sample(z, module, num_steps=4, generator=torch.Generator(device).manual_seed(0))
    b = fastar.ops.diffusion_sample(z, w, num_steps=4, generator=torch.Generator(device).manual_seed(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("library", ["mkl", "onednn"])
@pytest.mark.parametrize("N,cfg", [(7, 1.0), (10, 2.9), (0, 1.0)])
def test_diffusion_sample_bf16(monkeypatch, N, cfg, library):
    """precision="bf16" (GEMM operands in bfloat16, float32 accumulation) against the float64 oracle, by the
    tolerance rule: its error at most K times that of the same math in low precision (the reference with its
    GEMM operands and results rounded to bfloat16, in float32), on both GEMM libraries whatever this CPU's default.
    FASTAR_EMULATED_BF16 runs the path on CPUs without bf16 GEMMs."""
    monkeypatch.setenv("FASTAR_EMULATED_BF16", "1")
    monkeypatch.setenv("FASTAR_BF16_GEMM", library)
    assert fastar.build_info()["cpu_bf16_gemm"] == library
    z = torch.randn(N, Z, generator=torch.Generator().manual_seed(N))
    w = make_head()
    kw = dict(num_steps=100, cfg=cfg)
    out = fastar.ops.diffusion_sample(z, {k: v.float() for k, v in w.items()}, precision="bf16",
                                      generator=torch.Generator().manual_seed(7), **kw)
    ref64 = ref.diffusion_sample(z.double(), w, generator=torch.Generator().manual_seed(7), **kw)
    ref_bf16 = ref.diffusion_sample(z, w, precision="bf16", generator=torch.Generator().manual_seed(7), **kw)
    assert out.shape == ref64.shape
    if N:
        err, _ = assert_close("diffusion_sample_bf16", out, ref64, ref_bf16)
        fp32 = fastar.ops.diffusion_sample(z, {k: v.float() for k, v in w.items()},
                                           generator=torch.Generator().manual_seed(7), **kw)
        assert err > (fp32 - ref64).abs().max()  # the bf16 GEMMs did run


def test_gemm_library_choice(monkeypatch):
    """bf16 and float32 GEMMs on MKL on Intel CPUs, on oneDNN on the others (float32: where oneDNN's matmul takes
    it, AVX-512; the models' Linear layers too); FASTAR_BF16_GEMM / FASTAR_FP32_GEMM pick one, and a wrong name is
    an error."""
    monkeypatch.delenv("FASTAR_BF16_GEMM", raising=False)
    monkeypatch.delenv("FASTAR_FP32_GEMM", raising=False)
    vendor = next((ln.split(":")[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("vendor_id")), "")
    info = fastar.build_info()
    assert info["cpu_bf16_gemm"] == ("mkl" if vendor == "GenuineIntel" else "onednn")
    fp32 = "onednn" if vendor != "GenuineIntel" and onednn_takes_f32_matmul() else "mkl"
    assert info["cpu_fp32_gemm"] == fp32  # mm_f32 (oneDNN's matmul)
    assert fastar._backend.fp32_linear_library() == fp32  # the models' Linear layers (oneDNN's inner product)
    for var in ("FASTAR_BF16_GEMM", "FASTAR_FP32_GEMM"):
        monkeypatch.setenv(var, "openblas")
        with pytest.raises(RuntimeError, match=f"{var} must be mkl or onednn, got openblas"):
            fastar.build_info()
        monkeypatch.delenv(var)


def test_diffusion_sample_bf16_warns_without_bf16_instructions(monkeypatch):
    """On any CPU: the GEMM libraries capped at AVX2 (as on an AVX2-only CPU) leave no bf16 instructions, and the
    mode runs (its GEMMs emulated: the same draws as with the warning silenced) and warns, naming them."""
    z, head = torch.randn(2, Z), {k: v.float() for k, v in make_head().items()}
    def sample():
        return fastar.ops.diffusion_sample(z, head, generator=torch.Generator().manual_seed(3), precision="bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert fastar.build_info()["cpu_bf16"] == ""
    monkeypatch.setenv("FASTAR_EMULATED_BF16", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silenced = sample()
    monkeypatch.delenv("FASTAR_EMULATED_BF16")
    with pytest.warns(UserWarning, match="diffusion_sample: precision='bf16' runs with emulated bf16 GEMMs here, slower "
                      "than precision='fp32' .*AMX-BF16 or AVX512-BF16 instructions, which .* may not use under "
                      "(ONEDNN_MAX_CPU_ISA=avx2|MKL_ENABLE_INSTRUCTIONS=AVX2)"):
        assert torch.equal(sample(), silenced)
    with pytest.raises(ValueError, match="precision must be"):
        fastar.ops.diffusion_sample(torch.randn(2, Z), {k: v.float() for k, v in make_head().items()},
                                    precision="fp16")


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_opcheck(diffusion_backend, cfg):
    w = [v.float() for v in make_head(depth=1).values()]
    z = torch.randn(4, Z)
    # generator None: opcheck reseeds the default generator before each run it compares; an explicit one advances.
    args = (z, w, ref.spaced_schedule(3), 1.0, cfg, None)
    ns = torch.ops.fastar_simt if diffusion_backend == "simt" else torch.ops.fastar
    torch.library.opcheck(ns.diffusion_sample.default, args)


def loss_inputs(seed=0, N=6):
    g = torch.Generator().manual_seed(seed)
    x_start, noise = torch.randn(N, C, generator=g, dtype=torch.float64) * 0.5, torch.randn(N, C, generator=g,
                                                                                              dtype=torch.float64)
    z = torch.randn(N, Z, generator=g, dtype=torch.float64)
    return x_start, z, torch.tensor([0, 1, 7, 500, 998, 999])[:N], noise


def test_training_loss_stop_gradient():
    """The VB term trains the variance channels only: changing them leaves the eps rows' gradient unchanged."""
    x_start, z, t, noise = loss_inputs()

    def grads(weights):
        w = {k: v.clone().requires_grad_() for k, v in weights.items()}
        ref.training_loss(w, x_start, z, t, noise).sum().backward()
        return w["final_layer.linear.weight"].grad

    w = make_head(depth=1)
    w2 = dict(w, **{"final_layer.linear.weight": torch.cat([w["final_layer.linear.weight"][:C],
                                                              2 * w["final_layer.linear.weight"][C:]])})
    g1, g2 = grads(w), grads(w2)
    torch.testing.assert_close(g1[:C], g2[:C], rtol=0, atol=0)
    assert g1[C:].abs().max() > 0 and not torch.allclose(g1[C:], g2[C:])



def head_module(dtype):
    """A SimpleMLPAdaLN holding make_head's weights (depth 1), in dtype."""
    from fastar.models.mar import SimpleMLPAdaLN
    head = SimpleMLPAdaLN(C, WIDTH, Z, 1)
    head.load_state_dict(make_head(depth=1))
    return head.to(dtype)


def loss_ops(backend):
    """The compiled diffusion_loss of backend (simt: fastar_simt, under the conftest's schedule check)."""
    return (torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar).diffusion_loss


def loss_and_grads(dtype, backend, N, device="cpu"):
    """The summed loss and its gradients (head parameters, z) on backend, inputs from loss_inputs in dtype."""
    x_start, z, t, noise = (v.to(device, dtype) if v.is_floating_point() else v.to(device) for v in loss_inputs(N=N))
    head, z = head_module(dtype).to(device), z.requires_grad_()
    with fastar.use_backend(backend):
        loss = fastar.ops.diffusion_loss(x_start, z, head, t=t, noise=noise)
        assert fastar.last_backend("diffusion_loss") == backend
    loss.sum().backward()
    return [loss, z.grad] + [p.grad for p in head.parameters()]


@pytest.mark.parametrize("N", [6, 1, 0])
def test_diffusion_loss(backend, N):
    """Loss and gradients of the op (module forward + fused loss pass, autograd through it) against the float64
    reference."""
    out = loss_and_grads(torch.float32, backend, N, backend_device(backend))
    ref64, ref32 = loss_and_grads(torch.float64, "reference", N), loss_and_grads(torch.float32, "reference", N)
    assert out[0].shape == (N,)
    if N:
        for o, r64, r32 in zip(out, ref64, ref32):
            assert_close("diffusion_loss", o, r64, r32)


LOSS_T = (0, 999, 1, 7, 500, 998)  # both ends of the chain: the discretized NLL at 0, the KL elsewhere


def loss_pass_inputs(N, channels, seed=0):
    """float64 (model_output, x_start, noise, t) for the fused pass: eps ~ 1, v a little past the learned range,
    x_start also beyond +-0.999 (the NLL's edge bins)."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(N, channels, generator=g, dtype=torch.float64)
    v = torch.rand(N, channels, generator=g, dtype=torch.float64) * 2.4 - 1.2
    x_start = torch.rand(N, channels, generator=g, dtype=torch.float64) * 2.6 - 1.3
    noise = torch.randn(N, channels, generator=g, dtype=torch.float64)
    return torch.cat([eps, v], 1), x_start, noise, torch.tensor(LOSS_T)[torch.arange(N) % len(LOSS_T)]


def loss_pass_reference(model_output, x_start, noise, t, dtype):
    """(loss, d loss.sum() / d model_output) of fastar/reference's loss_terms in dtype."""
    out = model_output.to(dtype).requires_grad_()
    loss = ref.loss_terms(out, x_start.to(dtype), noise.to(dtype), t, ref.loss_table())
    return loss.detach(), torch.autograd.grad(loss.sum(), out)[0]


# channels: one lane per row, odd, a half-warp group, past a warp (lanes take two channels), odd past a warp
@pytest.mark.parametrize("channels", sanitized([1, 5, 16, 32, 33, 70], {5, 33}))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_diffusion_loss_pass(backend, dtype, channels):
    """The compiled pass's loss and gradient w.r.t. model_output against the reference's loss_terms and autograd:
    float32 by the tolerance rule; float64 within the floor of a few float32 ulps (gradcheck tests it further)."""
    N = 13  # not a multiple of the rows per block
    inputs = loss_pass_inputs(N, channels)
    dev = backend_device(backend)
    model_output, x_start, noise, t = (v.to(dev, dtype) if v.is_floating_point() else v.to(dev) for v in inputs)
    loss, grad = loss_ops(backend)(model_output, x_start, noise, t, ref.loss_table().to(dev))
    assert loss.dtype == grad.dtype == dtype and grad.shape == (N, 2 * channels)
    ref64 = loss_pass_reference(*inputs, torch.float64)
    lowp = loss_pass_reference(*inputs, dtype)
    for o, r64, r in zip((loss, grad), ref64, lowp):
        assert_close("diffusion_loss", o, r64, r)


@pytest.mark.parametrize("N", [0, 1])
def test_diffusion_loss_pass_few_rows(backend, N):
    inputs = loss_pass_inputs(N, C)
    dev = backend_device(backend)
    loss, grad = loss_ops(backend)(*(v.to(dev) for v in inputs), ref.loss_table().to(dev))
    assert loss.shape == (N,) and grad.shape == (N, 2 * C)
    if N:
        ref64 = loss_pass_reference(*inputs, torch.float64)
        assert_close("diffusion_loss", loss, ref64[0], ref64[0])
        assert_close("diffusion_loss", grad, ref64[1], ref64[1])


def test_diffusion_loss_gradcheck(backend):
    """The fused pass's gradient of the variance channels (float64) vs finite differences, through the KL
    (t > 0) and the discretized-NLL branches (t = 0, x_start inside and beyond +-0.999)."""
    dev = backend_device(backend)
    x_start, _, t, noise = (v.to(dev) for v in loss_inputs())
    x_start[0, :3] = torch.tensor([-1.2, 0.3, 1.5], dtype=torch.float64)  # t = 0 row: the three NLL cases
    # Seeded: at ~1.5% of draws a variance channel of the t = 0 row puts its bin's probability at the reference's
    # clamp, where finite differences of step 1e-6 read 0 while the kernel matches the reference's autograd.
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(6, C, dtype=torch.float64, generator=g).to(dev)
    v = (torch.rand(6, C, dtype=torch.float64, generator=g) * 2 - 1).to(dev).requires_grad_()
    table, op = ref.loss_table().to(dev), loss_ops(backend)
    torch.autograd.gradcheck(lambda v: op(torch.cat([eps, v], 1), x_start, noise, t, table)[0], (v,))
    # eps: the MSE's gradient only (the VB term sees eps through a stop-gradient)
    out = torch.cat([eps, v.detach()], 1).requires_grad_()
    op(out, x_start, noise, t, table)[0].sum().backward()
    torch.testing.assert_close(out.grad[:, :C], 2 * (eps - noise) / C)


def test_diffusion_loss_opcheck(backend):
    dev = backend_device(backend)
    x_start, _, t, noise = (v.to(dev, torch.float32) if v.is_floating_point() else v.to(dev) for v in loss_inputs())
    args = (torch.randn(6, 2 * C, requires_grad=True, device=dev), x_start, noise, t, ref.loss_table().to(dev))
    torch.library.opcheck(loss_ops(backend).default, args)


@pytest.mark.parametrize("change,match", [
    (dict(z=torch.randn(6, Z + 1)), "head takes"), (dict(t=torch.tensor([0, 1, 2, 3, 4, 1000])), "t must be"),
    (dict(noise=torch.randn(6, C + 1)), "noise must be"), (dict(head={}), "head must be a SimpleMLPAdaLN"),
    (dict(x_start=torch.randn(6, C, dtype=torch.float16)), "x_start")])
def test_diffusion_loss_bad_inputs(change, match):
    x_start, z, t, noise = (v.float() if v.is_floating_point() else v for v in loss_inputs())
    kw = {**dict(x_start=x_start, z=z, head=head_module(torch.float32), t=t, noise=noise), **change}
    with pytest.raises((ValueError, TypeError), match=match):
        fastar.ops.diffusion_loss(kw["x_start"], kw["z"], kw["head"], t=kw["t"], noise=kw["noise"])


@pytest.mark.parametrize("arg,value,match", [
    ("model_output", lambda a: a[:, 1:], r"model_output must have shape \[6, 32\]"),
    ("x_start", lambda a: a.half(), "x_start must be float32 or float64"),
    ("noise", lambda a: a.double(), "noise must have x_start's dtype"),
    ("t", lambda a: a.int(), r"t must be \(6,\) int64"),
    ("t", lambda a: a.clone().fill_(1000), r"t must be in \[0, 1000\)"),
    ("t", lambda a: a.clone().fill_(-1), r"t must be in \[0, 1000\)"),
    ("table", lambda a: a[:, :7], r"table must be \(T, 8\)"),
    ("table", lambda a: a.float(), r"table must be \(T, 8\) contiguous float64"),
    ("table", lambda a: a.t().contiguous().t(), r"table must be \(T, 8\) contiguous float64")])
def test_diffusion_loss_pass_bad_inputs(backend, arg, value, match):
    """The compiled op's own checks (shared by the cpu and device kernels) name the argument: a bad one never
    reaches a kernel, which would index the table with t unchecked."""
    dev = backend_device(backend)
    model_output, x_start, noise, t = (v.to(dev, torch.float32) if v.is_floating_point() else v.to(dev)
                                       for v in loss_pass_inputs(6, C))
    args = dict(model_output=model_output, x_start=x_start, noise=noise, t=t, table=ref.loss_table().to(dev))
    args[arg] = value(args[arg])
    with pytest.raises(RuntimeError, match=match):
        loss_ops(backend)(*args.values())


def test_diffusion_loss_pass_wrong_device():
    """A tensor on another device than the kernels' is named."""
    if not torch.cuda.is_available() or not fastar.backends()["cuda"]:
        pytest.skip("no GPU on this machine or no cuda backend")
    model_output, x_start, noise, t = (v.float() if v.is_floating_point() else v for v in loss_pass_inputs(6, C))
    table = ref.loss_table()
    with pytest.raises(RuntimeError, match="table is on cpu, expected cuda"):
        torch.ops.fastar.diffusion_loss(model_output.cuda(), x_start.cuda(), noise.cuda(), t.cuda(), table)
    # one CUDA tensor sends the call to the cuda kernel, whose checks name the first CPU one
    with pytest.raises(RuntimeError, match="model_output is on cpu, expected cuda"):
        torch.ops.fastar.diffusion_loss(model_output, x_start, noise.cuda(), t, table)
