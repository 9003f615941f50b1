"""Side by side: the same benchmarks run under two CPU instruction sets on one machine (issue 20's cross-ISA check).

    FASTAR_CPU_ISA=avx2 .venv/bin/python -m pytest benchmarks/bench_X.py --benchmark-only --benchmark-json=avx2.json
    .venv/bin/python -m pytest benchmarks/bench_X.py --benchmark-only --benchmark-json=avx512.json
    python tools/isa_compare.py avx2.json avx512.json

Prints, per benchmark group found in both, fastar's best time and its ratio to each contender under each ISA (ratio =
min(contender) / min(fastar), > 1: fastar faster), and flags the groups where a ratio to the baseline is lower by
more than 10% under the first ISA. The contenders (SDPA, FAISS, the official loops) run the same code under both
runs: FASTAR_CPU_ISA narrows fastar's kernels only, so their time moves only with the machine's noise.
"""
import json
import sys


def load(path):
    data = json.load(open(path))
    info = data["machine_info"]["fastar"]
    rows = {b["group"]: b["extra_info"] for b in data["benchmarks"] if "fastar" in b["extra_info"]}
    return info, rows


def main(a_path, b_path):
    (ia, a), (ib, b) = load(a_path), load(b_path)
    isa_a, isa_b = ia["build"]["cpu_isa"], ib["build"]["cpu_isa"]
    print(f"CPU {ia['cpu']}, {ia['threads']} threads; {isa_a} ({a_path}) vs {isa_b} ({b_path})\n")
    print(f"| benchmark | contender | {isa_a} ms | {isa_a} ratio | {isa_b} ms | {isa_b} ratio |")
    print("|---|---|---|---|---|---|")
    lower = []
    for group in (g for g in a if g in b):
        ea, eb = a[group], b[group]
        for name in ea["contenders"]:
            if name not in eb:
                continue
            ra, rb = ea[name]["ratio"], eb[name]["ratio"]
            base = " (baseline)" if name == ea["baseline"] else ""
            print(f"| {group} | {name}{base} | {ea['fastar']['min_ms']:.1f} | {ra:.2f}x | "
                  f"{eb['fastar']['min_ms']:.1f} | {rb:.2f}x |")
            if base and ra < 0.9 * rb:
                lower.append(f"{group}: {ra:.2f}x under {isa_a} vs {rb:.2f}x under {isa_b}")
    print(f"\nbaseline ratio more than 10% lower under {isa_a}: " + ("; ".join(lower) if lower else "none"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
