#!/usr/bin/env bash
# The simt tests marked `sanitize` (the kernels' own tests at the small shapes that reach every code path) with
# fastar._simt built under AddressSanitizer + UndefinedBehaviorSanitizer, in its own build dir
# (build/simt-sanitized, compiled through ccache); the regular build is untouched. Extra arguments go to pytest.
#   tools/simt_sanitized_tests.sh [pytest args]   (env: PYTHON, default .venv/bin/python; MAX_JOBS, build jobs,
#                                                  default 2; JOBS, pytest-xdist workers, default 2)
source "$(dirname "$0")/simt_sanitizer_build.sh" simt-sanitized FASTAR_SIMT_SANITIZE simt_sanitized_tests

# python itself is not instrumented, so the ASan runtime must be loaded first; CPython's arenas look like leaks.
# libstdc++ too: ASan resolves its __cxa_throw interceptor at start-up, and python does not link libstdc++.
# tests/conftest.py loads $FASTAR_SANITIZED_SIMT as fastar._simt in each process before fastar is imported, and
# drops LD_PRELOAD in the pytest-xdist workers (the tools tests run nvcc and g++, which must not get it). The tests
# run in JOBS workers (default 2): they are single-threaded, so two workers halve the stage on two cores.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # the workers share the cores: see scripts/test.sh
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 FASTAR_REQUIRE_SIMT=1 FASTAR_SANITIZED_SIMT=$SO
cd "$ROOT"
"$PY" -m pytest -n "${JOBS:-2}" -q -m sanitize -k simt --durations=10 -p no:cacheprovider tests "$@"
echo "simt_sanitized_tests: passed in $((SECONDS - start)) s"
