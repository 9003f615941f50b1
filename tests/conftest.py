"""The one parametrize grid of fastar's tests: backend x dtype x shape (habit 9).

Backends: cpu, simt (the CUDA kernels under the CPU emulator) and cuda. cuda is skipped only without a GPU;
simt is skipped when fastar._simt is not built, unless FASTAR_REQUIRE_SIMT=1 (CI), where that is a failure.
"""
import os
import subprocess
import sys
import warnings

import pytest
import torch


def _load_sanitized_simt():
    """tools/simt_sanitized_tests.sh: fastar._simt is the ASan + UBSan build at $FASTAR_SANITIZED_SIMT, loaded under
    that name before fastar imports the regular one (this process was started with the ASan runtime preloaded;
    pytest-xdist workers then drop LD_PRELOAD, so the tools the tests run do not get it)."""
    path = os.environ.get("FASTAR_SANITIZED_SIMT")
    if not path:
        return None
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.pop("LD_PRELOAD", None)
    import importlib.util
    spec = importlib.util.spec_from_file_location("fastar._simt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["fastar._simt"] = module
    return module


_SANITIZED_SIMT = _load_sanitized_simt()
import fastar  # noqa: E402  (after the sanitized module, when there is one)

assert _SANITIZED_SIMT is None or fastar._backend._simt is _SANITIZED_SIMT, "fastar loaded another _simt"

# float32 on CUDA means float32 here: cuDNN's convolutions default to TF32 (10-bit mantissa; the quantizer's and the
# decoders' convolutions) and the tolerance rule's float32 reference has no such rounding.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

BACKENDS = ("cpu", "simt", "cuda")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def pytest_configure(config):
    """An op that runs its torch formulation instead of the kernel a test meant (a decline: under autograd, another
    dtype, a wide head) warns "fastar.ops.<op>: ..."; here that warning is an error unless the test expects it
    (pytest.warns) or says so (a filterwarnings mark), so that no test checks the torch formulation unawares (one
    did: a decode after its inputs were made to require grad)."""
    config.addinivalue_line("filterwarnings", "error:fastar.ops:UserWarning")


def backend_device(backend):
    return "cuda" if backend == "cuda" else "cpu"


@pytest.fixture(params=BACKENDS)
def backend(request):
    name = request.param
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine")
    if not fastar.backends()[name]:
        if name == "simt" and os.environ.get("FASTAR_REQUIRE_SIMT") == "1":
            pytest.fail("FASTAR_REQUIRE_SIMT=1 but fastar._simt is not built (build with FASTAR_SIMT=1)")
        pytest.skip(f"the {name} backend is not built")
    with fastar.use_backend(name):
        yield name


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param


# Outputs (positions in an op's result) that the kernels add up with fp32 atomics across blocks: their last bits follow
# the order blocks run in, on a GPU too (the cuda glue alerts torch.use_deterministic_algorithms). ScheduleCheck
# compares them within ATOMIC_ULPS units in the last place of their dtype at the tensor's largest magnitude.
ATOMIC_OUTPUTS = {
    "attention_bwd": (0,),             # dq
    "multi_axis_attention_bwd": (0,),  # dq
}
ATOMIC_ULPS = 8


class ScheduleCheck:
    """An op of torch.ops.fastar_simt that runs under forward, reversed and shuffled block and thread order and
    requires bit-identical outputs: a result that depends on the order of blocks or CUDA threads is a race. The
    atomic-accumulated outputs of ATOMIC_OUTPUTS compare within ATOMIC_ULPS instead."""

    SCHEDULES = (("rev", 0), ("shuffle", 1), ("shuffle", 2))

    def __init__(self, op, atomic=()):
        self.op = op
        self.atomic = atomic  # positions in the op's result of its atomic-accumulated outputs

    def __getattr__(self, name):  # .default and the other overloads stay the plain op (opcheck uses them)
        return getattr(self.op, name)

    def __call__(self, *args):
        simt = fastar._backend._simt
        # Ops that update tensor arguments in place run each time from the same inputs, and their updates compare too.
        inputs = [a.detach().clone() if isinstance(a, torch.Tensor) else None for a in args]
        # Seeded ops (diffusion_sample) redraw the same noise each time: their generator restarts from one state.
        gens = [(g, g.get_state()) for g in [a for a in args if isinstance(a, torch.Generator)] or
                [torch.default_generator]]
        out = self.op(*args)
        if any(isinstance(a, torch.Tensor) and type(a) is not torch.Tensor for a in args):
            return out  # fake or functional tensors (opcheck, torch.compile tracing): no kernel ran
        first = _tensors(out, args)
        for mode, seed in self.SCHEDULES:
            for a, saved in zip(args, inputs):
                if saved is not None and not _bits(a).equal(_bits(saved)):  # only the updated ones: no version bump
                    a.detach().copy_(saved)
            for g, state in gens:
                g.set_state(state)
            simt.set_schedule(mode, seed)
            try:
                again = self.op(*args)
            finally:
                simt.set_schedule("fwd", 0)
            same = [_atomic_close(a, b) if i in self.atomic else _bits(a).equal(_bits(b))
                    for i, (a, b) in enumerate(zip(first, _tensors(again, args)))]
            assert all(same), f"{self.op}: {mode} order differs"
        return out


def _atomic_close(a, b):
    """Within ATOMIC_ULPS units in the last place of a's dtype at a's largest finite magnitude; non-finites equal."""
    finite = a[a.isfinite()]
    amax = finite.abs().max().item() if finite.numel() else 0.0
    tol = ATOMIC_ULPS * torch.finfo(a.dtype).eps * amax
    return torch.isclose(a.double(), b.double(), rtol=0, atol=tol, equal_nan=True).all().item()


def _tensors(out, args):
    """Outputs then tensor arguments, cloned."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [t.detach().clone() for t in (*outs, *args) if isinstance(t, torch.Tensor)]


def _bits(t):
    return t.contiguous().reshape(-1).view(torch.uint8)  # NaN == NaN, -0 != 0; flat, so empty tensors view too


@pytest.fixture(autouse=True)
def simt_schedules(request, monkeypatch):
    """Every simt op call of a test on the simt backend goes through ScheduleCheck, except in tests marked
    one_schedule (the models: the same kernels are order-checked by their own tests, at 4x the cost here)."""
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "simt" \
            and not request.node.get_closest_marker("one_schedule"):
        ns = torch.ops.fastar_simt
        for schema in torch._C._jit_get_all_schemas():
            if schema.name.startswith("fastar_simt::"):
                name = schema.name.split("::")[1]
                monkeypatch.setattr(ns, name, ScheduleCheck(getattr(ns, name), ATOMIC_OUTPUTS.get(name, ())))


def sanitized(values, chosen=None, unpack=False):
    """Parametrize values with those in `chosen` (default: all) marked `sanitize`: the small ones that reach every
    code path, which tools/simt_sanitized_tests.sh runs under ASan + UBSan (pytest -m sanitize). unpack: each
    value is a tuple of several arguments."""
    return [pytest.param(*(v if unpack else (v,)), marks=pytest.mark.sanitize) if chosen is None or v in chosen
            else v for v in values]


def deterministic_alerts(op, run):
    """Whether calling `run` alerts torch.use_deterministic_algorithms(True) in the name of fastar::`op`: it must then
    raise, and warn under warn_only (the setting before is restored); another error propagates."""
    name, before = f"fastar::{op} ", (torch.are_deterministic_algorithms_enabled(),
                                      torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        try:
            run()
            raised = False
        except RuntimeError as e:
            if name not in str(e):
                raise
            raised = True
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    warned = any(name in str(w.message) for w in caught)
    assert raised == warned, f"fastar::{op}: raised {raised} but warned {warned} under warn_only"
    return raised


def run_with_cpu_isa(isa, code):
    """Runs python code in a fresh process whose CPU kernels use instruction set `isa` (FASTAR_CPU_ISA);
    skips when this CPU lacks it, fails with the child's stderr."""
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTAR_CPU_ISA": isa},
                       capture_output=True, text=True)
    if "this CPU does not support it" in r.stderr:
        pytest.skip(f"this CPU lacks {isa}")
    assert r.returncode == 0, r.stderr[-2000:]


def bf16_emulated(monkeypatch, op, call):
    """call()'s result on a CPU without bf16 GEMM instructions (simulated: build_info()["cpu_bf16"] empty, kernels
    avx2; FASTAR_EMULATED_BF16 unset), asserting that the bf16 mode ran with a warning naming `op`, the cost and the
    instructions it lacks (fastar.check_bf16_gemm)."""
    monkeypatch.delenv("FASTAR_EMULATED_BF16", raising=False)
    info = fastar.build_info()
    monkeypatch.setattr(fastar._backend, "build_info", lambda: {**info, "cpu_bf16": "", "cpu_isa": "avx2"})
    with pytest.warns(UserWarning, match=rf"^{op}: precision='bf16' runs with emulated bf16 GEMMs here, slower than "
                                         r"precision='fp32' .*AMX-BF16 or AVX512-BF16.*\(kernels run avx2\)"):
        return call()


class _Loading(Exception):
    pass


def sample_cli_warns_before_loading(monkeypatch, module, name):
    """`python -m fastar sample <name> --precision bf16` on a CPU without bf16 GEMM instructions (simulated) warns
    before it loads anything: module.load is made to stop the run."""
    monkeypatch.setattr(module, "load", lambda *a, **kw: (_ for _ in ()).throw(_Loading()))
    with pytest.raises(_Loading):
        bf16_emulated(monkeypatch, f"python -m fastar sample {name}", lambda: module.main(["--precision", "bf16"]))
