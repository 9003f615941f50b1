#!/usr/bin/env bash
# Creates .venv (torch==2.13.0 from pip's configured index, the CPU wheel on this project's machines, and what the
# tests and benchmarks use) and builds fastar into it, with the simt test backend. Idempotent: a second run only
# rebuilds what changed. Called by test.sh and bench.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
source scripts/ccache_env.sh
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }  # keeps $?

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# cuobjdump + nvdisasm: the SASS checks of the CUDA kernels (the toolkit here ships neither).
quiet .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 numpy pytest pytest-benchmark pytest-xdist ninja cmake \
  matplotlib faiss-cpu tqdm pillow scikit-learn tokenizers nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
FASTAR_SIMT=1 quiet .venv/bin/pip install -q --disable-pip-version-check --no-build-isolation -e .
.venv/bin/python -c "import fastar; print('fastar', fastar.__version__, 'backends', fastar.backends())"
