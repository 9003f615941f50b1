"""Builds fastar's extensions by driving CMakeLists.txt with ninja (the CMake-extension pattern of vLLM).

Environment: FASTAR_CUDA=auto|on|off, FASTAR_SIMT=0|1 (test backend), TORCH_CUDA_ARCH_LIST (default "8.0;9.0"),
MAX_JOBS (default: all cores), FASTAR_BUILD_TYPE (default Release), FASTAR_BUILD_ISOLATION=1 (build inside pip's
isolated environment anyway: see isolated_torch).
"""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
SIMT = os.environ.get("FASTAR_SIMT", "0") in ("1", "on", "ON")


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def isolated_torch():
    """The torch of a build isolation's temporary environment (pip's pip-build-env-*, pypa build's build-env-*), or
    None. An extension compiled against it fails to load beside another torch (pip fetches the newest, often a CUDA
    build): `pip install .` then succeeds and fastar._C cannot be imported."""
    import torch
    return torch if any(part in torch.__file__ for part in ("pip-build-env-", "build-env-")) else None


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        if getattr(self, "_cmake_done", False):  # one CMake build makes every module
            return
        self._cmake_done = True
        torch = isolated_torch()
        if torch is not None and os.environ.get("FASTAR_BUILD_ISOLATION") != "1":
            raise SystemExit(f"fastar: pip's build isolation installed torch {torch.__version__} into a temporary "
                             f"environment to build against; fastar's kernels must compile against the torch they "
                             f"will run with. Install with `pip install --no-build-isolation .` (torch, cmake and "
                             f"ninja in your environment), or set FASTAR_BUILD_ISOLATION=1 to build anyway.")
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()  # the fastar/ package dir
        # One persistent build dir per Python environment, so rebuilds are incremental (pip's temp dir is not).
        env_key = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]
        build_dir = ROOT / "build" / f"cmake-{env_key}"
        build_dir.mkdir(parents=True, exist_ok=True)
        version = {}
        exec((ROOT / "fastar" / "_version.py").read_text(), version)
        args = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DFASTAR_OUTPUT_DIR={out_dir}",
            f"-DFASTAR_VERSION={version['__version__']}",
            f"-DFASTAR_CUDA={os.environ.get('FASTAR_CUDA', 'auto')}",
            f"-DFASTAR_SIMT={'ON' if SIMT else 'OFF'}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('FASTAR_BUILD_TYPE', 'Release')}",
        ]
        if "TORCH_CUDA_ARCH_LIST" in os.environ:
            args.append(f"-DTORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", *args], check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


modules = ["fastar._C"] + (["fastar._simt"] if SIMT else [])
setup(ext_modules=[CMakeExtension(m) for m in modules], cmdclass={"build_ext": CMakeBuild})
