"""Which instruction set each CPU kernel family runs (fastar.build_info()), against the CPU /proc/cpuinfo describes:
the best one, except that an AMD family 25 CPU with AVX-512 (Zen 4, 512-bit operations on 256-bit datapaths) runs
the families whose AVX2 kernels measured faster there on them; FASTAR_CPU_ISA picks one set for every family."""
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
    vendor, family, flags = cpuinfo()
    info = fastar.build_info()
    best = "avx512" if AVX512 <= flags else "avx2" if {"avx2", "fma"} <= flags else "base"
    assert info["cpu_isa"] == best
    zen4 = vendor == "AuthenticAMD" and family == 25 and best == "avx512"
    assert info["cpu_isa_avx2_families"] == (ZEN4_AVX2_FAMILIES if zen4 else "")


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_named_isa_runs_every_family(isa):
    run_with_cpu_isa(isa, "import fastar; info = fastar.build_info();"
                          f"assert (info['cpu_isa'], info['cpu_isa_avx2_families']) == ('{isa}', ''), info")
