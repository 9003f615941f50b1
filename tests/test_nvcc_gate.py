"""The nvcc gate (tools/nvcc_gate.py) and the SASS tool (tools/sass.py): every kernel in csrc/kernels builds for
sm_80 and sm_90 with no spill and no stack; the SASS dump sees the instructions a kernel is meant to use."""
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nvcc_gate  # noqa: E402
import sass  # noqa: E402

pytestmark = pytest.mark.skipif(nvcc_gate.find_nvcc() is None, reason="nvcc not found")
KERNELS = sorted((ROOT / "csrc" / "kernels").rglob("*.cu"))


def test_every_kernel_at_both_archs_without_spills(tmp_path):
    rows, failures = nvcc_gate.run_gate(KERNELS, nvcc_gate.ARCHS, tmp_path)
    assert not failures
    assert json.loads((tmp_path / "resources.json").read_text()) == rows
    assert (tmp_path / "resources.md").read_text().count("| sm_") == len(rows)
    assert {r["source"] for r in rows} == {str(f.relative_to(ROOT)) for f in KERNELS}, "a .cu without kernels"
    archs = {}
    for r in rows:
        archs.setdefault(r["kernel"], set()).add(r["arch"])
        assert r["spill_store_bytes"] == r["spill_load_bytes"] == r["stack_bytes"] == 0, r
    assert all(a == set(nvcc_gate.ARCHS) for a in archs.values()), archs
    assert sum("vq_nearest_kernel" in k for k in archs) == 6  # float, bf16, fp16 x rows in shared memory or not
    assert {k for k in archs if "diffusion_loss_kernel" in k} == {
        f"fastar::kernels::diffusion_loss_kernel<{t}>" for t in ("float", "double")}
    for kernel in ("attention_fwd_kernel", "attention_bwd_kernel", "attention_combine_kernel"):
        # 3 dtypes x head dims 32, 64, 128 (the backward also by query tile: a (dtype, D) may have two);
        # "::" keeps multi_axis_attention_*_kernel out
        specs = {m.group(1, 2) for k in archs if (m := re.search(rf"::{kernel}<(\w+), (\d+)[,>]", k))}
        assert specs == {(t, d) for t in ("float", "__half", "__nv_bfloat16") for d in ("32", "64", "128")}, kernel


def test_gate_reads_spills_from_ptxas():
    report = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90a'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 360 bytes cmem[0]"""
    (row,) = nvcc_gate.parse(report, "foo.cu")
    assert (row["arch"], row["registers"], row["smem_bytes"]) == (90, 255, 1024)
    assert nvcc_gate.problems(row) == "spill_store_bytes 8, spill_load_bytes 4, stack_bytes 16"
    assert nvcc_gate.demangle(["_Z3fooPf"]) == ["foo"]


@pytest.mark.skipif(sass.tool_dir() is None, reason="no cuobjdump + nvdisasm (triton wheel or nvidia pip packages)")
def test_sass_shows_the_instructions_used():
    mma = ROOT / "csrc" / "simt" / "tests" / "mma.cu"
    assert sass.has_instruction(mma, "mma_matmul<__nv_bfloat16, true>", 80, "HMMA")
    assert sass.has_instruction(mma, "mma_matmul<__half, true>", 90, "LDSM")
    vq = ROOT / "csrc" / "kernels" / "quantize" / "vq_nearest.cu"
    assert sass.has_instruction(vq, "vq_nearest_kernel<float, true>", 90, "FFMA")
    assert not sass.has_instruction(vq, "vq_nearest_kernel<float, true>", 90, "HMMA")


@pytest.mark.skipif(sass.tool_dir() is None, reason="no cuobjdump + nvdisasm (triton wheel or nvidia pip packages)")
def test_attention_uses_tensor_cores_for_16_bit_types():
    attention = ROOT / "csrc" / "kernels" / "attention"
    # the backward's names carry its query tile: <T, D, kM>
    for cu, kernel, arch, tile64, tile128 in (("attention_fwd.cu", "attention_fwd_kernel", 80, ", false", ", true"),
                                              ("attention_bwd.cu", "attention_bwd_kernel", 90, ", 32", ", 32")):
        for dtype in ("__nv_bfloat16", "__half"):
            assert sass.has_instruction(attention / cu, f"{kernel}<{dtype}, 64{tile64}>", arch, "HMMA"), (kernel, dtype)
            assert sass.has_instruction(attention / cu, f"{kernel}<{dtype}, 128{tile128}>", arch, "LDSM"), (kernel, dtype)
        assert not sass.has_instruction(attention / cu, f"{kernel}<float, 64{tile64}>", arch, "HMMA"), kernel
