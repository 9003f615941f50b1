"""Machine facts every benchmark report carries: fastar's build, CPU, threads, and the measured fp32 FMA peak of
the instruction set the kernels run (and the bfloat16 dot-product peak on AVX512-BF16 CPUs)."""
import getpass
import os
import platform
import tempfile

import pytest
import torch

import fastar
from benchmarks import fma_peak


# torch's inductor cache does not key its CPU kernels by ATEN_CPU_CAPABILITY: a cache filled in a run held to AVX2
# (README, Time) gave the compiled flex_attention contender wrong results in a later run without it (max abs diff
# 2.66 on VAR-d16's attention row, 2026-12-06; a fresh cache was right). A held run keeps its own cache.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY']}")


@pytest.fixture(scope="session")
def peak_gflops(pytestconfig):
    return pytestconfig.fastar_peak["gflops"]


@pytest.fixture(scope="session")
def bf16_peak_gflops(pytestconfig):
    """The measured bfloat16 dot-product peak (AVX512-BF16), or None where it is not measured (AMX, no bf16)."""
    return pytestconfig.fastar_bf16_peak and pytestconfig.fastar_bf16_peak["gflops"]


def pytest_configure(config):
    info = fastar.build_info()
    config.fastar_peak = fma_peak.kernels_peak(info, torch.get_num_threads())
    bf16 = fma_peak.bf16_isa(info)
    config.fastar_bf16_peak = fma_peak.measure(bf16, torch.get_num_threads()) if bf16 else None
    config.fastar_declined = []


@pytest.fixture
def decline(pytestconfig):
    """decline(group, reason): a row that does not run on this machine (a bf16 mode on a CPU without bf16
    instructions) goes into the JSON's "declined" list with its reason, not timed (the report names the CPU beside
    it); the test then skips."""
    def record(group, reason):
        pytestconfig.fastar_declined.append({"group": group, "reason": reason})
        pytest.skip(reason)
    return record


@pytest.fixture(autouse=True)
def train_step_row(request, decline):
    """A model's training-step row (@pytest.mark.train_step("what it trains")) is declined where
    FASTAR_BENCH_TRAIN_STEPS=0: the main command's lean profile (benchmarks/main_profile.py), on CPUs too slow for
    them in its budget."""
    mark = request.node.get_closest_marker("train_step")
    if mark and os.environ.get("FASTAR_BENCH_TRAIN_STEPS", "1") == "0":
        decline(f"{mark.args[0]} training step", "FASTAR_BENCH_TRAIN_STEPS=0 (the main command's lean profile, "
                f"{os.environ.get('FASTAR_MAIN_PROFILE_REASON', 'set by hand')}): `pytest benchmarks -m train_step "
                "--benchmark-only` runs these rows")


@pytest.fixture
def bf16_row(decline):
    """bf16_row(group, what) -> the group of a bf16 mode's row: declined (decline) on a CPU without bf16 GEMM
    instructions, where the mode runs emulated, slower than float32 (a row of no interest that would lengthen the
    main command where it is slowest); FASTAR_EMULATED_BF16=1 times it there anyway, and the group says so."""
    def check(group, what):
        why = fastar._backend.bf16_gemm_emulated(torch.device("cpu"))
        if why and os.environ.get("FASTAR_EMULATED_BF16") != "1":
            decline(group, f"{what}: precision='bf16' would run with emulated bf16 GEMMs, slower than fp32: {why}; "
                    "FASTAR_EMULATED_BF16=1 times it")
        if why:
            group += " EMULATED (FASTAR_EMULATED_BF16=1 on a CPU without bf16 instructions: slower than the mode)"
        return group
    return check


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["declined"] = config.fastar_declined


def pytest_benchmark_update_machine_info(config, machine_info):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine_info["fastar"] = {
        "version": fastar.__version__, "backends": fastar.backends(), "build": fastar.build_info(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu, "cores": os.cpu_count(),
        "fp32_peak": config.fastar_peak, "bf16_peak": config.fastar_bf16_peak,
    }
    if os.environ.get("FASTAR_MAIN_PROFILE"):  # set by the main command (benchmarks/main_profile.py)
        machine_info["fastar"]["main_profile"] = {"profile": os.environ["FASTAR_MAIN_PROFILE"],
                                                  "reason": os.environ.get("FASTAR_MAIN_PROFILE_REASON", "")}
