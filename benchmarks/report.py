"""Renders a pytest-benchmark JSON of fastar's benchmarks into a markdown report and PNG plots, and appends the
run to the committed history (benchmarks/results/history/runs.jsonl, one line per benchmark and run).

    python -m benchmarks.report benchmarks/results/latest.json   # writes latest.md, latest.png and
                                                                  # latest-history.png beside it
    python -m benchmarks.report smoke.json --history /tmp/h.jsonl # a trial run, kept out of the record
"""
import argparse
import json
from pathlib import Path

HISTORY = Path(__file__).parent / "results" / "history" / "runs.jsonl"


def _fmt_ms(s):
    """Three significant figures, so that a 40-microsecond op does not print as 0.0."""
    return f"{s['min_ms']:.3g} / {s['median_ms']:.3g}"


def _fmt_time(ms):
    return f"{ms:.3g} ms" if ms < 1e3 else f"{ms / 1e3:.3g} s"


def peak_basis(m, key="fp32_peak"):
    """The measured peak and how it was measured, e.g. '35 GFLOP/s (avx2: 8 floats x 12 chains, 1 thread)'; key
    "bf16_peak": the bfloat16 dot-product peak."""
    p = m.get(key) or {}
    if not p:
        return "not measured"
    element, op = ("bfloat16", "dot-product") if key == "bf16_peak" else ("float", "FMA")
    return (f"{p['gflops']:.0f} GFLOP/s ({p['isa']}: {p['floats']}-{element} vectors x {p['chains']} {op} chains "
            f"per thread, {p['threads']} threads, each over its own CPU time; benchmarks/fma_peak.cpp)")


def share_of_peak(e):
    """The line on a share of the FMA peak: fastar's, or where fastar skips work the GFLOP count includes (a k-d tree
    search), that of the contender e["share_of"] that does it all (e["share_note"] says what fastar skips). Above
    100% the peak is wrong, and the line says so."""
    who = e.get("share_of", "fastar")
    share = e["fma_floor_ms"] / e[who]["min_ms"]
    skips = f"; {e['share_note']}" if who != "fastar" else ""
    kind = "bfloat16 dot-product" if e.get("peak") == "bf16" else "FMA"
    if share > 1:
        return (f"{e['gflop']:.1f} GFLOP; {who} ran faster than the measured {kind} peak allows "
                f"({e['fma_floor_ms']:.1f} ms at peak): **the measured peak is wrong**, no share is given{skips}")
    return (f"{e['gflop']:.1f} GFLOP; {kind} floor at peak: {e['fma_floor_ms']:.1f} ms "
            f"({who} reaches {share:.0%} of peak){skips}")


def breakdowns(e):
    """{bar label: {part: share of that run}}: the per-contender breakdown of a model run, and the parts of
    fastar's own work timed alone (the rest of fastar's time is 'other')."""
    bars = {}
    for name, parts in e.get("breakdown", {}).items():
        bars[name] = {p: ms / parts["total"] for p, ms in parts.items() if p != "total"}
    if e.get("parts"):
        shares = {p: e[p]["ratio"] for p in e["parts"]}  # min(part) / min(fastar)
        bars["fastar"] = {**shares, "other": max(0.0, 1 - sum(shares.values()))}
    return bars


def isa_in_use(build):
    """The ISA the kernels run, with the families that run their AVX2 kernels on it (AMD Zen 4), if any."""
    families = build.get("cpu_isa_avx2_families")
    isa = build.get("cpu_isa")
    return f"{isa} ({families.replace(',', ', ')} on AVX2)" if families else f"{isa}"


def contended(extra):
    """A row's cpu_load (harness.cpu_load) where other processes or the hypervisor took CPU time from its rounds,
    else None."""
    load = extra.get("cpu_load")
    return load if load and load["contended"] else None


def contended_note(load):
    """The line of a row whose rounds other processes (or the hypervisor) took CPU time from (harness.cpu_load)."""
    return (f"**Measured under load**: other processes took {load['other_cores']:.2f} of the {load['cpus']} cores "
            f"this process may run on (its {load['threads']} threads leave {max(0, load['cpus'] - load['threads'])} "
            f"free), the hypervisor stole {load['steal_cores']:.2f}, while its rounds ran: its ratios are not "
            "reliable.")


def render(data):
    m = data["machine_info"].get("fastar", {})
    lines = [
        "# fastar benchmark report", "",
        f"- machine: {m.get('cpu')} ({m.get('cores')} cores, torch threads {m.get('threads')}); "
        f"fp32 FMA peak {peak_basis(m)}" + (f"; bf16 dot-product peak {peak_basis(m, 'bf16_peak')}"
                                             if m.get("bf16_peak") else ""),
        f"- fastar {m.get('version')}, backends {m.get('backends')}, CPU ISA in use "
        f"{isa_in_use(m.get('build', {}))}, torch {m.get('torch')}; {data.get('datetime', '')}",
        "- times are min / median ms over interleaved rounds in one process; ratio = min(contender) / min(fastar)"
        " (> 1: fastar is faster); each section names its baseline, what users run today (normally the torch "
        "backend, fastar/torch/, or the official code's formulation). Ratios compare within one run, and across "
        "runs only on the same CPU.", "",
    ]
    loaded = [b["group"] for b in data["benchmarks"] if contended(b["extra_info"])]
    if loaded:
        lines[-1:-1] = [f"- **{len(loaded)} of {len(data['benchmarks'])} rows ran while other processes took CPU "
                        "time from them** (their sections say how much): rerun those alone before quoting them"]
    if m.get("main_profile"):
        p = m["main_profile"]
        lines[-1:-1] = [f"- the main command's **{p['profile']}** profile ({p['reason']}): its knobs and their shapes "
                        "in benchmarks/main_profile.py; each section's title gives the shape it ran"]
    for b in data["benchmarks"]:
        e = b["extra_info"]
        lines += [f"## {b['group']}", "", f"fastar backend: **{e.get('backend')}**; baseline: **{e['baseline']}**"
                  f" ({e['baseline']} / fastar = **{e[e['baseline']]['ratio']:.2f}x**)", ""]
        if e.get("rounds", 3) <= 2:
            lines += [("Single run: one round" if e["rounds"] == 1 else "Two rounds") + " per contender (too long to "
                      "repeat here); expect 10-20% noise.", ""]
        if load := contended(e):
            lines += [contended_note(load), ""]
        if e.get("timed_by_an_earlier_row"):
            lines += [f"Not run again here: {', '.join(e['timed_by_an_earlier_row'])}, as timed by the float32 row of "
                      "this run (the same process and inputs).", ""]
        if e.get("calls_per_round", 1) > 1:
            lines += [f"Each round is a loop of {e['calls_per_round']} calls (the op is under "
                      "2 ms); times are per call.", ""]
        if "fma_floor_ms" in e:
            lines += [share_of_peak(e), ""]
        lines += ["| contender | min / median ms | ratio | agreement |", "|---|---|---|---|",
                  f"| **fastar** | {_fmt_ms(e['fastar'])} | 1.00 | |"]
        if not isinstance(e.get("agreement", {}), dict):
            raise TypeError(f"{b['group']}: extra_info['agreement'] must be a {{contender: share}} dict, got "
                            f"{e['agreement']!r}")
        diffs = e.get("max_abs_diff", {})  # a single figure is the baseline's
        diffs = {e["baseline"]: diffs} if isinstance(diffs, (int, float)) else diffs
        for name in e["contenders"]:
            agree = e.get("agreement", {}).get(name)
            cell = (f"{agree:.4%}" if agree is not None else
                    f"max abs diff {diffs[name]:.2g}" if isinstance(diffs.get(name), (int, float)) else "")
            lines.append(f"| {name} | {_fmt_ms(e[name])} | {e[name]['ratio']:.2f}x | {cell} |")
        lines.append("")
        if e.get("note"):
            lines += [e["note"], ""]
        for name, shares in breakdowns(e).items():
            ms = e.get("breakdown", {}).get(name, {})  # a model run's parts in ms (a part timed alone: its share)
            lines += [f"Where {name}'s time goes: " + ", ".join(
                f"{p} {s:.0%}" + (f" ({_fmt_time(ms[p])})" if p in ms else "") for p, s in shares.items()), ""]
    for d in data.get("declined", []):  # rows not run on this machine (not timed): the reason names what it lacks
        lines += [f"## {d['group']}", "", f"Declined on {m.get('cpu')} (CPU ISA {m.get('build', {}).get('cpu_isa')}), "
                  f"not timed: {d['reason']}", ""]
    return "\n".join(lines)


def history_rows(data):
    """One record per benchmark of this run: machine, versions, contender times and ratios."""
    m = data["machine_info"].get("fastar", {})
    for b in data["benchmarks"]:
        e = b["extra_info"]
        yield {"date": data.get("datetime"), "cpu": m.get("cpu"), "cpu_isa": m.get("build", {}).get("cpu_isa"),
               "fp32_peak": m.get("fp32_peak"), "bf16_peak": m.get("bf16_peak"), "threads": m.get("threads"),
               "torch": m.get("torch"), "main_profile": m.get("main_profile", {}).get("profile"),
               "fastar": m.get("version"), "group": b["group"], "op": e.get("op"), "shape": e.get("shape"),
               "backend": e.get("backend"), "baseline": e["baseline"], "rounds": e.get("rounds"),
               "other_cores": (e.get("cpu_load") or {}).get("other_cores"),
               "fastar_ms": e["fastar"]["min_ms"],
               "contenders": {n: {"min_ms": e[n]["min_ms"], "ratio": e[n]["ratio"]} for n in e["contenders"]}}


def append_history(data, path=HISTORY):
    """Appends this run's records unless they are there already (the report may be rendered twice); returns all."""
    old = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    seen = {(r["date"], r["group"]) for r in old}
    new = [r for r in history_rows(data) if (r["date"], r["group"]) not in seen]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
    return old + new


def plot(data, path):
    """This run: each contender's ratio (bars), then the breakdowns as stacked shares (never as contenders)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(b):  # a row measured under load says so beside its bars
        return b["group"] + (" [UNDER LOAD]" if contended(b["extra_info"]) else "")
    rows = [(label(b), name, b["extra_info"][name]["ratio"], name == b["extra_info"]["baseline"])
            for b in data["benchmarks"] for name in b["extra_info"]["contenders"]]
    stacks = [(b["group"], who, shares) for b in data["benchmarks"] for who, shares in
              breakdowns(b["extra_info"]).items()]
    heights = [0.45 * len(rows) + 1.5] + ([0.45 * len(stacks) + 1.5] if stacks else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, sum(heights)), height_ratios=heights, squeeze=False)
    ax = axes[0, 0]
    ratios = [r for _, _, r, _ in rows]
    bars = ax.barh(range(len(rows)), ratios, color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
    ax.set_yticks(range(len(rows)), [f"{g}\nvs {n}{' (baseline)' if base else ''}" for g, n, _, base in rows],
                  fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of fastar (min time of contender / min time of fastar)")
    ax.bar_label(bars, [f"{r:.2f}x" for r in ratios], fontsize=7, padding=2)
    ax.set_title("fastar vs each benchmark's baseline (what users run) and peers: one run, CPU")
    if stacks:
        ax = axes[1, 0]
        colors = {}
        for i, (_, _, shares) in enumerate(stacks):
            left = 0.0
            for part, share in shares.items():
                color = colors.setdefault(part, plt.cm.tab20(len(colors) % 20))
                ax.barh(i, share, left=left, color=color, label=part if part not in ax.get_legend_handles_labels()[1]
                        else None)
                left += share
        ax.set_yticks(range(len(stacks)), [f"{g}\n{who}'s time" for g, who, _ in stacks], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the run's time")
        ax.set_title("where the time goes (breakdowns, stacked shares)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(history, groups, path):
    """Each benchmark's ratio against its baseline across recorded runs; one series per CPU (and ISA), since a
    ratio is only compared with ratios of the same CPU kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    n_rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(12, 2.6 * n_rows + 0.5), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        runs = sorted((r for r in history if r["group"] == group), key=lambda r: r["date"] or "")
        for cpu in dict.fromkeys((r["cpu"], r["cpu_isa"]) for r in runs):
            mine = [r for r in runs if (r["cpu"], r["cpu_isa"]) == cpu]
            ax.plot([(r["date"] or "")[:16] for r in mine], [r["contenders"][r["baseline"]]["ratio"] for r in mine],
                    marker="o", label=f"{cpu[0]} [{cpu[1]}]")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(f"{group}\nvs {runs[-1]['baseline']}" if runs else group, fontsize=7)
        ax.set_ylabel("speed-up", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle("fastar's ratio to the baseline across recorded runs (one series per CPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(json_path, history_path=HISTORY):
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    md = render(data)
    json_path.with_suffix(".md").write_text(md + "\n")
    plot(data, json_path.with_suffix(".png"))
    history = append_history(data, Path(history_path))
    history_png = json_path.with_name(json_path.stem + "-history.png")
    plot_history(history, [b["group"] for b in data["benchmarks"]], history_png)
    print(md)
    print(f"\nwrote {json_path.with_suffix('.md')}, {json_path.with_suffix('.png')} and {history_png}; "
          f"history: {history_path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="?", default="benchmarks/results/latest.json")
    parser.add_argument("--history", default=HISTORY, help="the JSON-lines record to append to (default: %(default)s)")
    args = parser.parse_args()
    main(args.json, args.history)
