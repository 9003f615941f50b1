"""The one benchmark runner: contenders alternate inside one pytest-benchmark test, same inputs, same process.

pytest-benchmark times `fastar` (its stats, --benchmark-compare and --benchmark-json work as usual); the other
contenders, and the parts of fastar's work timed alone (e.g. its Phi convolutions), run, timed by us, in a rotating
order, after fastar in even rounds and before it in odd ones (in the untimed setup slot of its rounds), so that
the machine's noise falls on all of them alike and a single round's cold start (first calls of a code path, pages
of new buffers) falls on fastar, not on the baseline. Their min and median, the ratios min(contender) / min(fastar)
and each part's share of fastar's time go into extra_info, which benchmarks/report.py renders. Timings are never
asserted.

An op faster than ROUND_S is timed as a loop of n calls per round, the same n for every contender, and each time is
per call (extra_info "calls_per_round"): a single call of tens of microseconds measures the cold start of its code
path and of the thread pool more than the op (VAR's first decode scales). A row's budget (ROW_S) bounds its rounds
where its warm-up gives their length. A bf16 mode's row reuses its float32 row's runs (record= / measured=) instead
of running the same float32 contenders again.

The models' training rows add where each contender's step goes (step_breakdowns: GEMMs, attention, convolutions,
the rest), from one more, profiled step of each after the timed rounds, and compare those steps' losses and gradient
norms (step_agreement), where the steps draw alike.

Each row also says how much CPU time other processes took while its rounds ran (cpu_load, from /proc/stat and
this process's rusage): past the cores this process's threads leave free, the report marks its ratios unreliable.
"""
import os
import resource
import statistics
import time
from pathlib import Path

import torch

import fastar


def on(backend, fn):
    """fn run under fastar.use_backend(backend): a contender of the same model on another backend."""
    def run():
        with fastar.use_backend(backend):
            return fn()
    return run


def save_samples(img_B3HW, name, nrow=8):
    """The images a model benchmark's fastar run sampled (random weights: they show speed, not learning) as
    benchmarks/results/<name>.png, so that the main command needs no second sampling run to show them."""
    from fastar.models.var.sample import save_grid
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    save_grid(img_B3HW, out / f"{name}.png", nrow=nrow)


def kept(outs, label, fn):
    """fn run without autograd, its result kept as outs[label] (for error_note)."""
    def run():
        with torch.no_grad():
            outs[label] = fn()
    return run


def max_abs_diff(a, b):
    """The largest |a - b| of two results: tensors, or lists of them (a step's maps, a layer stack's outputs)."""
    pairs = zip(a, b) if isinstance(a, (list, tuple)) else [(a, b)]
    with torch.no_grad():
        return max((x - y).abs().max().item() for x, y in pairs)  # torch promotes a bfloat16 result to the other's


def error_note(outs, ref64, baseline, what):
    """Each kept result's max error against float64 over the baseline's (the tolerance rule's ratio)."""
    ref_err = (outs[baseline] - ref64).abs().max().item()
    return f"max error against float64 over {what}: " + ", ".join(
        f"{k} {(v - ref64).abs().max().item() / ref_err:.2f}x" for k, v in outs.items())


def cpu_snapshot():
    """(wall s, this process's CPU s with its waited-for children, every CPU's busy s and steal s since boot from
    /proc/stat's first line (None without it))."""
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return time.perf_counter(), own, None, None
    hz = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal ...: busy is user + nice + system + irq + softirq
    busy = (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / hz
    return time.perf_counter(), own, busy, (ticks[7] if len(ticks) > 7 else 0) / hz


def cpu_load(start, end, threads=None, cpus=None):
    """What other processes took between two cpu_snapshot()s, in cores: {"other_cores", "steal_cores", "cpus",
    "threads", "contended"}; contended when they took more than 0.3 core past the cores this process's `threads`
    (torch's) leave free of the `cpus` it may run on, or the hypervisor stole more than 0.25 core (a shared VM's
    usual steal, up to ~0.2 core on this project's machines, falls on all contenders alike). None without
    /proc/stat."""
    (w0, own0, busy0, steal0), (w1, own1, busy1, steal1) = start, end
    if busy0 is None or busy1 is None or w1 <= w0:
        return None
    threads = torch.get_num_threads() if threads is None else threads
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    wall = w1 - w0
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    steal = (steal1 - steal0) / wall
    free = max(0, cpus - threads)
    return {"other_cores": other, "steal_cores": steal, "cpus": cpus, "threads": threads,
            "contended": other > free + 0.3 or steal > 0.25}


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


ROUND_S = 2e-3  # rounds of ops faster than this loop over calls
# A row's budget in seconds (FASTAR_BENCH_ROW_S; the main command's is 4): where its warm-up gives the length of
# a round of all its contenders, it runs at most as many rounds as fit, and at least MIN_ROUNDS.
ROW_S = float(os.environ.get("FASTAR_BENCH_ROW_S", "inf"))
MIN_ROUNDS = 3
MAX_CALLS = 1000


def calls_per_round(fn):
    """How many calls of fn make a round of about ROUND_S (1 for ops that take that long)."""
    t = min(_seconds(fn) for _ in range(3))
    return max(1, min(MAX_CALLS, int(ROUND_S / max(t, 1e-9))))


def looped(fn, n):
    if n == 1:
        return fn

    def run():
        for _ in range(n):
            fn()
    return run


RECORDED = {}  # key -> {contender: [seconds of each round]}: the rounds of a row that a later row reuses (record=)


def recorded(key, **renamed):
    """The rounds that compare(record=key) kept in this process, as compare's `measured` ({new name: rounds} for
    renamed {new name: recorded name}), or None where that row did not run (a later row then times them itself)."""
    runs = RECORDED.get(key)
    return runs and {new: runs[old] for new, old in renamed.items()}


def compare(benchmark, fastar_fn, contenders, *, baseline, parts=None, rounds=7, warmup=1, op=None, measured=None,
            record=None, **info):
    """Times fastar_fn against contenders ({name: fn}; `baseline` names the one users run today, the headline
    ratio) and the parts ({name: fn}, pieces of fastar's own work); returns extra_info. measured: contenders timed
    by an earlier row of this process ({name: its rounds' seconds}, from recorded()), not run again: a bf16 mode's
    row against the float32 row's runs, the same inputs (single-call model rows only). record: a key under which
    this row's rounds (fastar's and the contenders') are kept for such a row."""
    measured = measured or {}
    if baseline not in {**contenders, **measured}:
        raise ValueError(f"compare: baseline {baseline!r} is not among the contenders {[*contenders, *measured]}")
    others_fns = {**contenders, **(parts or {})}
    warm_s = round_s = None
    for _ in range(warmup):
        warm_s = _seconds(fastar_fn)
        round_s = warm_s + sum(_seconds(fn) for fn in others_fns.values())
    # Without a warm-up there is no cheap first guess: long model runs pass warmup=0 and keep one call per round.
    n = 1 if warm_s is None or warm_s >= ROUND_S else calls_per_round(fastar_fn)
    if measured and n != 1:
        raise ValueError(f"compare: measured contenders are single calls, this row loops {n} calls a round")
    if round_s and rounds > MIN_ROUNDS and rounds * n * round_s > ROW_S:  # the row's budget bounds its rounds
        rounds = max(MIN_ROUNDS, int(ROW_S / (n * round_s)))
    ran = {}  # the backend of fastar's own calls (the contenders after it run the op on theirs)

    def fastar_round(run=looped(fastar_fn, n)):
        run()
        ran["backend"] = fastar.last_backend(op) if op else None
    fastar_fn = fastar_round
    timed = {name: looped(fn, n) for name, fn in others_fns.items()}
    names = list(timed)
    times = {name: [] for name in names}
    turn, round_no = iter(range(10**9)), iter(range(10**9))

    def others():
        k = next(turn)
        k %= max(len(names), 1)  # (none where every contender is measured)
        for name in names[k:] + names[:k]:
            times[name].append(_seconds(timed[name]))

    def setup():  # rounds 0, 2, ...: fastar first, its contenders in the next setup; odd rounds: fastar last
        if next(round_no) % 2:
            others()
            others()

    start = cpu_snapshot()  # after the warm-up: a compile's worker processes are not the machine's noise
    benchmark.pedantic(fastar_fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    if rounds % 2:
        others()  # the last round's, fastar first
    load = cpu_load(start, cpu_snapshot())
    times.update(measured)
    mine = benchmark.stats.stats
    if record:
        RECORDED[record] = {"fastar": list(mine.data), **times}
    extra = benchmark.extra_info
    extra.update(info)
    extra["backend"] = ran.get("backend")
    extra["op"] = op
    extra["rounds"] = rounds
    extra["calls_per_round"] = n
    extra["cpu_load"] = load
    extra["fastar"] = {"min_ms": mine.min * 1e3 / n, "median_ms": mine.median * 1e3 / n}
    for name, ts in times.items():
        extra[name] = {"min_ms": min(ts) * 1e3 / n, "median_ms": statistics.median(ts) * 1e3 / n,
                       "ratio": min(ts) / mine.min}
    extra["baseline"] = baseline
    extra["contenders"] = [*contenders, *measured]
    if measured:
        extra["timed_by_an_earlier_row"] = list(measured)
    extra["parts"] = list(parts or {})  # a part's share of fastar's time is its ratio
    return extra


# The kinds of op a training step's time is split into (op_breakdown): the first kind a fragment of which the op's
# lower-cased name holds; the rest is "other" (normalization, elementwise, the optimizer, autograd and Python).
OP_KINDS = (("GEMMs", ("linear", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "fastar::blas::")),
            ("attention", ("attention",)),
            ("convolutions", ("conv", "blur_pool")))


def op_kind(name):
    """The OP_KINDS kind of a profiler event named `name`, or "other"."""
    name = name.lower()
    return next((kind for kind, fragments in OP_KINDS if any(f in name for f in fragments)), "other")


def op_breakdown(fn):
    """{kind: ms, "other": ms, "total": ms}, largest first: the self CPU time of the ops of one call of fn under
    torch.profiler, by OP_KINDS (the form the report's "Where ...'s time goes" line renders as shares). The
    profiler adds its own overhead: its shares are the figure, not its times."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ms = dict.fromkeys([kind for kind, _ in OP_KINDS] + ["other"], 0.0)
    for e in prof.key_averages():
        ms[op_kind(e.key)] += e.self_cpu_time_total / 1e3
    out = dict(sorted(((k, v) for k, v in ms.items() if v > 0), key=lambda kv: -kv[1]))
    out["total"] = sum(ms.values())
    return out


def step_figures(losses, params):
    """{figure: value} of a training step, to compare across contenders: its loss (a number or a tensor), or its
    losses ({name: loss}), and the norm of params' gradients."""
    losses = losses if isinstance(losses, dict) else {"loss": losses}
    norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in params if p.grad is not None]
    return {**{k: float(v) for k, v in losses.items()}, "gradient norm": torch.stack(norms).norm().item()}


def step_agreement(benchmark, figures, how):
    """A training row's agreement: extra_info["max_abs_diff"] {contender: the largest difference of its figures
    (step_figures, {name: figures} with fastar's) from fastar's}, and a note with how the steps ran and the values."""
    mine = figures["fastar"]
    benchmark.extra_info["max_abs_diff"] = {name: max(abs(v - mine[k]) for k, v in f.items())
                                            for name, f in figures.items() if name != "fastar"}
    text = (f"Agreement ({how}): max abs diff over the {' and the '.join(mine)}; " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.7g}" for k, v in f.items()) for name, f in figures.items()))
    note = benchmark.extra_info.get("note")
    benchmark.extra_info["note"] = f"{note} {text}" if note else text


def step_breakdowns(benchmark, fastar_fn, contenders, params=None):
    """extra_info["breakdown"] of a training row: op_breakdown of one more step of fastar's and of each contender
    ({name: fn}), after the timed rounds. With params, those steps are also the row's agreement (step_agreement):
    each fn returns its loss(es), and draws what the others draw."""
    figures, breakdown = {}, {}
    for name, fn in {"fastar": fastar_fn, **contenders}.items():
        out = []
        breakdown[name] = op_breakdown(lambda fn=fn, out=out: out.append(fn()))
        if params is not None:
            figures[name] = step_figures(out[0], params)
    benchmark.extra_info["breakdown"] = breakdown
    if params is not None:
        step_agreement(benchmark, figures, "the profiled step of each after the timed rounds, same inputs and seeds")
