"""`python -m fastar selftest`: passes on this build (cpu, and simt when built) and fails when a kernel is wrong."""
import subprocess
import sys

import pytest

import fastar
from fastar import selftest


def test_selftest_quick_passes():
    proc = subprocess.run([sys.executable, "-m", "fastar", "selftest", "--quick"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest: all passed" in proc.stdout
    for backend in ("cpu", "simt") if fastar.backends()["simt"] else ("cpu",):
        assert f"attention causal dq          {backend}" in proc.stdout, proc.stdout
    if not fastar.backends()["cuda"]:
        assert "no CUDA GPU to check" in proc.stdout


def test_selftest_fails_on_a_wrong_kernel(monkeypatch, capsys):
    real = fastar.ops.vq_nearest

    def off_by_one(x, codebook, **kw):  # a kernel that picks the next code
        idx, dist = real(x, codebook, **kw)
        return (idx + 1) % codebook.shape[0], dist

    monkeypatch.setattr(fastar.ops, "vq_nearest", off_by_one)
    with pytest.raises(SystemExit) as exit_:
        selftest.main(["--quick", "--ops", "vq_nearest"])
    out = capsys.readouterr().out
    assert exit_.value.code == 1, out
    assert "vq_nearest index gap         cpu" in out and "FAIL" in out and "FAILED" in out


def test_selftest_bench_without_gpu_says_so(capsys):
    if fastar.backends()["cuda"]:
        pytest.skip("a CUDA build: --bench times the GPU")
    with pytest.raises(SystemExit) as exit_:
        selftest.main(["--quick", "--bench", "--ops", "idxBl_to_fhat"])
    assert exit_.value.code == 0
    assert "no CUDA GPU, nothing to time" in capsys.readouterr().out
