"""The float32 FMA peak of the instruction set fastar's CPU kernels run: builds and runs benchmarks/fma_peak.cpp."""
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("fma_peak.cpp")
ISA_FLAGS = {"base": [], "avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx512f"]}  # build_info()["cpu_isa"] -> g++
REGISTERS = {"base": 16, "avx2": 16, "avx512": 32}  # vector registers of each ISA (xmm, ymm, zmm)


def compile_for(isa, out, *extra):
    """g++ of fma_peak.cpp for `isa` into `out` (extra: e.g. "-S" for the assembly)."""
    subprocess.run(["g++", "-O2", *ISA_FLAGS[isa], "-ffp-contract=fast", "-pthread", *extra, str(SOURCE), "-o",
                    str(out)], check=True)


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
