"""SASS of a kernel file, with the cuobjdump/nvdisasm that the triton wheel carries (the CUDA toolkit here has none).

    python tools/sass.py csrc/kernels/quantize/vq_nearest.cu --arch 90 [--kernel vq_nearest_kernel]

In Python: has_instruction(cu_file, kernel, arch, "HMMA") tells whether a kernel really uses an instruction.
Tools are looked for in $FASTAR_CUDA_BIN, this Python's triton, the CUDA venv's triton
($HOME/.cache/fastar/cuda-venv), the nvidia-cuda-cuobjdump / -nvdisasm pip packages, then PATH.
"""
import argparse
import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nvcc_gate import demangle, object_for  # noqa: E402

FUNCTION = re.compile(r"^\s*Function : (\S+)", re.M)


def _candidate_dirs():
    if os.environ.get("FASTAR_CUDA_BIN"):
        yield os.environ["FASTAR_CUDA_BIN"]
    for name in ("triton", "nvidia"):
        spec = importlib.util.find_spec(name)
        for base in (spec.submodule_search_locations or []) if spec else []:
            yield os.path.join(base, "backends", "nvidia", "bin") if name == "triton" else os.path.join(base, "cu13", "bin")
    venv = os.environ.get("FASTAR_CUDA_VENV", os.path.expanduser("~/.cache/fastar/cuda-venv"))
    yield from glob.glob(f"{venv}/lib/python3*/site-packages/triton/backends/nvidia/bin")
    yield from glob.glob(f"{venv}/lib/python3*/site-packages/nvidia/cu13/bin")
    for tool in ("cuobjdump", "nvdisasm"):
        if shutil.which(tool):
            yield os.path.dirname(shutil.which(tool))


@functools.cache
def tool_dir() -> str | None:
    """A directory holding both cuobjdump and nvdisasm (cuobjdump -sass runs nvdisasm from PATH)."""
    for d in _candidate_dirs():
        if all(os.access(os.path.join(d, t), os.X_OK) for t in ("cuobjdump", "nvdisasm")):
            return d
    return None


@functools.cache
def dump(cu_file: str, arch: int) -> dict[str, str]:
    """{demangled kernel name: SASS text} of every kernel in cu_file compiled for sm_<arch> (with the nvcc gate's
    flags; its object when the gate already compiled the file in this process)."""
    tools = tool_dir()
    if tools is None:
        raise FileNotFoundError("sass: need cuobjdump + nvdisasm")
    obj = object_for(Path(cu_file), arch)
    env = {**os.environ, "PATH": f"{tools}:{os.environ.get('PATH', '')}"}
    text = subprocess.run([f"{tools}/cuobjdump", "-sass", "-arch", f"sm_{arch}", str(obj)], check=True,
                          capture_output=True, text=True, env=env).stdout
    parts = FUNCTION.split(text)  # [preamble, name1, body1, name2, body2, ...]
    names, bodies = parts[1::2], parts[2::2]
    return dict(zip(demangle(names), bodies))


def kernel_sass(cu_file, kernel: str, arch: int) -> str:
    """SASS of the one kernel whose demangled name contains `kernel`."""
    found = {name: body for name, body in dump(str(cu_file), arch).items() if kernel in name}
    if len(found) != 1:
        raise KeyError(f"sass: {len(found)} kernels of {cu_file} match {kernel!r}: {sorted(found)}")
    return next(iter(found.values()))


def has_instruction(cu_file, kernel: str, arch: int, opcode: str) -> bool:
    """Whether the kernel's SASS for sm_<arch> has an instruction starting with opcode (e.g. HMMA, LDSM, FFMA)."""
    return re.search(rf"\b{re.escape(opcode)}[.\s]", kernel_sass(cu_file, kernel, arch)) is not None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cu_file", type=Path)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--kernel", default="", help="substring of the demangled name; default: every kernel")
    args = ap.parse_args()
    for name, body in dump(str(args.cu_file.resolve()), args.arch).items():
        if args.kernel in name:
            print(f"// {name} (sm_{args.arch})\n{body}")


if __name__ == "__main__":
    main()
