"""benchmarks/fma_peak.cpp, the report's peak (issue 20): for each ISA it is built for, the hot loop holds its
chains in registers (no load or store inside it: 24 chains of 64-byte vectors under AVX2 spilled, a ~20x
wrong peak), one vector FMA (base: mul + add; avx512bf16: one bfloat16 dot product) per chain per iteration, and
the chains fit the register file."""
import pytest

from benchmarks import fma_peak

OPS = {"base": ("mulps", "addps"), "avx2": ("vfmadd",), "avx512": ("vfmadd",), "avx512bf16": ("vdpbf16ps",)}
WIDTH = {"base": "xmm", "avx2": "ymm", "avx512": "zmm", "avx512bf16": "zmm"}


def hot_loop(asm, op):
    """The instructions of the basic block (from a label or a jump to the next) holding the most `op`."""
    blocks, block = [], []
    for line in asm.splitlines():
        line = line.strip()
        if line.endswith(":"):
            blocks.append(block)
            block = []
        elif line and not line.startswith("."):
            block.append(line)
            if line.startswith("j"):
                blocks.append(block)
                block = []
    blocks.append(block)
    return max(blocks, key=lambda b: sum(i.startswith(op) for i in b))


@pytest.mark.parametrize("isa", list(fma_peak.ISA_FLAGS))
def test_chains_fit_the_register_file(isa, tmp_path):
    asm_path = tmp_path / "fma_peak.s"
    fma_peak.compile_for(isa, asm_path, "-S")
    loop = hot_loop(asm_path.read_text(), OPS[isa][0])
    chains = sum(i.startswith(OPS[isa][0]) for i in loop)
    assert chains + 2 <= fma_peak.REGISTERS[isa], f"{chains} chains and 2 operands exceed {isa}'s registers"
    assert chains >= 8, f"{chains} chains do not cover FMA latency x throughput (4 cycles x 2 units)"
    assert all(f"%{WIDTH[isa]}" in i for i in loop if i.startswith(OPS[isa])), f"not {WIDTH[isa]} vectors"
    assert not [i for i in loop if "(" in i], f"memory traffic in the {isa} hot loop: {loop}"


def test_bf16_isa_follows_the_bf16_instructions():
    assert fma_peak.bf16_isa({"cpu_bf16": "avx512-bf16"}) == "avx512bf16"
    assert fma_peak.bf16_isa({"cpu_bf16": "amx-bf16"}) is None and fma_peak.bf16_isa({"cpu_bf16": ""}) is None
