#!/usr/bin/env bash
# The main command of README.md: set up, run every benchmark, render benchmarks/results/latest.{json,md,png},
# then sample from the VAR model.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
mkdir -p benchmarks/results
.venv/bin/python -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json \
  --benchmark-columns=min,median,rounds -p no:cacheprovider "$@"
.venv/bin/python -m benchmarks.report benchmarks/results/latest.json
# Sampling from the models: VAR-d16 with random weights (pass --ckpt/--vae-ckpt to python -m fastar for real ones).
.venv/bin/python -m fastar sample var --depth 16 --classes 207 360 387 974 --seed 0 \
  --out benchmarks/results/var_d16_random_weights.png
