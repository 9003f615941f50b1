#!/usr/bin/env bash
# The main command of README.md: set up, run every benchmark, render benchmarks/results/latest.{json,md,png},
# then sample from the VAR model. Prints each part's time (and the slowest benchmarks); budget: 20 min on a 2-core
# AVX2-only machine with every model. Extra arguments go to the benchmarks' pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TIMED_BY=bench
source scripts/timing.sh

timed setup bash scripts/setup.sh
mkdir -p benchmarks/results
timed benchmarks .venv/bin/python -m pytest benchmarks --benchmark-only \
  --benchmark-json=benchmarks/results/latest.json --benchmark-columns=min,median,rounds -p no:cacheprovider \
  --durations=25 "$@"
timed report .venv/bin/python -m benchmarks.report benchmarks/results/latest.json
# Sampling from the models: VAR-d16 with random weights (pass --ckpt/--vae-ckpt to python -m fastar for real ones).
timed "sample var-d16" .venv/bin/python -m fastar sample var --depth 16 --classes 207 360 387 974 --seed 0 \
  --out benchmarks/results/var_d16_random_weights.png
