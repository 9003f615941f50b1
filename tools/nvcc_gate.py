"""The nvcc gate: compile every csrc/kernels/**/*.cu for sm_80 and sm_90 and read ptxas's resource report.

    python tools/nvcc_gate.py [--out build/nvcc_gate] [--archs 80,90] [files.cu ...]

Writes resources.md and resources.json (kernel, arch, registers, shared memory, spill bytes, stack frame) into
--out and exits 1 when a kernel spills or uses a stack frame, unless ALLOWED names it with a reason: a spill on
the GPU is a silent slowdown that no CPU test can see.
"""
import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = (80, 90)

# Kernel name (as in the table, a substring match) -> why its spills or stack frame are acceptable.
ALLOWED: dict[str, str] = {}

ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_(\d+)a?'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def find_nvcc() -> str | None:
    for candidate in (os.environ.get("CUDA_HOME", "") + "/bin/nvcc", shutil.which("nvcc") or "",
                      "/usr/local/cuda/bin/nvcc"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


# Compiled objects of this process, {(file, archs): (object, ptxas -v output)}: tools/sass.py disassembles the
# gate's objects rather than compiling each file again (the gate and the SASS tests run in one pytest process).
# The gate compiles files on a thread pool: the directory and the object names are taken under a lock (two threads
# creating the directory would let the first one's be collected, and deleted, under its compile).
_compiled: dict[tuple[Path, tuple[int, ...]], tuple[Path, str]] = {}
_object_dir: tempfile.TemporaryDirectory | None = None
_names = itertools.count()
_lock = threading.Lock()
# nvcc runs through ccache when it is installed (as the builds do, scripts/ccache_env.sh): ccache keeps nvcc's output,
# the ptxas report included, beside the object, so an unchanged kernel costs a cache hit instead of a compile. Paths
# under the repository hash as relative ones, so another clone's results are hits.
CCACHE = ["ccache"] if shutil.which("ccache") else []
CCACHE_ENV = {"CCACHE_BASEDIR": str(ROOT), "CCACHE_NOHASHDIR": "1"} if CCACHE else {}


def compile_cu(nvcc: str, cu: Path, archs) -> tuple[Path, str]:
    """(object holding one cubin per arch, ptxas -v output) of one file, compiled once per process; raises with
    nvcc's output on a compile error."""
    global _object_dir
    key = (Path(cu).resolve(), tuple(archs))
    if key not in _compiled:
        with _lock:
            if _object_dir is None:
                _object_dir = tempfile.TemporaryDirectory(prefix="nvcc_gate_")  # removed when the process exits
            obj = Path(_object_dir.name) / f"{next(_names)}-{key[0].stem}.o"
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        cmd = [*CCACHE, nvcc, "-O3", "-std=c++17", f"-I{ROOT / 'csrc'}", *gencode, "-Xptxas", "-v", "-c", str(key[0]),
               "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CCACHE_ENV})
        if r.returncode:
            raise RuntimeError(f"nvcc failed on {cu}:\n{r.stdout}{r.stderr}")
        _compiled[key] = obj, r.stdout + r.stderr
    return _compiled[key]


def object_for(cu: Path, arch: int) -> Path:
    """An object of `cu` holding sm_<arch> code: the gate's when it compiled the file for that arch, else a new one."""
    cu = Path(cu).resolve()
    cached = next((obj for (f, archs), (obj, _) in list(_compiled.items()) if f == cu and arch in archs), None)
    if cached is not None:
        return cached
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    return compile_cu(nvcc, cu, (arch,))[0]


def parse(ptxas: str, source: str) -> list[dict]:
    """One row per (kernel, arch) entry function in a ptxas -v report."""
    rows, row = [], None
    for line in ptxas.splitlines():
        if m := ENTRY.search(line):
            row = {"source": source, "mangled": m[1], "arch": int(m[2]), "registers": 0, "barriers": 0,
                   "smem_bytes": 0, "stack_bytes": 0, "spill_store_bytes": 0, "spill_load_bytes": 0}
            rows.append(row)
        elif row and (m := FRAME.search(line)):
            row["stack_bytes"], row["spill_store_bytes"], row["spill_load_bytes"] = map(int, m.groups())
        elif row and (m := USED.search(line)):
            row["registers"], row["barriers"], row["smem_bytes"] = (int(g or 0) for g in m.groups())
    return rows


def demangle(names: list[str]) -> list[str]:
    """Readable kernel names without the parameter list; the anonymous namespace is dropped."""
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    if len(out) != len(names):
        return names
    short = []
    for name in out:
        name = name.removeprefix("void ").replace("(anonymous namespace)::", "")
        depth, cut = 0, len(name)
        for i, ch in enumerate(name):  # the parameter list is the first '(' outside template brackets
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        short.append(name[:cut])
    return short


def problems(row: dict) -> str:
    bad = [f"{k} {row[k]}" for k in ("spill_store_bytes", "spill_load_bytes", "stack_bytes") if row[k]]
    return ", ".join(bad)


def markdown(rows: list[dict]) -> str:
    lines = ["| kernel | arch | registers | smem bytes | spill stores | spill loads | stack | status |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['kernel']}` | sm_{r['arch']} | {r['registers']} | {r['smem_bytes']} | "
                     f"{r['spill_store_bytes']} | {r['spill_load_bytes']} | {r['stack_bytes']} | {r['status']} |")
    return "\n".join(lines) + "\n"


def run_gate(files, archs, out: Path) -> tuple[list[dict], list[str]]:
    """Compile, write the table, return (rows, failures)."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        reports = list(pool.map(lambda cu: compile_cu(nvcc, cu, archs)[1], files))
    rows = [r for cu, rep in zip(files, reports) for r in parse(rep, str(cu.relative_to(ROOT)))]
    for r, name in zip(rows, demangle([r["mangled"] for r in rows])):
        r["kernel"] = name
    rows.sort(key=lambda r: (r["source"], r["kernel"], r["arch"]))
    failures = []
    for r in rows:
        bad = problems(r)
        reason = next((why for key, why in ALLOWED.items() if key in r["kernel"]), None)
        r["status"] = "ok" if not bad else f"allowed: {reason}" if reason else f"FAIL: {bad}"
        if bad and not reason:
            failures.append(f"{r['kernel']} sm_{r['arch']}: {bad}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "resources.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "resources.md").write_text(markdown(rows))
    return rows, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="default: every csrc/kernels/**/*.cu")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "nvcc_gate")
    ap.add_argument("--archs", default=",".join(map(str, ARCHS)))
    args = ap.parse_args()
    files = [f.resolve() for f in args.files] or sorted((ROOT / "csrc" / "kernels").rglob("*.cu"))
    rows, failures = run_gate(files, [int(a) for a in args.archs.split(",")], args.out)
    sys.stdout.write(markdown(rows))
    print(f"{len(rows)} kernel builds from {len(files)} files; table in {args.out}")
    if failures:
        print("nvcc gate FAILED (spills or stack; fix, or list in ALLOWED with a reason):\n  " + "\n  ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
