#!/usr/bin/env bash
# The CUDA build check (no GPU needed): install fastar into a venv holding a CUDA build of torch, then import it
# and require the CUDA backend and a CUDA kernel of every op in the dispatcher.
#   tools/cuda_build_check.sh
# Env: FASTAR_CUDA_VENV (default $HOME/.cache/fastar/cuda-venv, outside the clone so CI runs reuse it; created
# when missing or not a CUDA torch), CUDA_HOME (default /usr/local/cuda-13.0), MAX_JOBS (default 2),
# TORCH_CUDA_ARCH_LIST (default 9.0: one arch is what this check needs; sm_80 is compiled by the nvcc gate test).
# Compiles go through ccache (scripts/ccache_env.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${FASTAR_CUDA_VENV:-$HOME/.cache/fastar/cuda-venv}
# The toolkit root, not the directory of the nvcc wrapper on PATH, or linking finds no libcudart.
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
export MAX_JOBS=${MAX_JOBS:-2} FASTAR_CUDA=on TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
start=$SECONDS
source "$ROOT/scripts/ccache_env.sh"

if ! "$VENV/bin/python" -c "import torch, cmake, ninja; assert torch.version.cuda" 2>/dev/null; then
  echo "cuda_build_check: creating $VENV (torch 2.14.1, CUDA; ~5.5 GB)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 numpy ninja cmake pybind11 setuptools pytest
fi
echo "cuda_build_check: venv ready after $((SECONDS - start)) s"

# ninja and cmake of the venv, not whatever is on PATH.
PATH="$VENV/bin:$PATH" "$VENV/bin/pip" install -q --no-build-isolation --no-deps "$ROOT"
echo "cuda_build_check: built and installed after $((SECONDS - start)) s"

# Import from outside the clone, so the installed package is the one tested.
cd "$(mktemp -d)"
"$VENV/bin/python" - <<'PY'
import os

import torch
import fastar

info = fastar.build_info()
assert fastar.backends()["cuda"], f"fastar.backends() = {fastar.backends()}"
assert info["cuda_archs"] == os.environ["TORCH_CUDA_ARCH_LIST"], info
schemas = [s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("fastar::")]
assert schemas, "no fastar ops registered"
# Ops whose CUDA kernel is not written yet, each with its reason; on CUDA tensors they raise (no fallback).
CPU_ONLY = {op: "the Winograd 3x3 convolution is a CPU kernel: on a GPU cuDNN's convolutions are the fast path, and "
               "fastar.ops.conv3x3 declines to F.conv2d there" for op in ("fastar::conv3x3", "fastar::conv3x3_weights")}
CPU_ONLY["fastar::mlp"] = ("the MLP kernel keeps a narrow MLP's hidden activations in a CPU core's cache: on a GPU "
                           "cuBLASLt's GEMMs with a GELU epilogue are the path, and fastar.ops.mlp declines to them")
CPU_ONLY["fastar::linear_weight_grad"] = ("a Linear's weight gradient on the CPU's float32 GEMM library (oneDNN where "
                                          "MKL takes its AVX2 path): on a GPU torch.mm's cuBLAS is the path, and "
                                          "fastar.ops.linear_weight_grad declines to it")
CPU_ONLY["fastar::gelu_with_derivative"] = ("the GELU and its derivative in one pass, so a CPU's training backward skips "
                                            "gelu_backward's math: on a GPU torch's gelu and gelu_backward run at memory "
                                            "speed, and fastar.ops.gelu_with_derivative declines to them")
missing = {op for op in schemas if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")}
assert missing == set(CPU_ONLY), (f"ops without a CUDA kernel: {sorted(missing)}; known CPU-only: {CPU_ONLY} "
                                  "(add a reason for a new one, remove an op once its CUDA kernel lands)")
print(f"cuda_build_check: ok, torch {torch.__version__}, fastar {info}, CUDA kernels for {sorted(set(schemas) - missing)}, CPU-only {sorted(missing)}")
PY
echo "cuda_build_check: passed in $((SECONDS - start)) s"
