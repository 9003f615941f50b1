"""Which instruction set each CPU kernel family runs (fastar.build_info()), against the CPU /proc/cpuinfo describes:
the best one, except that an AMD family 25 CPU with AVX-512 (Zen 4, 512-bit operations on 256-bit datapaths) runs
the families whose AVX2 kernels measured faster there on them; FASTAR_CPU_ISA picks one set for every family."""
import json
import os
import subprocess
import sys

import pytest

import fastar
from tests.conftest import run_with_cpu_isa

ZEN4_AVX2_FAMILIES = "vq_nearest,attention_decode,attention_tiny,multi_axis"
AVX512 = {"avx512f", "avx512vl", "avx512dq", "avx512bw"}


def cpuinfo():
    """(vendor_id, cpu family, flags) of the first processor."""
    fields = {}
    for line in open("/proc/cpuinfo"):
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields.get("vendor_id", ""), int(fields.get("cpu family", "0")), set(fields.get("flags", "").split())


def test_default_isa_per_family():
    """The default (a fresh process without FASTAR_CPU_ISA, which a run may have set for every test)."""
    vendor, family, flags = cpuinfo()
    env = {k: v for k, v in os.environ.items() if k != "FASTAR_CPU_ISA"}
    out = subprocess.run([sys.executable, "-c", "import json, fastar; print(json.dumps(fastar.build_info()))"],
                         env=env, capture_output=True, text=True, check=True).stdout
    info = json.loads(out.splitlines()[-1])
    best = "avx512" if AVX512 <= flags else "avx2" if {"avx2", "fma"} <= flags else "base"
    assert info["cpu_isa"] == best
    zen4 = vendor == "AuthenticAMD" and family == 25 and best == "avx512"
    assert info["cpu_isa_avx2_families"] == (ZEN4_AVX2_FAMILIES if zen4 else "")


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_named_isa_runs_every_family(isa):
    run_with_cpu_isa(isa, "import fastar; info = fastar.build_info();"
                          f"assert (info['cpu_isa'], info['cpu_isa_avx2_families']) == ('{isa}', ''), info")


@pytest.mark.parametrize("library", ["onednn", "mkl"])
def test_bf16_instructions_within_the_gemm_librarys_cap(monkeypatch, library):
    """build_info()["cpu_bf16"]: the CPU's bf16 instructions (/proc/cpuinfo), none where the library running the bf16
    GEMMs is capped below them (ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS: its products would be emulated)."""
    monkeypatch.setenv("FASTAR_BF16_GEMM", library)
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(var, raising=False)
    flags = cpuinfo()[2]
    best = "amx-bf16" if "amx_bf16" in flags else "avx512-bf16" if "avx512_bf16" in flags else ""
    assert fastar.build_info()["cpu_bf16"] == best
    cap = "ONEDNN_MAX_CPU_ISA" if library == "onednn" else "MKL_ENABLE_INSTRUCTIONS"
    below, with_bf16 = ("avx512_core_vnni", "AVX512_CORE_BF16") if library == "onednn" else ("AVX512_E2", "AVX512_E3")
    monkeypatch.setenv(cap, below)
    assert fastar.build_info()["cpu_bf16"] == ""
    monkeypatch.setenv(cap, with_bf16)  # AVX512-BF16 but no AMX
    assert fastar.build_info()["cpu_bf16"] == ("avx512-bf16" if "avx512_bf16" in flags else "")
