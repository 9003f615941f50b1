"""dropout forward and forward + backward against nn.Dropout (the official codebases' F.dropout: torch's bernoulli_
mask from the global generator, stored for the backward) on an MLP's hidden activations, 8192 x 4096 float32 (a
transformer MLP of width 1024 over 8192 tokens), p 0.1 as FractalGen and MAR train.

The masks are random (fastar's Philox stream, torch's bernoulli_: not the same draws), so what each row compares is
dropout's law, from one more call of each contender before the timed rounds: the kept fraction (1 - p within
binomial noise), the kept values against x / (1 - p) and, with the backward, the gradient of a ones upstream against
mask / (1 - p) (x's exact zeros, whose mask the output does not show, left out)."""
import pytest
import torch
import torch.nn.functional as F

import fastar
from benchmarks.harness import compare

SHAPE = (8192, 4096)
P = 0.1
BASELINE = "F.dropout (nn.Dropout, torch backend)"


def law(x, out, grad):
    """(kept fraction, max |kept value - x / (1 - p)|, max |grad - mask / (1 - p)| or None) of one call."""
    with torch.no_grad():
        kept = out != 0
        value_err = (out[kept] - x[kept] / (1 - P)).abs().max().item()
        nonzero = x != 0
        grad_err = None if grad is None else (grad[nonzero] - kept[nonzero] / (1 - P)).abs().max().item()
    return kept.float().mean().item(), value_err, grad_err


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_dropout(benchmark, backward):
    benchmark.group = f"dropout p {P} {SHAPE[0]} x {SHAPE[1]} float32 {'forward + backward' if backward else 'forward'}"
    x = torch.randn(SHAPE, requires_grad=backward)
    g = torch.ones(SHAPE)

    def run(fn, keep=None):
        def go():
            out = fn(x, P)
            if backward:
                out.backward(g)
                if keep is not None:
                    keep.append(x.grad)
                x.grad = None
            return out
        return go

    laws = {}  # one more call of each, untimed
    for name, fn in (("fastar", fastar.ops.dropout), (BASELINE, F.dropout)):
        grads = []
        laws[name] = law(x, run(fn, grads)(), grads[0] if grads else None)
    std = (P * (1 - P) / x.numel()) ** 0.5  # of a kept fraction
    for name, (kept, value_err, grad_err) in laws.items():  # a contender that breaks the law computes another thing
        assert abs(kept - (1 - P)) < 6 * std and value_err < 1e-5 and (grad_err or 0) < 1e-5, (name, laws[name])
    note = (f"Agreement by dropout's law (the masks differ); max abs diff: that of the two kept fractions (1 - p "
            f"{1 - P}, binomial std {std:.1e}). " + "; ".join(
                f"{name}: kept {kept:.6f}, kept values vs x / (1 - p) {value_err:.1e}"
                + ("" if grad_err is None else f", gradient vs mask / (1 - p) {grad_err:.1e}")
                for name, (kept, value_err, grad_err) in laws.items()))
    compare(benchmark, run(fastar.ops.dropout), {BASELINE: run(F.dropout)}, baseline=BASELINE, rounds=5,
            op="dropout", shape=f"{SHAPE[0]} x {SHAPE[1]}",
            max_abs_diff={BASELINE: abs(laws["fastar"][0] - laws[BASELINE][0])}, note=note)
