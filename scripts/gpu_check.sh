#!/usr/bin/env bash
# The first run on a GPU machine, one command, about 5 minutes on an H200 with 16 cores, no network:
#   scripts/gpu_check.sh OUTDIR
# 1 records the machine and tools; 2 finds the GPU (and stops, saying so, where there is none); 3 builds fastar for
# that GPU's arch only (FASTAR_CUDA=on, editable install into PYTHON's environment, no dependency downloaded);
# 4 runs the cuda backend of the test suite; 5 `fastar selftest --bench` (every CUDA kernel against the float64
# reference, then CUDA-event timings against SDPA / flex_attention / flash-attn / FAISS-GPU where installed).
# Logs and summary.json go to OUTDIR. Needs a CUDA build of torch, nvcc (CUDA_HOME), cmake and ninja; a missing
# Python package can only come as a local wheel. Env: PYTHON (default python3), MAX_JOBS (default: all cores),
# FASTAR_TEST_JOBS (pytest-xdist workers for the tests, default 4), FASTAR_GPU_CHECK_DEADLINE (seconds: the tests and
# the selftest shorten their limits to end by then, the selftest keeping 150 s; for a machine lent for a few minutes).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: scripts/gpu_check.sh OUTDIR" >&2; exit 2; }
OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create $1" >&2; exit 2; }
PY=${PYTHON:-python3}
start=$SECONDS
declare -A STATUS SECS

progress() { echo "gpu_check [$(( SECONDS - start )) s] $*"; }

# limit DEFAULT_S RESERVE_S: DEFAULT_S, or less so as to end RESERVE_S before FASTAR_GPU_CHECK_DEADLINE (at least 30).
limit() {
  local deadline=${FASTAR_GPU_CHECK_DEADLINE:-0} s=$1
  if [ "$deadline" -gt 0 ]; then
    local left=$(( deadline - (SECONDS - start) - $2 ))
    [ "$left" -lt "$s" ] && s=$left
    [ "$s" -lt 30 ] && s=30
  fi
  echo "$s"
}

# step NAME TIMEOUT_S CMD...: runs CMD with its output in OUTDIR/NAME.log, records exit status and seconds.
step() {
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  progress "$name: $* (log: $OUT/$name.log, limit ${limit} s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  STATUS[$name]=$?
  SECS[$name]=$(( SECONDS - t0 ))
  progress "$name: exit ${STATUS[$name]} after ${SECS[$name]} s"
  tail -n 3 "$OUT/$name.log" | sed 's/^/    /'
}

# summary.json: the machine, each step's exit status and seconds, and the verdict.
summary() {
  local verdict=$1 steps="" name
  for name in "${!STATUS[@]}"; do
    steps+="\"$name\": {\"exit\": ${STATUS[$name]}, \"seconds\": ${SECS[$name]}}, "
  done
  "$PY" - "$OUT" "$verdict" "{${steps%, }}" <<'PY'
import json, os, sys
out, verdict, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
machine = json.load(open(f"{out}/machine.json")) if os.path.exists(f"{out}/machine.json") else {}
json.dump({"verdict": verdict, "machine": machine, "steps": steps}, open(f"{out}/summary.json", "w"), indent=1)
PY
  progress "$verdict; summary in $OUT/summary.json"
}

# 1. Machine and tools: what the figures will be quoted with.
step machine 120 "$PY" - "$OUT/machine.json" <<'PY'
import json, os, platform, shutil, subprocess, sys
info = {"python": sys.version.split()[0], "host": platform.node(), "cores": os.cpu_count()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, gpus=torch.cuda.device_count(),
                gpu=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                capability=[".".join(map(str, torch.cuda.get_device_capability(i)))
                            for i in range(torch.cuda.device_count())])
except Exception as e:  # recorded: the next step says what is missing
    info["torch_error"] = repr(e)
cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
nvcc = shutil.which("nvcc") or (f"{cuda_home}/bin/nvcc" if os.path.exists(f"{cuda_home}/bin/nvcc") else None)
info["nvcc"] = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1] \
    if nvcc else None
info["cmake"], info["ninja"] = shutil.which("cmake"), shutil.which("ninja")
if shutil.which("nvidia-smi"):
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
PY
[ "${STATUS[machine]}" -eq 0 ] || { summary "failed: $PY cannot describe the machine"; exit 1; }

# 2. The GPU: without one there is nothing more this script can do.
ARCH=$("$PY" -c "import torch; assert torch.cuda.is_available(); print('%d.%d' % torch.cuda.get_device_capability(0))" 2>/dev/null)
if [ -z "$ARCH" ]; then
  echo "gpu_check: no CUDA GPU is present (torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null), torch.cuda.is_available() is False): stopping before the build; run this on a GPU machine"
  summary "no GPU present"
  exit 3
fi
progress "GPU $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'), sm_${ARCH/./}"
MISSING=$("$PY" - <<'PY'
import os, shutil, torch
cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
need = {"a CUDA build of torch": torch.version.cuda, "cmake": shutil.which("cmake"), "ninja": shutil.which("ninja"),
        "nvcc (CUDA_HOME)": shutil.which("nvcc") or os.path.exists(f"{cuda_home}/bin/nvcc")}
print(", ".join(k for k, v in need.items() if not v))
PY
)
[ -z "$MISSING" ] || { echo "gpu_check: missing $MISSING"; summary "failed: missing $MISSING"; exit 1; }

# 3. Build for this GPU only: one arch keeps the build to a few minutes on 16 cores.
cd "$ROOT"
step build 360 env FASTAR_CUDA=on FASTAR_SIMT=0 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -e "$ROOT"
[ "${STATUS[build]}" -eq 0 ] || { summary "failed: build (see build.log)"; exit 1; }

# 3b. The build itself: one shared C++ runtime, and C++ errors reaching Python (the first GPU machine's build held a
# static libstdc++ and crashed on every error message).
step build_checks 120 "$PY" -m pytest tests/test_build.py -q -p no:cacheprovider

# 4. The cuda backend of the test suite (test ids carry the backend), and the CUDA-only test file. Idle OpenMP
# threads sleep, as in scripts/test.sh: the workers share the cores.
step tests "$(limit 300 150)" env OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" "$PY" -m pytest tests -q -k "cuda" -p no:cacheprovider -n "${FASTAR_TEST_JOBS:-4}" \
  --junitxml="$OUT/tests.xml"

# 5. Every CUDA kernel against the reference, then timings against the peers.
step selftest "$(limit 240 5)" "$PY" -m fastar selftest --bench

fail=""
for name in build_checks tests selftest; do [ "${STATUS[$name]}" -eq 0 ] || fail+=" $name"; done
summary "${fail:+failed:$fail}${fail:-passed}"
[ -z "$fail" ]
