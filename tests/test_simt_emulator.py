"""The SIMT emulator (csrc/simt/) on its own test programs (csrc/simt/tests/*.cu).

Each program is compiled with g++ under the emulator and runs under the forward, reverse and shuffled schedules:
correct kernels must print bit-identical digests, the planted race, the read of uninitialised shared memory and a
block reading another block's writes must print different results, and each planted barrier / warp / memory bug must
be reported with its file:line (the `// SITE:<name>` markers in negative.cu). Under ThreadSanitizer
(csrc/simt/tsan.h) each race of races.cu must be reported at its SITE line and its fixed version must run clean.
Binaries are cached in the temp dir, keyed by a hash of the sources and flags, so reruns are fast. nvcc compiles
every program for sm_80 and sm_90 where it is installed.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
TESTS = CSRC / "simt" / "tests"
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
CORRECT = ("reduce", "matmul", "mma", "features")
NEGATIVE = "negative"
RACES = "races"  # only built with TSan
BENCH = "bench"  # timings for csrc/simt/README.md; here only run small, for its argmin check
SCHEDULES = {  # name: environment
    "fwd": {"SIMT_SCHED": "fwd"},
    "rev": {"SIMT_SCHED": "rev"},
    "shuffle1": {"SIMT_SCHED": "shuffle", "SIMT_SEED": "1"},
    "shuffle2": {"SIMT_SCHED": "shuffle", "SIMT_SEED": "2"},
    "threads2": {"SIMT_SCHED": "fwd", "SIMT_THREADS": "2"},
}
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer")
TSAN = ("-fsanitize=thread",)

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or shutil.which("g++") is None or not (CUDA_INCLUDE / "cuda_fp16.h").exists(),
    reason="needs Linux, g++ and the CUDA headers",
)


def _sources_hash():
    h = hashlib.sha256()
    kernels = [CSRC / "kernels" / "common.cuh", CSRC / "kernels" / "dtype.h"]  # what the programs include
    for path in sorted([*(CSRC / "simt").glob("*.h"), *TESTS.glob("*"), *kernels]):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


BUILD_DIR = Path(tempfile.gettempdir()) / f"fastar-simt-{_sources_hash()}"


@lru_cache(maxsize=None)
def build(name, sanitize=False, tsan=False):
    """Path of the emulator binary of tests/<name>.cu, compiled on first use (ASan + UBSan, or TSan)."""
    flags = ["-O1", "-g", *SANITIZE] if sanitize else ["-O1", "-g", *TSAN] if tsan else ["-O2"]
    out = BUILD_DIR / (name + ("-asan" if sanitize else "-tsan" if tsan else ""))
    if not out.exists():
        BUILD_DIR.mkdir(exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = ["g++", "-std=c++17", *flags, f"-I{CUDA_INCLUDE}", f"-I{CSRC}", "-include", str(CSRC / "simt" / "simt.h"),
               "-x", "c++", str(TESTS / f"{name}.cu"), "-x", "none", "-pthread", "-o", str(tmp)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        tmp.rename(out)  # atomic: concurrent test runs never see half a binary
    return out


@pytest.fixture(scope="module", autouse=True)
def build_all():
    """Compiles all programs two at a time (the test machines have 2 cores)."""
    jobs = [(n, False) for n in (*CORRECT, NEGATIVE, BENCH)] + [(n, True) for n in (*CORRECT, NEGATIVE)]
    jobs += [(n, False, True) for n in (RACES, "features")]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda job: build(*job), jobs))


def run(binary, *args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIMT_")}
    full_env.update(env or {})
    return subprocess.run([str(binary), *args], env=full_env, capture_output=True, text=True, timeout=60)


def digest(proc):
    assert proc.returncode == 0, proc.stderr
    return re.search(r"digest (\w+)", proc.stdout).group(1)


@pytest.mark.parametrize("name", CORRECT)
def test_correct_kernels_identical_under_every_schedule(name):
    digests = {sched: digest(run(build(name), env=env)) for sched, env in SCHEDULES.items()}
    assert len(set(digests.values())) == 1, digests


@pytest.mark.parametrize("name", CORRECT)
def test_correct_kernels_clean_under_asan_ubsan(name):
    for sched in ("fwd", "shuffle1"):
        proc = run(build(name, sanitize=True), env=SCHEDULES[sched])
        assert proc.returncode == 0 and "runtime error" not in proc.stderr, proc.stderr


def test_bench_runs_small():
    digest(run(build(BENCH), "300", "1000"))


@pytest.mark.parametrize("mode", ["race", "uninit", "cp_async_early", "cp_async_unpublished"])
def test_order_dependent_bug_changes_with_schedule(mode):
    # race: a missing __syncthreads; uninit: a max over shared memory half written, whose fill byte follows the
    # schedule and is renewed for every block (the second block would otherwise see the first one's values);
    # cp_async_*: a cp.async destination read before the wait, or before the barrier after the other threads' waits
    results = {sched: run(build(NEGATIVE), mode, env=env).stdout for sched, env in SCHEDULES.items()
               if sched != "threads2"}
    assert len(set(results.values())) > 1, results


def test_blocks_run_in_schedule_order():
    # block b reads what block b - 1 wrote (a GPU runs blocks in no set order): the chain of 64 blocks ends at 64
    # forward only, also on one OS thread
    results = {sched: run(build(NEGATIVE), "block_chain", env=env).stdout for sched, env in SCHEDULES.items()
               if sched != "threads2"}
    assert results["fwd"].startswith("block_chain result 64\n"), results
    assert all(results[sched] != results["fwd"] for sched in ("rev", "shuffle1", "shuffle2")), results


def site_lines(marker, program=NEGATIVE):
    lines = (TESTS / f"{program}.cu").read_text().splitlines()
    return [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith(f"// SITE:{marker}")]


PLANTED = [
    ("exit", ["exit"], "barrier divergence: 28 of 128 threads exited"),
    ("two_sites", ["two_a", "two_b"], "different __syncthreads"),
    ("one_line", ["one_line"], "different __syncthreads"),  # told apart by call address, not file:line
    ("helper", ["helper"], "different __syncthreads"),  # one helper's barrier inlined into both branches
    ("shfl", ["shfl"], "__shfl_sync"),
    ("shfl_outside", ["shfl_outside"], ", outside the mask"),
    ("misaligned", ["misaligned"], "misaligned 16-byte vector access"),
    ("cp_async_misaligned", ["cp_async_misaligned"], "misaligned 16-byte vector access"),
    ("smem_limit", [], "above the device's opt-in limit of 101376"),  # what an RTX 4090 grants
    ("smem_attribute", [], "above 48 KB, without cudaFuncSetAttribute"),
]
# Writes past shared memory: plain builds find the guard's canary changed when the block ends (ASan stops at the
# write itself, test_asan_reports_writes_past_the_end).
PLANTED_PLAIN = [
    ("dyn_smem_oob", [], "a write past the 100 bytes of dynamic shared memory"),
    ("static_smem_oob", ["static_decl"], "a write past static shared s (256 bytes"),
]


@pytest.mark.parametrize("mode, markers, words, sanitize",
                         [(*case, False) for case in PLANTED + PLANTED_PLAIN] + [(*case, True) for case in PLANTED])
def test_planted_bug_is_reported_with_its_lines(mode, markers, words, sanitize):
    for sched in ("fwd", "rev", "shuffle1"):
        proc = run(build(NEGATIVE, sanitize), mode, env=SCHEDULES[sched])
        # the program itself checks the launch failed and that a later launch still works
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = re.search(r"report: (.*)", proc.stdout).group(1)
        assert words in report
        for marker in markers:
            (line,) = site_lines(marker)
            assert f"{NEGATIVE}.cu:{line}" in report, report


@pytest.mark.parametrize("mode, error", [
    ("dyn_smem_oob", "use-after-poison"),  # inside the 128-byte rounding of the shared buffer
    ("static_smem_oob", "use-after-poison"),  # a static array used to be thread-local storage, without redzones
    ("global_oob", "heap-buffer-overflow"),  # inside cudaMalloc's 256-byte rounding
])
def test_asan_reports_writes_past_the_end(mode, error):
    proc = run(build(NEGATIVE, True), mode, env=SCHEDULES["fwd"])
    assert proc.returncode != 0 and error in proc.stderr, proc.stderr
    (line,) = site_lines(mode)
    assert f"{NEGATIVE}.cu:{line}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("mode", ["cp_async_early", "cp_async_unpublished"])
def test_asan_reports_cp_async_destination_read_too_early(mode):
    # the destination is poisoned from the cp.async until its thread's cp.async.wait_group lands it
    for sched in ("fwd", "rev"):
        proc = run(build(NEGATIVE, True), mode, env=SCHEDULES[sched])
        assert proc.returncode != 0 and "use-after-poison" in proc.stderr, proc.stderr
        (line,) = site_lines(mode)
        assert f"{NEGATIVE}.cu:{line}" in proc.stderr, proc.stderr


TSAN_REPORT = "WARNING: ThreadSanitizer: data race"


@pytest.mark.parametrize("mode, marker", [
    ("warp_race", "warp"),  # lanes of one warp, no __syncwarp
    ("warp_shfl", "warp"),  # a shuffle synchronises the lanes but orders no memory (PTX: only bar.warp.sync does)
    ("block_race", "block"),  # warps between two __syncthreads, in an order the schedule happens to keep
    ("grid_race", "grid"),  # blocks of one launch: a non-atomic += on one global
    ("cp_async_race", "cp_async"),  # another thread's cp.async lands at its wait; no __syncthreads after it
])
def test_tsan_reports_race(mode, marker):
    (line,) = site_lines(marker, RACES)
    for sched in ("fwd", "rev", "shuffle1"):
        proc = run(build(RACES, tsan=True), mode, env=SCHEDULES[sched])
        assert proc.returncode != 0 and TSAN_REPORT in proc.stderr, (sched, proc.stderr)
        assert f"{RACES}.cu:{line}" in proc.stderr, (sched, proc.stderr)


@pytest.mark.parametrize("mode", ["warp_fixed", "block_fixed", "grid_fixed", "cp_async_fixed"])
def test_tsan_clean_when_fixed(mode):
    # __syncwarp, __syncthreads, atomicAdd (and the launch boundary before the grid's reader), __syncthreads
    for sched in ("fwd", "rev", "shuffle1", "threads2"):
        proc = run(build(RACES, tsan=True), mode, env=SCHEDULES[sched])
        assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, (sched, proc.stderr)


def test_tsan_clean_on_correct_kernels():
    # features.cu: dynamic and static shared memory, several OS threads, a cp.async pipeline. (reduce, matmul and mma
    # use plain __shared__, thread-local storage kept across blocks: TSan sees the blocks race on it.)
    for sched in ("fwd", "shuffle1", "threads2"):
        proc = run(build("features", tsan=True), env=SCHEDULES[sched])
        assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, (sched, proc.stderr)


NVCC = shutil.which("nvcc") or next((p for p in ["/usr/local/cuda/bin/nvcc"] if Path(p).exists()), None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", (*CORRECT, NEGATIVE, BENCH, RACES))
def test_nvcc_compiles(name, arch, tmp_path):
    obj = tmp_path / f"{name}.o"
    subprocess.run([NVCC, f"-arch={arch}", "-std=c++17", f"-I{CSRC}", "-c", str(TESTS / f"{name}.cu"), "-o", str(obj)],
                   check=True, capture_output=True, text=True)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_nvcc_emits_tensor_core_instructions(tmp_path):
    src = str(TESTS / "mma.cu")
    ptx = subprocess.run([NVCC, "-arch=sm_80", "-std=c++17", f"-I{CSRC}", "-ptx", src, "-o", "-"],
                         check=True, capture_output=True, text=True).stdout
    for instr in ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", "mma.sync.aligned.m16n8k16.row.col.f32.f16",
                  "ldmatrix.sync.aligned.m8n8.x4.shared.b16", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"):
        assert instr in ptx
    # The SASS (HMMA, LDSM) of the same kernels is asserted in tests/test_nvcc_gate.py, with tools/sass.py.
