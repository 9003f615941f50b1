"""The main command's profile: the knobs that narrow its benchmarks to its ~20-minute budget (scripts/bench.sh runs
`python -m benchmarks.main_profile` before them and evaluates the `export` lines it prints).

"full" where fastar's kernels run AVX-512 and the float32 FMA peak of that ISA (benchmarks/fma_peak.py, 2 threads)
reaches LEAN_BELOW_GFLOPS; "lean" on the AVX2-only CPUs the budget is set for, and below the peak. The CPUs seen: an
AMD Zen 5 (full-width AVX-512) measures ~519 GFLOP/s; a Zen 4 ~235 and takes ~15-16 min in full; a Zen 3 (AVX2
only) measures ~180-205 yet took 21.3 min in full and 14.8 in lean (2026-12-07: its trainings 1.4-1.5x the Zen 4's);
a Zen 1 (two 128-bit FMA units a core) would measure ~80-100, where the full profile would take an estimated 30-40
min. The lean profile declines the five
models' training-step rows (`pytest benchmarks -m train_step --benchmark-only` runs them), narrows the sampling rows
(smaller batch, fewer iterations) and gives each op row less time. The digits trainings keep their length in both:
their pictures are what a person judges (0.6x VAR's steps, or half the batch for MAR, DALL-E or FractalGen, gave
visibly worse digits: README, Time). FASTAR_MAIN_PROFILE=full|lean forces a profile; a knob already set in the
environment is kept in either.
"""
import os
import shlex
import sys

LEAN_BELOW_GFLOPS = 140.0

# knob -> (full, lean, what it does). Unset, the benchmark files default to the full shapes and rounds. Times: AMD
# Zen 4, 2 threads, the libraries held to AVX2 (the bf16 rows then declined, as on an AVX2-only CPU).
KNOBS = {
    "FASTAR_BENCH_TRAIN_STEPS": ("1", "0", "0: the five models' training-step rows are declined (~180 s)"),
    "FASTAR_BENCH_VAR_B": ("4", "2", "VAR-d16 sampling batch, and the VQVAE decode's (~50 + 20 s at 4)"),
    "FASTAR_BENCH_VAR_TRAIN_B": ("2", "2", "VAR-d16 training step batch: ~35 s a round of its 3 contenders at B 2"),
    "FASTAR_BENCH_VAR_DECODE_ROUNDS": ("1", "1", "VQVAE decode rounds"),
    "FASTAR_BENCH_VAR_CACHE_COLUMN": ("0", "0", "VAR-d16 step without cpu_cache_step: ~25 s more"),
    "FASTAR_BENCH_DALLE": ("12,512,256,32,512", "12,512,256,32,256",
                           "DALL-E depth, width, text, grid, image tokens sampled (~19 s at 512)"),
    "FASTAR_BENCH_FG_NUM_ITER": ("8,4", "4,2", "fractalmar_in64 sampling's iterations per level (~22 s at 8,4)"),
    "FASTAR_BENCH_MAR_ITER": ("4", "2", "MAR-B sample_tokens' iterations (~23 s at 4 with 10 steps)"),
    "FASTAR_BENCH_MAR_STEPS": ("10", "5", "MAR-B sample_tokens' diffusion steps (MAR samples 100)"),
    "FASTAR_BENCH_DIFFUSION_STEPS": ("10", "10", "MAR head rows: steps per call (ratio per step; MAR samples 100)"),
    "FASTAR_BENCH_HIT_SIZE": ("256", "128", "HiT generator forward row's config (~13 s at 256)"),
    "FASTAR_BENCH_HIT_ROUNDS": ("1", "1", "HiT's two model rows: 3 rounds alone, ~25 s more"),
    "FASTAR_BENCH_ROW_S": ("4", "2", "op rows: rounds within this many seconds after the warm-up, at least 3"),
}


def choose(env, peak=None, isa=None):
    """(profile, reason) from FASTAR_MAIN_PROFILE in env, else from the ISA fastar's kernels run and its float32 FMA
    peak in GFLOP/s (both measured here when peak is None)."""
    forced = env.get("FASTAR_MAIN_PROFILE", "")
    if forced:
        if forced not in ("full", "lean"):
            raise ValueError(f"FASTAR_MAIN_PROFILE must be 'full' or 'lean' (or unset: chosen by the ISA and the FMA peak), "
                             f"got {forced!r}")
        return forced, "set by FASTAR_MAIN_PROFILE"
    if peak is None:
        peak, isa = measured_peak()
    if isa != "avx512":
        return "lean", f"kernels run {isa}, not avx512 (float32 FMA peak {peak:.0f} GFLOP/s)"
    if peak < LEAN_BELOW_GFLOPS:
        return "lean", f"float32 FMA peak {peak:.0f} GFLOP/s < {LEAN_BELOW_GFLOPS:.0f}"
    return "full", f"kernels run avx512, float32 FMA peak {peak:.0f} GFLOP/s >= {LEAN_BELOW_GFLOPS:.0f}"


def measured_peak():
    import fastar
    import torch

    from benchmarks import fma_peak
    info = fastar.build_info()
    return fma_peak.kernels_peak(info, torch.get_num_threads())["gflops"], info["cpu_isa"]


def exports(env, profile, reason):
    """The shell lines that set each knob of `profile` not already in env, and name the profile for the report."""
    column = 0 if profile == "full" else 1
    lines = [f"export {k}={shlex.quote(v[column])}" for k, v in KNOBS.items() if k not in env]
    lines += [f"export FASTAR_MAIN_PROFILE={profile}", f"export FASTAR_MAIN_PROFILE_REASON={shlex.quote(reason)}"]
    return lines


def main():
    profile, reason = choose(os.environ)
    print("\n".join(exports(os.environ, profile, reason)))
    print(f"main command profile: {profile} ({reason})", file=sys.stderr)


if __name__ == "__main__":
    main()
