"""benchmarks/report.py: a share of the FMA peak over 100% is reported as a wrong peak, never printed; the parts
of fastar's work are shares of its time, not contenders; the history is appended once per run and benchmark."""
import pytest

from benchmarks import report


def run_json(fastar_ms=100.0, floor_ms=50.0, date="2026-12-02T19:00"):
    extra = {"backend": "cpu", "op": "vq_nearest", "rounds": 7, "baseline": "torch backend",
             "contenders": ["torch backend"], "parts": ["Phi convs"], "gflop": 1.0, "fma_floor_ms": floor_ms,
             "fastar": {"min_ms": fastar_ms, "median_ms": fastar_ms},
             "torch backend": {"min_ms": 300.0, "median_ms": 310.0, "ratio": 300.0 / fastar_ms},
             "Phi convs": {"min_ms": 25.0, "median_ms": 26.0, "ratio": 25.0 / fastar_ms}}
    machine = {"fastar": {"cpu": "AMD EPYC", "build": {"cpu_isa": "avx2"}, "version": "0.1.0", "torch": "2.13.0",
                          "fp32_peak": {"gflops": 40.0, "isa": "avx2", "floats": 8, "chains": 12, "threads": 1}}}
    return {"datetime": date, "machine_info": machine, "benchmarks": [{"group": "vq_nearest VAR", "extra_info": extra}]}


def test_share_of_peak_over_100_percent_says_the_peak_is_wrong():
    assert "fastar reaches 50% of peak" in report.render(run_json(floor_ms=50.0))
    md = report.render(run_json(floor_ms=642.0))
    assert "the measured peak is wrong" in md and "642%" not in md and "of peak)" not in md
    assert "avx2: 8-float vectors x 12 FMA chains per thread, 1 threads" in md


def test_bf16_rows_take_the_bf16_peak():
    """A bf16 mode's row (extra_info peak "bf16") is a share of the measured bfloat16 dot-product peak, named as
    such, and the header gives that peak beside the FMA one."""
    run = run_json(floor_ms=25.0)
    run["benchmarks"][0]["extra_info"]["peak"] = "bf16"
    run["machine_info"]["fastar"]["bf16_peak"] = {"gflops": 80.0, "isa": "avx512bf16", "floats": 32, "chains": 24,
                                                  "threads": 1}
    md = report.render(run)
    assert "bfloat16 dot-product floor at peak: 25.0 ms (fastar reaches 25% of peak)" in md
    assert "bf16 dot-product peak 80 GFLOP/s (avx512bf16: 32-bfloat16 vectors x 24 dot-product chains" in md
    assert "bf16 dot-product peak" not in report.render(run_json())


def test_share_of_peak_of_the_contender_doing_every_flop():
    """Where fastar skips work the GFLOP count includes (vq_nearest's k-d tree), the share is the full sweep's, and
    fastar's faster time is not reported as a wrong peak."""
    run = run_json(fastar_ms=100.0, floor_ms=150.0)
    e = run["benchmarks"][0]["extra_info"]
    e.update({"share_of": "torch backend", "share_note": "fastar prunes"})
    md = report.render(run)
    assert "torch backend reaches 50% of peak); fastar prunes" in md and "peak is wrong" not in md
    e["torch backend"]["min_ms"] = 120.0
    assert "torch backend ran faster than the measured FMA peak allows" in report.render(run)


def test_parts_are_shares_of_fastar_not_contenders():
    e = run_json()["benchmarks"][0]["extra_info"]
    assert report.breakdowns(e) == {"fastar": {"Phi convs": 0.25, "other": 0.75}}
    assert "| Phi convs |" not in report.render(run_json())


def test_model_breakdown_gives_shares_and_times():
    """A model run's breakdown (ms per part and the total) renders as each part's share with its time; a part
    timed alone (Phi convs) as its share only."""
    run = run_json()
    e = run["benchmarks"][0]["extra_info"]
    e["breakdown"] = {"torch backend": {"GEMMs": 2400.0, "other": 600.0, "total": 3000.0}}
    md = report.render(run)
    assert "Where torch backend's time goes: GEMMs 80% (2.4 s), other 20% (600 ms)" in md
    assert "Where fastar's time goes: Phi convs 25%, other 75%" in md


def test_op_breakdown_sorts_a_step_by_kind_of_op():
    """harness.op_breakdown: the self CPU time of a call's ops by kind (a product is a GEMM, a convolution a
    convolution), largest first, the kinds adding up to the total. No time is compared with another: under load
    the profiler's shares swing (GEMMs > the rest failed once in a loaded suite)."""
    import torch
    import torch.nn.functional as F
    from benchmarks.harness import op_breakdown
    a, x, w = torch.randn(512, 512), torch.randn(1, 8, 32, 32), torch.randn(8, 8, 3, 3)
    parts = op_breakdown(lambda: (torch.mm(a, a), F.conv2d(x, w), torch.relu(a)))
    assert parts["GEMMs"] > 0 and parts["convolutions"] > 0 and parts["other"] > 0 and "attention" not in parts
    kinds = [v for k, v in parts.items() if k != "total"]
    assert kinds == sorted(kinds, reverse=True) and list(parts)[-1] == "total"
    assert parts["total"] == pytest.approx(sum(kinds))


def test_step_agreement_compares_losses_and_gradient_norms():
    """harness.step_figures / step_agreement: a training row's max abs diff is the largest difference of a
    contender's loss(es) and gradient norm from fastar's; the note names them with their values; max_abs_diff
    compares tensors or lists of them."""
    import torch
    from types import SimpleNamespace
    from benchmarks.harness import max_abs_diff, step_agreement, step_figures
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    figures = {"fastar": step_figures(torch.tensor(2.0), [w, torch.nn.Parameter(torch.zeros(1))]),
               "torch backend": step_figures({"loss": 2.5}, [w])}
    assert figures["fastar"] == {"loss": 2.0, "gradient norm": 5.0}
    bench = SimpleNamespace(extra_info={"note": "first"})
    step_agreement(bench, figures, "one step each")
    assert bench.extra_info["max_abs_diff"] == {"torch backend": 0.5}
    assert bench.extra_info["note"].startswith(
        "first Agreement (one step each): max abs diff over the loss and the gradient norm; fastar: loss 2, gradient "
        "norm 5; torch backend: loss 2.5")
    run = run_json()
    run["benchmarks"][0]["extra_info"]["max_abs_diff"] = bench.extra_info["max_abs_diff"]
    assert "| torch backend | 300 / 310 | 3.00x | max abs diff 0.5 |" in report.render(run)
    assert max_abs_diff([torch.ones(2), torch.zeros(1)], [torch.ones(2), torch.ones(1)]) == 1.0


def test_history_appends_each_run_once(tmp_path):
    path = tmp_path / "runs.jsonl"
    report.append_history(run_json(), path)
    history = report.append_history(run_json(), path)  # the same run rendered again
    assert len(history) == 1 and len(path.read_text().splitlines()) == 1
    row = history[0]
    assert (row["cpu"], row["cpu_isa"], row["fp32_peak"]["gflops"]) == ("AMD EPYC", "avx2", 40.0)
    assert row["contenders"]["torch backend"]["ratio"] == 3.0
    assert len(report.append_history(run_json(date="2026-12-03T10:00"), path)) == 2


def test_declined_rows_are_reported_with_the_cpu_not_timed():
    data = run_json()
    data["benchmarks"][0]["extra_info"]["note"] = "bf16 vs fastar fp32: tokens agree per scale 1.000"
    data["declined"] = [{"group": "VAR-d16 sampling bf16", "reason": "needs AMX-BF16 or AVX512-BF16"}]
    md = report.render(data)
    assert "bf16 vs fastar fp32: tokens agree per scale 1.000" in md
    assert md.endswith("## VAR-d16 sampling bf16\n\nDeclined on AMD EPYC (CPU ISA avx2), not timed: needs AMX-BF16 "
                       "or AVX512-BF16\n")
    assert len(list(report.history_rows(data))) == 1  # the history holds timed rows only


def test_isa_in_use_names_the_families_on_avx2():
    assert "CPU ISA in use avx2, torch" in report.render(run_json())
    data = run_json()
    data["machine_info"]["fastar"]["build"] = {"cpu_isa": "avx512", "cpu_isa_avx2_families": "vq_nearest,multi_axis"}
    assert "CPU ISA in use avx512 (vq_nearest, multi_axis on AVX2), torch" in report.render(data)


def test_digits_picture_stacks_every_models_grid(tmp_path):
    from PIL import Image

    from benchmarks import digits
    colors = {}
    for i, (m, _) in enumerate(digits.MODELS):
        (tmp_path / f"{m}-digits").mkdir()
        colors[m] = (40 * i, 255 - 40 * i, 7)
        Image.new("RGB", (100 + 10 * i, 30), colors[m]).save(tmp_path / f"{m}-digits" / "samples.png")
    out = tmp_path / "history" / "digits.png"
    digits.montage(tmp_path, out)
    img = Image.open(out).convert("RGB")
    y = digits.LABEL_H
    for m, _ in digits.MODELS:  # each grid pasted whole, in order, under its caption
        grid = img.crop((digits.PAD, y + digits.LABEL_H, digits.PAD + 100, y + digits.LABEL_H + 30))
        assert grid.getcolors() == [(100 * 30, colors[m])], m
        y += digits.LABEL_H + 30 + digits.PAD
    assert img.height == y + digits.PAD
    (tmp_path / "hit-digits" / "samples.png").unlink()
    with pytest.raises(SystemExit, match="hit-digits"):
        digits.montage(tmp_path, out)


class FakeBenchmark:
    """pytest-benchmark's pedantic() and stats, enough for harness.compare: runs setup and fn `rounds` times."""

    def __init__(self):
        self.extra_info = {}

    def pedantic(self, fn, setup, rounds, iterations, warmup_rounds):
        import statistics
        import time
        from types import SimpleNamespace
        data = []
        for _ in range(rounds):
            setup()
            t0 = time.perf_counter()
            fn()
            data.append(time.perf_counter() - t0)
        self.stats = SimpleNamespace(stats=SimpleNamespace(data=data, min=min(data), median=statistics.median(data)))


def test_a_later_row_reuses_the_recorded_runs_instead_of_running_them(monkeypatch):
    """harness.compare(record=key) keeps a row's rounds; recorded(key, new=old) gives them renamed, and a later row
    that passes them as `measured` does not run those contenders again, lists them with ratios against its own
    fastar time, and the report says they were not run again. A row never recorded gives None; a looped row (an op
    under 2 ms) refuses measured rounds."""
    from benchmarks import harness
    monkeypatch.setattr(harness, "RECORDED", {})
    calls = {"torch": 0}

    def torch_run():
        calls["torch"] += 1
    first = FakeBenchmark()
    harness.compare(first, lambda: None, {"torch backend": torch_run}, baseline="torch backend", rounds=1, warmup=0,
                    record="sampling")
    assert calls["torch"] == 1 and set(harness.RECORDED["sampling"]) == {"fastar", "torch backend"}
    measured = harness.recorded("sampling", **{"torch backend, float32": "torch backend", "fastar fp32": "fastar"})
    assert measured == {"torch backend, float32": harness.RECORDED["sampling"]["torch backend"],
                        "fastar fp32": first.stats.stats.data}
    assert harness.recorded("never ran", x="fastar") is None
    bf16 = FakeBenchmark()
    e = harness.compare(bf16, lambda: None, {}, baseline="torch backend, float32", rounds=1, warmup=0,
                        measured={"torch backend, float32": [2.0], "fastar fp32": [1.0]})
    assert calls["torch"] == 1  # not run again
    assert e["contenders"] == ["torch backend, float32", "fastar fp32"]
    assert e["torch backend, float32"]["ratio"] == 2.0 / bf16.stats.stats.min
    assert e["timed_by_an_earlier_row"] == ["torch backend, float32", "fastar fp32"]
    run = run_json()
    run["benchmarks"][0]["extra_info"]["timed_by_an_earlier_row"] = ["torch backend"]
    assert "Not run again here: torch backend, as timed by the float32 row of this run" in report.render(run)
    with pytest.raises(ValueError, match="single calls"):
        harness.compare(FakeBenchmark(), lambda: None, {}, baseline="x", rounds=1, warmup=1, measured={"x": [1.0]})


def test_a_row_budget_bounds_the_rounds_after_the_warm_up(monkeypatch):
    """FASTAR_BENCH_ROW_S: a row whose warm-up shows that its rounds would pass the budget runs as many as fit, at
    least MIN_ROUNDS; without the budget (inf) or without a warm-up, the rounds asked for."""
    import time
    from benchmarks import harness

    def slow():
        time.sleep(0.01)
    monkeypatch.setattr(harness, "ROW_S", 0.05)
    assert harness.compare(FakeBenchmark(), slow, {"b": slow}, baseline="b", rounds=7)["rounds"] == harness.MIN_ROUNDS
    assert harness.compare(FakeBenchmark(), slow, {"b": slow}, baseline="b", rounds=7, warmup=0)["rounds"] == 7
    monkeypatch.setattr(harness, "ROW_S", 1.0)  # 7 rounds of ~20 ms fit
    assert harness.compare(FakeBenchmark(), slow, {"b": slow}, baseline="b", rounds=7)["rounds"] == 7
    monkeypatch.setattr(harness, "ROW_S", float("inf"))
    assert harness.compare(FakeBenchmark(), slow, {"b": slow}, baseline="b", rounds=7)["rounds"] == 7


def test_the_main_command_goes_lean_below_the_peak_and_keeps_the_knobs_a_user_set():
    """benchmarks/main_profile.py: lean below LEAN_BELOW_GFLOPS or below AVX-512 (AVX2-only CPUs), full at or above
    it on AVX-512, FASTAR_MAIN_PROFILE forces one
    (any other value is an error naming it); its exports survive the shell (the reason has spaces and '<'), keep a
    knob the environment set, and the report and history name the profile."""
    import subprocess

    from benchmarks import main_profile as mp
    below, at = mp.LEAN_BELOW_GFLOPS - 1, mp.LEAN_BELOW_GFLOPS
    assert mp.choose({}, below, "avx512")[0] == "lean" and mp.choose({}, at, "avx512")[0] == "full"
    assert mp.choose({}, 2 * at, "avx2") == ("lean", f"kernels run avx2, not avx512 (float32 FMA peak {2 * at:.0f} "
                                                     "GFLOP/s)")
    assert mp.choose({"FASTAR_MAIN_PROFILE": "full"}, below, "avx2") == ("full", "set by FASTAR_MAIN_PROFILE")
    with pytest.raises(ValueError, match="FASTAR_MAIN_PROFILE must be 'full' or 'lean'.*'fast'"):
        mp.choose({"FASTAR_MAIN_PROFILE": "fast"}, below, "avx512")
    profile, reason = mp.choose({}, below, "avx512")
    script = "\n".join(mp.exports({"FASTAR_BENCH_ROW_S": "inf"}, profile, reason))
    knobs = [k for k in mp.KNOBS if k != "FASTAR_BENCH_ROW_S"]
    out = subprocess.run(["bash", "-c", script + "\n" + "".join(f'echo "${k}"\n' for k in [*knobs, "FASTAR_BENCH_ROW_S",
                         "FASTAR_MAIN_PROFILE", "FASTAR_MAIN_PROFILE_REASON"])], env={"FASTAR_BENCH_ROW_S": "inf"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [mp.KNOBS[k][1] for k in knobs] + ["inf", "lean", reason]
    assert any(full != lean for full, lean, _ in mp.KNOBS.values())  # lean narrows something
    run = run_json()
    run["machine_info"]["fastar"]["main_profile"] = {"profile": "lean", "reason": reason}
    assert f"the main command's **lean** profile ({reason})" in report.render(run)
    assert next(report.history_rows(run))["main_profile"] == "lean"


def test_cpu_load_says_what_other_processes_took():
    """harness.cpu_load from two cpu_snapshot()s: every CPU's busy seconds less this process's, per second of wall
    time; contended past 0.3 core beyond the cores this process's threads leave free, or a steal past 0.25 core."""
    from benchmarks import harness
    start, end = (0.0, 1.0, 10.0, 0.0), (2.0, 4.8, 15.0, 0.0)  # 5 busy s, 3.8 of them this process's, in 2 s
    load = harness.cpu_load(start, end, threads=2, cpus=2)
    assert load["other_cores"] == pytest.approx(0.6) and load["contended"]
    assert not harness.cpu_load(start, end, threads=2, cpus=16)["contended"]  # 14 cores left free
    assert not harness.cpu_load(start, (2.0, 6.0, 15.0, 0.0), threads=2, cpus=2)["contended"]  # 0 cores other
    stolen = harness.cpu_load(start, (2.0, 6.0, 15.0, 0.6), threads=2, cpus=2)
    assert stolen["steal_cores"] == pytest.approx(0.3) and stolen["contended"]
    assert not harness.cpu_load(start, (2.0, 6.0, 15.0, 0.4), threads=2, cpus=2)["contended"]  # 0.2: usual
    assert harness.cpu_load((0.0, 1.0, None, None), end) is None  # no /proc/stat


def test_a_row_run_beside_a_busy_process_is_reported_under_load():
    """compare's rounds beside a process that spins a core: its cpu_load counts that core (this process sleeps),
    and the report marks the row, in its section, the header and the plot's label."""
    import subprocess
    import sys
    import time
    from benchmarks import harness
    if harness.cpu_snapshot()[2] is None:
        pytest.skip("no /proc/stat on this system: cpu_load has nothing to read")
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    try:
        time.sleep(0.3)  # the interpreter started and spins
        e = harness.compare(FakeBenchmark(), lambda: time.sleep(0.2), {"torch backend": lambda: time.sleep(0.2)},
                            baseline="torch backend", rounds=3, warmup=0)
    finally:
        spin.kill()
        spin.wait()
    assert e["cpu_load"]["other_cores"] > 0.5, e["cpu_load"]
    run = run_json()
    run["benchmarks"][0]["extra_info"]["cpu_load"] = {**e["cpu_load"], "contended": True}
    md = report.render(run)
    assert "**Measured under load**: other processes took" in md and "its ratios are not reliable" in md
    assert "**1 of 1 rows ran while other processes took CPU time from them**" in md
    quiet = run_json()
    quiet["benchmarks"][0]["extra_info"]["cpu_load"] = {**e["cpu_load"], "contended": False}
    assert "under load" not in report.render(quiet).lower()
