#!/usr/bin/env bash
# The test command of README.md: set up (scripts/setup.sh), then the whole pytest suite on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
FASTAR_REQUIRE_SIMT=1 .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
