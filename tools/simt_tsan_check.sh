#!/usr/bin/env bash
# The simt tests marked `sanitize` (the kernels' own tests at the small shapes that reach every code path) with
# fastar._simt built under ThreadSanitizer (csrc/simt/tsan.h: every CUDA thread a TSan fiber, ordered only as CUDA
# orders them), in its own build dir (build/simt-tsan, through ccache). Fails on any TSan report, which is written
# to build/simt-tsan/reports/. Extra arguments go to pytest; test ids or paths among them replace `tests`
# (all 232 tests took 67 min on 2 cores: one per test function, ~37, took 9.5 min).
#   tools/simt_tsan_check.sh [pytest args]   (env: PYTHON, default .venv/bin/python; MAX_JOBS, build jobs, default 2;
#                                             JOBS, pytest-xdist workers, default 2)
source "$(dirname "$0")/simt_sanitizer_build.sh" simt-tsan FASTAR_SIMT_TSAN simt_tsan_check

# As tools/simt_sanitized_tests.sh: python is not instrumented, so the TSan runtime is preloaded (tests/conftest.py
# loads $FASTAR_SANITIZED_SIMT and drops LD_PRELOAD in the pytest-xdist workers). Only the kernels and the emulator
# are instrumented, so only races between CUDA threads (and with the glue around a launch) can be reported; pytest
# would capture a report into a passing test's output, so they go to files.
REPORTS=$BUILD/reports
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export LD_PRELOAD="$(gcc -print-file-name=libtsan.so) $(gcc -print-file-name=libstdc++.so)"
export TSAN_OPTIONS="log_path=$REPORTS/tsan:exitcode=0${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
# One intra-op thread: torch's OpenMP runtime is not instrumented, so TSan sees its workers' memcpy race with the
# caller (false reports in TensorIterator); the kernels' threads are fibers either way.
export OMP_NUM_THREADS=1
export FASTAR_REQUIRE_SIMT=1 FASTAR_SANITIZED_SIMT=$SO
cd "$ROOT"
"$PY" -m pytest -n "${JOBS:-2}" -q -m sanitize -k simt --durations=10 -p no:cacheprovider "${@:-tests}"
if compgen -G "$REPORTS/tsan*" > /dev/null; then
  grep -h -A3 '^WARNING: ThreadSanitizer' "$REPORTS"/tsan* | head -100
  echo "simt_tsan_check: $(cat "$REPORTS"/tsan* | grep -c '^WARNING: ThreadSanitizer') reports in $REPORTS"
  exit 1
fi
echo "simt_tsan_check: no race reported, in $((SECONDS - start)) s"
