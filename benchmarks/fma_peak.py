"""The float32 FMA peak of the instruction set fastar's CPU kernels run, and the bfloat16 dot-product peak where the
bf16 modes run on AVX512-BF16: builds and runs benchmarks/fma_peak.cpp."""
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("fma_peak.cpp")
ISA_FLAGS = {"base": [], "avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx512f"],  # build_info()["cpu_isa"] -> g++
             "avx512bf16": ["-mavx512f", "-mavx512bf16"]}  # the bfloat16 dot-product peak (bf16_isa)
REGISTERS = {"base": 16, "avx2": 16, "avx512": 32, "avx512bf16": 32}  # vector registers of each ISA (xmm, ymm, zmm)


def bf16_isa(build_info):
    """The ISA whose bfloat16 peak fma_peak.cpp measures for the bf16 modes' GEMMs: "avx512bf16" where they run on
    AVX512-BF16 (build_info()["cpu_bf16"]); None with AMX (tiles, another peak, not measured here) or no bf16."""
    return "avx512bf16" if build_info.get("cpu_bf16") == "avx512-bf16" else None


def compile_for(isa, out, *extra):
    """g++ of fma_peak.cpp for `isa` into `out` (extra: e.g. "-S" for the assembly)."""
    subprocess.run(["g++", "-O2", *ISA_FLAGS[isa], "-ffp-contract=fast", "-pthread", *extra, str(SOURCE), "-o",
                    str(out)], check=True)


def kernels_peak(build_info, threads):
    """measure() of the ISA fastar's CPU kernels run (build_info()["cpu_isa"]): the float32 peak every report and
    the main command's profile give."""
    return measure(build_info.get("cpu_isa", "base"), threads)


def measure(isa, threads, rounds=3):
    """Best of `rounds`: {"gflops" summed over threads, "isa", "floats" per vector, "chains" per thread,
    "threads"}."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "fma_peak"
        compile_for(isa, exe)
        runs = [subprocess.run([str(exe), str(threads)], check=True, capture_output=True, text=True).stdout.split()
                for _ in range(rounds)]
    gflops, isa_built, floats, chains, threads = max(runs, key=lambda r: float(r[0]))
    return {"gflops": float(gflops), "isa": isa_built, "floats": int(floats), "chains": int(chains),
            "threads": int(threads)}
