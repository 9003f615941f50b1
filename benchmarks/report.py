"""Renders a pytest-benchmark JSON of fastar's benchmarks into a markdown report and a PNG plot.

    python -m benchmarks.report benchmarks/results/latest.json   # writes latest.md and latest.png beside it
"""
import json
import sys
from pathlib import Path


def _fmt_ms(s):
    return f"{s['min_ms']:.1f} / {s['median_ms']:.1f}"


def render(data):
    m = data["machine_info"].get("fastar", {})
    lines = [
        "# fastar benchmark report", "",
        f"- machine: {m.get('cpu')} ({m.get('cores')} cores, torch threads {m.get('threads')}), "
        f"fp32 peak ~{m.get('fp32_peak_gflops', 0):.0f} GFLOP/s (measured by benchmarks/fma_peak.cpp)",
        f"- fastar {m.get('version')}, backends {m.get('backends')}, CPU ISA {m.get('build', {}).get('cpu_isa')}, "
        f"torch {m.get('torch')}; {data.get('datetime', '')}",
        "- times are min / median ms over interleaved rounds in one process; ratio = min(contender) / min(fastar)"
        " (> 1: fastar is faster). Ratios compare within one run only.", "",
    ]
    for b in data["benchmarks"]:
        e = b["extra_info"]
        lines += [f"## {b['group']}", "", f"fastar backend: **{e.get('backend')}**", ""]
        if "note" in e:
            lines += [e["note"], ""]
        if "fma_floor_ms" in e:
            lines += [f"{e['gflop']:.1f} GFLOP; FMA floor at peak: {e['fma_floor_ms']:.1f} ms "
                      f"(fastar reaches {e['fma_floor_ms'] / e['fastar']['min_ms']:.0%} of peak)", ""]
        lines += ["| contender | min / median ms | ratio | agreement |", "|---|---|---|---|",
                  f"| **fastar** | {_fmt_ms(e['fastar'])} | 1.00 | |"]
        for name in e["contenders"]:
            agree = e.get("agreement", {}).get(name)
            lines.append(f"| {name} | {_fmt_ms(e[name])} | {e[name]['ratio']:.2f}x | "
                         f"{'' if agree is None else f'{agree:.4%}'} |")
        lines.append("")
        if "breakdown" in e:  # {contender: {part: ms, ..., "total": ms}} of the timed runs
            runs = e["breakdown"]
            names = sorted(runs, key=lambda n: n != "fastar")
            lines += ["Where the time goes (ms, share of the run):", "", "| part | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for part in runs[names[0]]:
                cells = [f"{runs[n].get(part, 0):.0f} ({runs[n].get(part, 0) / runs[n]['total']:.0%})"
                         for n in names]
                lines.append(f"| {part} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(b["group"], name, b["extra_info"][name]["ratio"])
            for b in data["benchmarks"] for name in b["extra_info"]["contenders"]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    labels = [f"{group}\nvs {name}" for group, name, _ in rows]
    ratios = [r for _, _, r in rows]
    bars = ax.barh(range(len(rows)), ratios, color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of fastar (min time of contender / min time of fastar)")
    ax.bar_label(bars, [f"{r:.2f}x" for r in ratios], fontsize=7, padding=2)
    ax.set_title("fastar vs reference and peers (one run, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(json_path):
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    md = render(data)
    json_path.with_suffix(".md").write_text(md + "\n")
    plot(data, json_path.with_suffix(".png"))
    print(md)
    print(f"\nwrote {json_path.with_suffix('.md')} and {json_path.with_suffix('.png')}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json")
