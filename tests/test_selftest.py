"""`python -m fastar selftest`: passes on this build (cpu, and simt when built), covers every op and compiled kernel,
and fails when a kernel is wrong or unchecked."""
import subprocess
import sys

import pytest
import torch

import fastar
from fastar import selftest
from fastar.ops._registry import OPS


def test_selftest_quick_passes():
    proc = subprocess.run([sys.executable, "-m", "fastar", "selftest", "--quick"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest: all passed" in proc.stdout
    for backend in ("cpu", "simt") if fastar.backends()["simt"] else ("cpu",):
        assert f"attention causal dq          {backend}" in proc.stdout, proc.stdout
        assert f"every kernel checked         {backend}" in proc.stdout, proc.stdout
    if not fastar.backends()["cuda"]:
        assert "no CUDA GPU to check" in proc.stdout


@pytest.mark.parametrize("quick", [True, False])
def test_selftest_covers_every_op(quick):
    """Every public op on compiled kernels (fastar.ops._registry.OPS) has a check; that every compiled kernel runs
    in one is the run's last row per backend (test_selftest_fails_on_an_unchecked_kernel)."""
    assert {op for op, *_ in selftest.cases(quick)} == set(OPS)


def test_selftest_fails_on_an_unchecked_kernel(monkeypatch, capsys):
    cases = selftest.cases
    monkeypatch.setattr(selftest, "cases", lambda quick: [c for c in cases(quick) if c[0] == "idxBl_to_fhat"])
    assert selftest.run_checks(quick=True) == 1 + fastar.backends()["simt"]
    out = capsys.readouterr().out
    unchecked = next(line for line in out.splitlines() if line.startswith("every kernel checked         cpu"))
    assert "FAIL (unchecked: fastar::attention_bwd, fastar::attention_decode" in unchecked, out
    assert "fastar::msq_up" not in unchecked  # idxBl_to_fhat's own kernel: checked


class _Wrong:
    """torch.ops.fastar or fastar_simt with compiled kernel `name`'s result changed by `mutate`."""
    def __init__(self, ops, name, mutate):
        self.ops, self.name, self.mutate = ops, name, mutate

    def __getattr__(self, attr):
        kernel = getattr(self.ops, attr)
        return (lambda *args: self.mutate(kernel(*args))) if attr == self.name else kernel


def _neighbour(idx):  # the index next to the right one
    return torch.where(idx > 0, idx - 1, idx + 1)


@pytest.mark.parametrize("op,kernel,mutate,row", [
    ("vq_nearest", "vq_nearest", lambda r: (_neighbour(r[0]), r[1]), "vq_nearest index gap"),
    ("sample_categorical", "sample_categorical", _neighbour, "sample_categorical off draws"),
    ("multi_axis_attention", "multi_axis_attention_fwd", lambda r: (r[0] + 1e-3, r[1]), "multi_axis_attention out")])
def test_selftest_fails_on_a_wrong_kernel(monkeypatch, capsys, op, kernel, mutate, row):
    namespace = fastar._backend.namespace
    monkeypatch.setattr(fastar._backend, "namespace", lambda name: _Wrong(namespace(name), kernel, mutate))
    with pytest.raises(SystemExit) as exit_:
        selftest.main(["--quick", "--ops", op])
    out = capsys.readouterr().out
    assert exit_.value.code == 1, out
    for backend in ("cpu", "simt") if fastar.backends()["simt"] else ("cpu",):
        assert next(line for line in out.splitlines() if line.startswith(f"{row:<28} {backend}")).endswith("FAIL"), out
    assert "FAILED" in out


def test_selftest_bench_without_gpu_says_so(capsys):
    if fastar.backends()["cuda"]:
        pytest.skip("a CUDA build: --bench times the GPU")
    with pytest.raises(SystemExit) as exit_:
        selftest.main(["--quick", "--bench", "--ops", "idxBl_to_fhat"])
    assert exit_.value.code == 0
    assert "no CUDA GPU, nothing to time" in capsys.readouterr().out


def test_selftest_refuses_unknown_ops(capsys):
    """--ops with a typo once checked nothing and passed."""
    with pytest.raises(SystemExit) as e:
        selftest.main(["--ops", "attention", "atention"])
    assert e.value.code == 2 and "--ops: no check of atention; the ops: attention," in capsys.readouterr().err


def test_selftest_fails_without_compiled_kernels(monkeypatch, capsys):
    """fastar._C missing or failing to load (e.g. built against another torch): a failure, not 'all passed' over
    zero rows."""
    monkeypatch.setattr(selftest, "backends_to_check", lambda: [])
    with pytest.raises(SystemExit) as e:
        selftest.main(["--quick"])
    assert e.value.code == 1 and "FAIL: no compiled kernels to check" in capsys.readouterr().out


def test_a_built_module_that_fails_to_load_says_so(tmp_path, monkeypatch):
    """A module that is there but does not load (fastar._C beside another torch: a missing libc10_cuda.so) is told
    apart from one not built, with a warning at import and the likely cause."""
    from fastar import _backend
    (tmp_path / "fastar_broken_ext.py").write_text("raise ImportError('libc10_cuda.so: cannot open shared object')")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match=r"fastar_broken_ext is built but failed to load \(libc10_cuda.so"):
        module, error = _backend._load("fastar_broken_ext")
    assert module is None and "--no-build-isolation" in str(error)
    module, error = _backend._load("fastar_not_there_at_all")
    assert module is None and isinstance(error, ModuleNotFoundError)
