#!/usr/bin/env bash
# The main command of README.md: set up, run every benchmark, render benchmarks/results/latest.{json,md,png}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
mkdir -p benchmarks/results
.venv/bin/python -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json \
  --benchmark-columns=min,median,rounds -p no:cacheprovider "$@"
.venv/bin/python -m benchmarks.report benchmarks/results/latest.json
