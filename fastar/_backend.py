"""Which kernels are built, which one an op runs, and the fallbacks (warned once, never silent).

Backends: "cpu" and "cuda" are torch.ops.fastar.* for tensors on that device; "simt" is the CUDA kernels run
by the CPU emulator (torch.ops.fastar_simt.*, a test build: FASTAR_SIMT=1); "torch" is fastar.torch, each op
as the plain PyTorch a user would otherwise write (the benchmarks' baseline); "reference" is fastar.reference,
the float64-capable oracle of the tests.
"""
import contextlib
import importlib
import os
import warnings

import torch

BACKENDS = ("cpu", "cuda", "simt", "torch", "reference")
PYTHON_BACKENDS = ("torch", "reference")  # always there: plain PyTorch


def _load(module):
    try:
        return importlib.import_module(module), None
    except ModuleNotFoundError as e:  # not built: reported by backends() and warned about when an op needs it
        if e.name != module:
            return None, _load_failed(module, e)
        return None, e
    except ImportError as e:  # built, and failed to load (another torch, a missing library)
        return None, _load_failed(module, e)


def _load_failed(module, e):
    """The error of a module that is built but does not load, said at import and kept for backends() / build_info()."""
    error = ImportError(f"{module} is built but failed to load ({e}); most often it was compiled against another "
                        f"torch than this {torch.__version__} (pip's build isolation fetches its own: reinstall with "
                        f"`pip install --no-build-isolation .`)")
    warnings.warn(str(error), stacklevel=3)
    return error


_C, _C_error = _load("fastar._C")
_simt, _simt_error = _load("fastar._simt")

_forced = None  # set by use_backend
_last = {}  # op name -> backend that ran it last
_warned = set()


def build_info() -> dict:
    """What the compiled extension contains and what it chose on this CPU (csrc/torch/module.cpp): version, cuda
    (bool), cuda_archs, cpu_isa (the CPU kernels' ISA), cpu_isa_avx2_families (on Zen 4, whose AVX-512 runs on
    256-bit datapaths, the kernel families that run their AVX2 code under cpu_isa avx512, comma-separated; ''
    elsewhere), cpu_bf16 ('amx-bf16', 'avx512-bf16', or '' where bf16 GEMMs would be emulated: the CPU lacks both,
    or the GEMM library's ISA cap excludes them), cpu_vendor ('intel', 'amd' or 'other'), cpu_bf16_gemm and
    cpu_fp32_gemm (the GEMM library, 'mkl' or 'onednn'), compiler. {'error': ...} when fastar._C is not available."""
    if _C is None:
        return {"error": f"fastar._C is not available: {_C_error}"}
    return dict(_C.build_info())


def bf16_gemm_emulated(device) -> str:
    """'' where bfloat16 GEMMs on `device` run on bf16 instructions (CUDA devices: tensor cores; a CPU with AMX-BF16
    or AVX512-BF16 that the bf16 GEMM library may use, build_info()["cpu_bf16"]), else why they do not: there the
    library emulates them, the same numerics, slower than float32. device: a torch.device or its name."""
    info = build_info()
    if torch.device(device).type != "cpu" or info.get("cpu_bf16"):
        return ""
    cap = "ONEDNN_MAX_CPU_ISA" if info.get("cpu_bf16_gemm") == "onednn" else "MKL_ENABLE_INSTRUCTIONS"
    lacks = (f"which {info.get('cpu_bf16_gemm')} (the bf16 GEMM library) may not use under {cap}={os.environ[cap]}"
             if os.environ.get(cap) else "which this CPU lacks")
    return f"bf16 GEMMs run on AMX-BF16 or AVX512-BF16 instructions, {lacks} (kernels run {info.get('cpu_isa')})"


def check_bf16_gemm(op: str, device):
    """The bf16 modes' rule on a device without bf16 GEMM instructions (bf16_gemm_emulated): the mode runs there, its
    GEMMs emulated (the same numerics), and warns, once per op, that it is slower than float32 there (VAR-d16 B 4
    on an AVX2-only AMD Zen 1: 719 s against 319 s). FASTAR_EMULATED_BF16=1 runs it without the warning."""
    why = bf16_gemm_emulated(device)
    if why and os.environ.get("FASTAR_EMULATED_BF16") != "1":
        warnings.warn(f"{op}: precision='bf16' runs with emulated bf16 GEMMs here, slower than precision='fp32' "
                      f"(the same numerics as on bf16 hardware): {why}; FASTAR_EMULATED_BF16=1 silences this",
                      stacklevel=3)


def _require_C(fn):
    if _C is None:
        raise RuntimeError(f"{fn}: fastar._C is not built: {_C_error}")
    return _C


def cpu_cache_info() -> dict:
    """The CPU kernels' cache of large output blocks (csrc/cpu/huge_blocks.h): a fresh output of tens of MB costs a
    page fault and the OS's zeroing of every page, so the blocks of freed outputs (at least 4 MB, on transparent
    huge pages) are kept for the next call of that size. {'blocks', 'bytes': what it holds now, 'limit_bytes',
    'hits', 'misses': outputs served from it and freshly mapped, 'live_bytes': of its blocks in use, 'peak_bytes':
    the limit raised by cpu_cache_all_tensors(keep_peak=True), 0 if none}. Used by the tiny-sequence attention's
    outputs and gradients, and, through cpu_cache_all_tensors, by every large CPU tensor inside VAR's VQVAE decoder
    fast path, HiT's generator at inference, fastar.models.layers.decode_weights and each cpu_cache_step (the
    trainers' steps)."""
    return dict(_require_C("cpu_cache_info").cpu_cache_info())


def empty_cpu_cache():
    """Returns every cached block to the OS (outputs still alive are untouched: they return to the cache when
    freed)."""
    _require_C("empty_cpu_cache").empty_cpu_cache()


def set_cpu_cache_limit(mb: int):
    """The most the cache holds, in MB (default: FASTAR_CPU_CACHE_MB, else 2048 or an eighth of the machine's
    memory, whichever is less); 0 keeps nothing. Lowering it unmaps the cached blocks past it. It drops a peak kept
    by cpu_cache_all_tensors(keep_peak=True), as empty_cpu_cache does."""
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 0:
        raise ValueError(f"set_cpu_cache_limit: mb must be an int >= 0, got {mb!r}")
    _require_C("set_cpu_cache_limit").set_cpu_cache_limit(mb << 20)


def _check_min_mb(name, min_mb):
    if isinstance(min_mb, bool) or not isinstance(min_mb, int) or min_mb < 1:
        raise ValueError(f"{name}: min_mb must be an int >= 1, got {min_mb!r}")


@contextlib.contextmanager
def cpu_cache_all_tensors(keep_peak: bool = False, *, min_mb: int | None = None):
    """Within it every CPU tensor torch allocates (not only fastar's kernels' outputs) of at least 4 MB comes from
    the CPU cache, smaller ones from torch's allocator as before: for models whose layers allocate large
    activations, where each fresh one costs page faults and zeroing (VAR's VQVAE decoder at B 4: ~170 MB per
    convolution output; its fast path runs in it). Process-wide while inside (torch's CPU allocator is swapped);
    nests; the blocks stay cached after it, up to the limit.

    keep_peak=True (a training step): tensors of min_mb MB and more (by default 32: smaller ones glibc's heap
    mostly reuses warm; a step whose tensors are mostly 4 to 32 MB may gain from less, see cpu_cache_step) come from
    the cache, and the most bytes of its blocks in use at once inside raises the limit and stays its floor after
    the scope, so that the next step's activations and gradients come warm from the blocks this step's backward
    freed, as torch's CUDA caching allocator keeps what it reserved. The process then holds a step's peak of such
    tensors between steps (VAR-d16 at B 4: ~1.5 GB) until empty_cpu_cache() or set_cpu_cache_limit(). Its blocks
    are on 4 KB pages: VAR-d16's steps ran slower on warm 2 MB ones than on torch's allocator.
    min_mb applies with keep_peak=True only (outside keep_peak scopes the threshold is the cache's 4 MB): given
    without it, a ValueError. fastar.cpu_cache_step(device) is this for the cpu backend only."""
    if not isinstance(keep_peak, bool):
        raise TypeError(f"cpu_cache_all_tensors: keep_peak must be a bool, got {type(keep_peak).__name__}")
    if min_mb is not None and not keep_peak:
        raise ValueError(f"cpu_cache_all_tensors: min_mb applies with keep_peak=True only (without it tensors of 4 MB "
                         f"and more come from the cache), got min_mb={min_mb!r} and keep_peak=False")
    min_mb = 32 if min_mb is None else min_mb
    _check_min_mb("cpu_cache_all_tensors", min_mb)
    _require_C("cpu_cache_all_tensors").cpu_cache_all_tensors(True, keep_peak, min_mb << 20)
    try:
        yield
    finally:
        _C.cpu_cache_all_tensors(False, keep_peak, min_mb << 20)


@contextlib.contextmanager
def cpu_cache_step(device: torch.device, *, min_mb: int = 32):
    """One training step's scope (forward, backward, optimizer): where fastar's cpu backend runs ops on `device`,
    every tensor of min_mb MB and more comes from the CPU cache with its peak kept (cpu_cache_all_tensors(keep_peak=
    True, min_mb=min_mb)), so each step after the first writes warm blocks (VAR-d16 at B 8 on a Zen 4, bench_var.py:
    42.2 -> 38.8 s a step); elsewhere, the torch backend included (the official formulation), torch's allocator as
    usual. fastar's trainers run every step in it and call empty_cpu_cache() at the end.

    min_mb: 32 by default. Below glibc's largest mmap threshold (32 MB) its heap mostly serves a freed size again
    warm, and cached blocks made VAR-d16's single cold step slower (10.5 -> 15.1 s at 4 MB: each is a fresh mapping
    in the first step). HiT's G + D step, whose tensors are mostly 4 to 32 MB, uses 4: glibc's heap still took
    3,000-25,000 page faults a step there, and none from the cache after the first step."""
    if not isinstance(device, torch.device):
        raise TypeError(f"cpu_cache_step: device must be a torch.device, got {type(device).__name__}")
    _check_min_mb("cpu_cache_step", min_mb)
    if active(device) != "cpu" or device.type != "cpu":
        yield
        return
    with cpu_cache_all_tensors(keep_peak=True, min_mb=min_mb):
        yield


FP32_LINEAR_LIBRARIES = ("mkl", "onednn")
# The kernels' own float32 GEMM choice (csrc/cpu/blas.cpp fp32_gemm_library; FASTAR_FP32_GEMM is read before it).
_DEFAULT_FP32_LINEAR = _C.build_info()["cpu_fp32_gemm"] if _C is not None else "mkl"


def fp32_linear_library() -> str:
    """The library fastar's models run their float32 CPU inference Linear layers on (fastar.models.layers.Linear),
    the one the kernels' float32 GEMMs take (build_info()["cpu_fp32_gemm"]): "mkl" (F.linear) on Intel CPUs and on
    AVX2-only ones; "onednn" on the others with AVX-512 (oneDNN's AVX-512 kernels, where MKL's sgemm takes its AVX2
    path). On an AVX2-only AMD Zen 3, MAR's head forward + backward (1024 rows) took 1.49 s on MKL, 1.70 s on
    oneDNN. On an AMD Zen 5, whose AVX-512 units are full width (518.8 GFLOP/s on 2 threads), MKL's F.linear ran
    MAR's, VAR's and the head's shapes at 178-198 GFLOP/s, oneDNN at 364-472 (one GEMM each, 2026-12-07).
    FASTAR_FP32_GEMM=mkl|onednn picks one."""
    want = os.environ.get("FASTAR_FP32_GEMM")
    if want is not None:
        if want not in FP32_LINEAR_LIBRARIES:
            raise ValueError(f"FASTAR_FP32_GEMM must be one of {FP32_LINEAR_LIBRARIES}, got {want!r}")
        return want
    return _DEFAULT_FP32_LINEAR


_BUILT = {"cpu": _C is not None, "cuda": _C is not None and bool(_C.build_info()["cuda"]), "simt": _simt is not None}
_KERNEL_DEVICES = frozenset(kind for kind in ("cpu", "cuda") if _BUILT[kind])  # device types with built kernels


def backends() -> dict:
    """Which backends are built: {'cpu': bool, 'cuda': bool, 'simt': bool}."""
    return dict(_BUILT)


@contextlib.contextmanager
def use_backend(name: str):
    """Run every fastar op in this block on `name` ('cpu', 'cuda', 'simt', 'torch' or 'reference'); errors if not
    built."""
    global _forced
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS}, got {name!r}")
    if name not in PYTHON_BACKENDS and not backends()[name]:
        raise RuntimeError(f"use_backend: the {name!r} backend is not built (fastar.backends() = {backends()})")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def last_backend(op: str) -> str | None:
    """The backend that ran the last call of `op` ('cpu', 'cuda', 'simt', 'torch' or 'reference'), None before
    any call."""
    return _last.get(op)


def active(device: torch.device) -> str:
    """The backend an op on `device` runs now: use_backend's choice, else the device's kernels, else the torch
    formulation (what the official code runs; the reference is the tests' slower oracle)."""
    if _forced is not None:
        return _forced
    kind = device.type  # a new str per access: read once (ops call this on every call)
    return kind if kind in _KERNEL_DEVICES else "torch"


_DEVICE_OF = {"cpu": "cpu", "simt": "cpu", "cuda": "cuda"}  # the device type each compiled backend runs on


def resolve(op: str, device: torch.device) -> str:
    """The backend that runs `op` on `device`: warns once when no kernel is built for it, errors when the
    backend forced by use_backend cannot run tensors on `device`."""
    name = active(device)
    if _forced is None:
        if name == "torch":
            warn_once(op, device.type, f"fastar.ops.{op}: no fastar kernel for {device.type} tensors is built "
                      f"(backends: {_BUILT}); running the torch backend (plain PyTorch)", stacklevel=4)
    elif name in _DEVICE_OF and _DEVICE_OF[name] != device.type:
        raise RuntimeError(f"fastar.ops.{op}: backend {name!r} cannot run tensors on {device}")
    return name


def warn_once(op: str, key, message: str, stacklevel: int):
    """Warns `message` the first time (op, key) falls back; stacklevel counts from this function."""
    if (op, key) not in _warned:
        _warned.add((op, key))
        warnings.warn(message, stacklevel=stacklevel)


def ran(op: str, name: str):
    """Records that backend `name` ran `op` (read by last_backend), in eager mode: under torch.compile the record
    would be a side effect, which dynamo refuses inside an autograd.Function's backward (the models' Linear
    backward calls fastar.ops.linear_weight_grad)."""
    if not torch.compiler.is_compiling():
        _last[op] = name


_NAMESPACES = {}  # backend name -> its torch.ops namespace (torch.ops' attribute lookup costs microseconds per call)


def namespace(name: str):
    """torch.ops.fastar or torch.ops.fastar_simt: the compiled ops of backend `name` (cached in eager mode only, as
    `ran` records)."""
    ns = _NAMESPACES.get(name)
    if ns is None:
        ns = getattr(torch.ops, "fastar_simt" if name == "simt" else "fastar")
        if not torch.compiler.is_compiling():
            _NAMESPACES[name] = ns
    return ns
