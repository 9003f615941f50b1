"""What the tools that run an official codebase beside fastar share (tools/official_*_patch.py): the official
repository on sys.path with .cuda() as the identity (CPU only), scipy stubbed where missing (the official trainers'
truncnorm mask-ratio generators; sampling never calls it), the machine line every figure carries, and interleaved
timing rounds. The official code is read from the repository given, never copied into fastar."""
import os
import statistics
import sys
import time
import types

import torch

import fastar

LINEAR = os.environ.get("LINEAR", "0") == "1"  # every tool's opt-in nn.Linear row (fastar.patch.*(linear=))


def load(repo, module):
    """Import `module` (e.g. "models.mar") from the official repository at `repo`."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        stats = types.ModuleType("scipy.stats")
        stats.truncnorm = lambda *a, **k: None
        sys.modules.setdefault("scipy", types.ModuleType("scipy")).stats = stats
        sys.modules["scipy.stats"] = stats
    sys.path.insert(0, os.path.abspath(repo))
    return __import__(module, fromlist=["_"])


def machine():
    """CPU model, torch, fastar and the ISA its CPU kernels run, torch threads (THREADS, default 1, set here)."""
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    cpu = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")][0]
    return (f"CPU {cpu}, torch {torch.__version__}, fastar {fastar.__version__} (ISA "
            f"{fastar.build_info()['cpu_isa']}), {torch.get_num_threads()} thread(s)")


def rounds(run, patch, n):
    """n interleaved rounds of run(r) unpatched then under patch() (undone after): prints each round's wall and CPU
    time with the load average, then the best and the median of each and their ratios (baseline: the unpatched
    official code)."""
    times = {"official": [], "patched": []}  # (wall, CPU) per round
    for r in range(n):
        for name in ("official", "patched"):
            if name == "patched":
                patch()
            load, t0, c0 = os.getloadavg(), time.perf_counter(), time.process_time()
            try:
                run(r)
            finally:
                if name == "patched":
                    fastar.patch.undo()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            times[name].append((wall, cpu))
            print(f"round {r} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU (load before {load}, after "
                  f"{os.getloadavg()})", flush=True)
    for stat, f in (("best", min), ("median", statistics.median)):
        (ow, oc), (pw, pc) = ([f(t[i] for t in times[name]) for i in (0, 1)] for name in ("official", "patched"))
        print(f"{stat} wall: official {ow:.2f} s, patched {pw:.2f} s, {ow / pw:.2f}x; {stat} CPU time official "
              f"{oc:.2f} s, patched {pc:.2f} s, {oc / pc:.2f}x (baseline: the unpatched official code)")
