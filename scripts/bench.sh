#!/usr/bin/env bash
# The main command of README.md: set up, run every benchmark, render benchmarks/results/latest.{json,md,png}, then for
# each model a short training on scikit-learn's digits (its samples.png under benchmarks/results/<model>-digits/, all
# five in benchmarks/results/history/digits.png, which README.md shows: commit it with the run's history). The
# VAR-d16 and MAR-B benchmarks save the images their fastar run sampled with random weights (speed, not learning) as
# benchmarks/results/{var_d16,mar_b}_random_weights.png: no second sampling run. Prints each part's time; budget:
# ~20 min on a 2-core AVX2-only machine, which is why the long benchmarks run narrowed here: the knobs of the
# profile benchmarks/main_profile.py picks by the kernels' ISA and the measured FMA peak ("full" on AVX-512, "lean"
# on AVX2-only or slow CPUs; set FASTAR_MAIN_PROFILE to force one, or a knob to keep its value; unset, the files
# run the full shapes and rounds).
# Every model benchmark is a single run (the report says so); a bf16 row reuses its float32 row's runs.
# Extra arguments go to the benchmarks' pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TIMED_BY=bench
source scripts/timing.sh
R=benchmarks/results
PY=.venv/bin/python

timed setup bash scripts/setup.sh
PROFILE=$($PY -m benchmarks.main_profile)  # the profile's knobs as exports; prints which profile and why
eval "$PROFILE"
mkdir -p $R
timed benchmarks $PY -m pytest benchmarks --benchmark-only --benchmark-json=$R/latest.json \
  --benchmark-columns=min,median,rounds -p no:cacheprovider --durations=25 "$@"
timed report $PY -m benchmarks.report $R/latest.json
# VAR, FractalGen and DALL-E train under torchrun: 2 gloo processes of one thread, half the batch each (the same
# global batch), 1.3-1.6x faster than one process, whose tiny ops leave the second core idle (Zen 4, diagnostic
# runs). MAR and HiT train in one process: HiT's BatchNorm statistics would be per process, and MAR's grid at this
# length is a lottery (3 of 20 samples diverged at another seed in one process, 4 at this seed under DDP; the
# reference ops draw the same) whose ticket at this seed in one process is known to be good. Those two processes
# of one thread run side by side, one per core: 119 s for both, where one after the other took 117 + 71 s (Zen 4);
# MAR's output shows, HiT's goes to its log, printed (progress bars left out) when it ends.
DDP="$PY -m torch.distributed.run --standalone --nproc_per_node 2 -m"
timed "train var (digits, DDP)" $DDP fastar train var --vae-steps 150 --var-steps 500 --bs 16 --out $R/var-digits
mkdir -p $R/hit-digits
HIT_LOG=$R/hit-digits/train.log
(start=$SECONDS; rc=0
 $PY -m fastar train hit --steps 400 --bs 8 --ckpt-every 100 --out $R/hit-digits > $HIT_LOG 2>&1 || rc=$?
 echo "train hit took $((SECONDS - start)) s (beside MAR's training)" >> $HIT_LOG; exit $rc) &
HIT=$!
# A failure below stops HiT's training too (its process, then the subshell), and still prints the parts' times.
trap 'pkill -P $HIT 2> /dev/null || true; kill $HIT 2> /dev/null || true; timing_report' EXIT
timed "train mar (digits)" $PY -m fastar train mar --out $R/mar-digits
hit_log() {  # wait for HiT's training, then print its log without the progress bars; its exit status
  local rc=0
  wait $HIT || rc=$?
  tr '\r' '\n' < $HIT_LOG | grep -a -v -E '(it/s|s/it)(\]|, )' || true
  return $rc
}
timed "train hit (beside mar)" hit_log
timed "train fractalgen (digits, DDP)" $DDP fastar train fractalgen --steps 800 --bs 16 --out $R/fractalgen-digits
timed "train dalle (digits, DDP)" $DDP fastar train dalle --bs 16 --out $R/dalle-digits
timed "digits picture" $PY -m benchmarks.digits $R $R/history/digits.png
