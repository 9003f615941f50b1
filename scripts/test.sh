#!/usr/bin/env bash
# The test command of README.md (and CI's first stage): set up (scripts/setup.sh), then the whole pytest suite on the
# CPU, printing the 25 slowest tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
FASTAR_REQUIRE_SIMT=1 .venv/bin/python -m pytest tests -q -p no:cacheprovider --durations=25 "$@"
