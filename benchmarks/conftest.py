"""Machine facts every benchmark report carries: fastar's build, threads, and the fp32 FMA peak estimate."""
import os
import platform
import time

import pytest
import torch

import fastar


def fp32_peak_gflops(n=2048, rounds=5):
    """The machine's float32 FMA throughput as torch.mm (oneDNN/MKL, near peak) reaches it on n^3."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_t(lambda: torch.mm(a, b)) for _ in range(rounds))
    return 2 * n**3 / best / 1e9


def _t(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.fixture(scope="session")
def peak_gflops():
    return fp32_peak_gflops()


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
        "fp32_peak_gflops": fp32_peak_gflops(),
    }
