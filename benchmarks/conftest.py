"""Machine facts every benchmark report carries: fastar's build, threads, and the measured fp32 FMA peak."""
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import fastar


def fp32_peak_gflops(rounds=3):
    """The machine's float32 FMA peak on torch's thread count: benchmarks/fma_peak.cpp, best of `rounds`."""
    exe = Path(tempfile.gettempdir()) / "fastar_fma_peak"
    src = Path(__file__).with_name("fma_peak.cpp")
    subprocess.run(["g++", "-O2", "-march=native", "-ffp-contract=fast", "-pthread", str(src), "-o", str(exe)],
                   check=True)
    runs = [subprocess.run([str(exe), str(torch.get_num_threads())], check=True, capture_output=True, text=True)
            for _ in range(rounds)]
    return max(float(r.stdout) for r in runs)


@pytest.fixture(scope="session")
def peak_gflops(pytestconfig):
    return pytestconfig.fastar_peak_gflops


def pytest_configure(config):
    config.fastar_peak_gflops = fp32_peak_gflops()


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
        "fp32_peak_gflops": config.fastar_peak_gflops,
    }
