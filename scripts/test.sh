#!/usr/bin/env bash
# The test command of README.md (and CI's first stage): set up (scripts/setup.sh), then the whole pytest suite on the
# CPU in FASTAR_TEST_JOBS pytest-xdist workers (default 2: 453 -> 362 s on a 2-core Zen 4; many tests are
# single-threaded Python or the simt emulator), printing the 25 slowest tests. The workers' OpenMP threads sleep
# when idle (OMP_WAIT_POLICY=PASSIVE unless set): two workers of two spinning threads on two cores spent half of
# the suite spinning (Zen 4: 409 -> 233 s wall, 788 -> 441 worker-seconds).
set -euo pipefail
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
FASTAR_REQUIRE_SIMT=1 .venv/bin/python -m pytest tests -q -p no:cacheprovider -n "${FASTAR_TEST_JOBS:-2}" --durations=25 "$@"
