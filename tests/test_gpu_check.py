"""scripts/gpu_check.sh on a machine without a GPU: it records the machine, then stops before the build saying that
no GPU is present (exit 3), so the first GPU minutes go to the GPU, not to fixing the script."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would build and run")
def test_gpu_check_without_gpu_says_so(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no CUDA GPU is present" in proc.stdout and "stopping before the build" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"] == "no GPU present"
    assert summary["steps"]["machine"]["exit"] == 0 and summary["machine"]["gpus"] == 0
    assert (tmp_path / "out" / "machine.log").exists() and not (tmp_path / "out" / "build.log").exists()


def test_gpu_check_usage():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: scripts/gpu_check.sh OUTDIR" in proc.stderr
