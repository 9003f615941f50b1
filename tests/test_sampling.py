"""sample_categorical on every backend: the reference's draws for the same exponentials, torch.multinomial's tokens
for one seed, the drawn distribution against the exact probabilities (chi-square), seeds, the filters' edge cases,
bad inputs, opcheck and torch.compile."""
import pytest
import torch

import fastar
from fastar.reference import sampling as ref
from tests.conftest import backend_device, sanitized

# (temperature, top_k, top_p, min_prob): none, each filter alone, all together, the argmax limits.
FILTERS = [(1.0, 0, 1.0, 0.0), (0.7, 20, 1.0, 0.0), (1.3, 0, 0.9, 0.0), (1.0, 50, 0.95, 1e-3), (1.0, 0, 1.0, 1e-2),
           (2.0, 3, 0.5, 0.0)]
# Shapes: one token, rows not a multiple of a block's 4 warps, FractalGen's 256, a leading batch dim, VAR's 4096.
SHAPES = [(1, 1), (3, 7), (5, 256), (2, 3, 33), (2, 4096)]


def logits_of(shape, dtype=torch.float32, seed=0, scale=3.0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def draw(logits, seed, **kw):
    """(fastar's draws, the exponentials they raced)."""
    out = fastar.ops.sample_categorical(logits, generator=torch.Generator(logits.device).manual_seed(seed), **kw)
    return out, ref.races(logits, torch.Generator(logits.device).manual_seed(seed))


def unexplained(out, logits, race, expected, **kw):
    """Rows where out is not the reference's draw and not within 1e-5 (relative) of winning the reference's race
    (a last-bit difference in the kernel's float32 masses can only swap near-equal ratios)."""
    x = logits.reshape(-1, logits.shape[-1]).double()
    e, _ = ref.keep_mask(x, **kw)
    ratio = e / race.double()
    bad = (out != expected).nonzero().flatten().tolist()
    return [r for r in bad if out[r] < 0 or ratio[r, out[r]] < ratio[r, expected[r]] * (1 - 1e-5)], bad


@pytest.mark.parametrize("shape", sanitized(SHAPES, {(3, 7), (2, 3, 33)}), ids=str)
@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_matches_reference(backend, dtype, shape, filters):
    """The reference's draws for the same exponentials; a row may differ only where the two ratios that decide it
    are within 1e-5 (the kernel's float32 masses against the reference's float64 ones)."""
    T, k, p, mp = filters
    logits = logits_of(shape, dtype, seed=len(shape) + shape[-1]).to(backend_device(backend))
    kw = dict(temperature=T, top_k=k, top_p=p, min_prob=mp)
    out, race = draw(logits, seed=1, **kw)
    assert out.shape == logits.shape[:-1] and out.dtype == torch.long
    assert fastar.last_backend("sample_categorical") == backend
    out, logits, race = out.cpu().flatten(), logits.cpu(), race.cpu()
    expected = ref.sample_from_races(logits, race, **kw).flatten()
    off, bad = unexplained(out, logits, race, expected, **kw)
    assert not off, f"rows {off}: drew {out[off].tolist()}, reference {expected[off].tolist()}"
    assert len(bad) <= max(1, out.numel() // 100)


@pytest.mark.parametrize("filters", [(1.0, 900, 0.96, 0.0), (1.0, 0, 1.0, 1e-4), (0.7, 20, 1.0, 0.0)], ids=str)
def test_torch_multinomial_tokens(backend, filters):
    """One seed, the official formulation's tokens (VAR's top-k / top-p, FractalGen's threshold: softmax then
    torch.multinomial): the same exponentials raced, so the draws differ only where two ratios nearly tie."""
    T, k, p, mp = filters
    dev = backend_device(backend)
    logits = logits_of((300, 4096 if k == 900 else 256), seed=8).to(dev)
    kw = dict(temperature=T, top_k=k, top_p=p, min_prob=mp)
    ours, _ = draw(logits, seed=5, **kw)
    with fastar.use_backend("torch"):
        official, _ = draw(logits, seed=5, **kw)
    assert (ours != official).sum() <= 1 and (ours == official).sum() >= 299

def chi_square(counts, probs):
    """Pearson's statistic over the tokens with mass, and its bound: df + 6 sqrt(2 df) + 10 (p < 1e-6 for any df)."""
    n = counts.sum()
    mass = probs > 0
    assert counts[~mass].sum() == 0, f"drew tokens of probability 0: {(~mass & (counts > 0)).nonzero().flatten()}"
    expected = n * probs[mass]
    stat = ((counts[mass] - expected) ** 2 / expected).sum().item()
    df = int(mass.sum()) - 1
    return stat, df + 6 * (2 * max(df, 1)) ** 0.5 + 10


def check_distribution(filters, device, V=60, N=6000):
    """N draws from one row of V logits against the exact probabilities of the reference's kept set."""
    T, k, p, mp = filters
    row = logits_of((V,), seed=3, scale=1.5)
    kw = dict(temperature=T, top_k=k, top_p=p, min_prob=mp)
    out, _ = draw(row.expand(N, V).contiguous().to(device), seed=2, **kw)
    e, _ = ref.keep_mask(row.double()[None], **kw)
    stat, bound = chi_square(torch.bincount(out.cpu(), minlength=V).double(), (e / e.sum())[0])
    assert stat < bound, f"chi-square {stat:.1f} >= {bound:.1f}"


# Every filter set on the cpu; on simt and cuda the one with every filter on (their draws equal the reference's on
# the same exponentials at every filter set: test_matches_reference), 20 s each under the emulator.
@pytest.mark.parametrize("backend, filters",
                         [("cpu", f) for f in FILTERS] + [(b, FILTERS[3]) for b in ("simt", "cuda")],
                         indirect=["backend"], ids=str)
def test_distribution_chi_square(backend, filters):
    check_distribution(filters, backend_device(backend))


@pytest.mark.parametrize("filters", FILTERS, ids=str)
def test_torch_backend_distribution(filters):
    """The official formulation (the benchmarks' baseline) draws from the same distribution (no ties here)."""
    with fastar.use_backend("torch"):
        check_distribution(filters, "cpu")


def test_seeds(backend):
    logits = logits_of((500, 40), seed=4).to(backend_device(backend))
    a, _ = draw(logits, seed=9, top_k=10)
    b, _ = draw(logits, seed=9, top_k=10)
    c, _ = draw(logits, seed=10, top_k=10)
    assert torch.equal(a, b) and not torch.equal(a, c)


def counts_of(backend, row, n=4000, **kw):
    out, _ = draw(torch.tensor(row).expand(n, len(row)).contiguous().to(backend_device(backend)), seed=0, **kw)
    return torch.bincount(out.cpu(), minlength=len(row))


def test_ties_at_the_top_k_cut(backend):
    """Every token tied with the k-th largest stays: top_k=2 over [3, 2, 2, 2, 1] keeps four tokens, e^3 : 1 : 1 : 1."""
    row = [3.0, 2.0, 2.0, 2.0, 1.0]
    counts = counts_of(backend, row, top_k=2).double()
    assert counts[4] == 0 and (counts[1:4] > 0).all()
    stat, bound = chi_square(counts, torch.tensor([2.718281828, 1, 1, 1, 0]) / 5.718281828)
    assert stat < bound


def test_ties_at_the_top_p_cut(backend):
    """top_p=0.3 over four equal tokens and a light one: the cut falls inside the tie group, which stays whole."""
    counts = counts_of(backend, [1.0, 1.0, 1.0, 1.0, -3.0], top_p=0.3)
    assert counts[4] == 0 and (counts[:4] > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_signed_zeros_tie_at_the_cuts(backend, dtype):
    """-0 and +0 are one logit: top_k=2 over [1, -0, 0] keeps all three tokens, and the top-p cut inside that tie
    group keeps both zeros. The CUDA kernel's order keys once set -0 below +0 and dropped it. 64 rows: a dropped
    token that the reference draws in none of them has odds under 0.79^64 ~ 3e-7."""
    for row, kw in (([1.0, -0.0, 0.0], dict(top_k=2)), ([-0.0, 0.0, 1.0], dict(top_k=2)),
                    ([0.0, -0.0, -5.0], dict(top_p=0.3)), ([-0.0, 0.0, -5.0], dict(top_p=0.3))):
        logits = torch.tensor(row, dtype=dtype).expand(64, 3).contiguous().to(backend_device(backend))
        out, race = draw(logits, seed=3, **kw)
        assert fastar.last_backend("sample_categorical") == backend
        expected = ref.sample_from_races(logits.cpu(), race.cpu(), **kw)
        assert torch.equal(out.cpu(), expected), f"{row} {kw}: counts {torch.bincount(out.cpu(), minlength=3)}"


def test_all_mass_on_one_token(backend):
    assert (counts_of(backend, [0.0, -torch.inf, -torch.inf, 50.0 - 1e4]) == torch.tensor([4000, 0, 0, 0])).all()
    assert (counts_of(backend, [-3.0, 9.0, 1.0], top_p=0.0) == torch.tensor([0, 4000, 0])).all()  # top_p 0: argmax
    assert (counts_of(backend, [-3.0, 9.0, 1.0], min_prob=1.0) == torch.tensor([0, 4000, 0])).all()


def test_tiny_temperature_is_the_argmax(backend):
    """temperature -> 0: the argmax, uniform over tied maxima; 1e-30 and 1e-45 (1 / T overflows) alike."""
    for T in (1e-30, 1e-45):
        counts = counts_of(backend, [0.5, 2.0, 1.99999, 2.0, -torch.inf], temperature=T)
        assert counts[[0, 2, 4]].sum() == 0 and min(counts[1], counts[3]) > 1800


def test_min_prob_drops_light_tokens(backend):
    row = [0.0, 0.0, -5.0, -20.0]  # p ~ [0.497, 0.497, 0.0033, 1e-9]
    assert (counts_of(backend, row, min_prob=1e-2)[2:] == 0).all()
    assert counts_of(backend, row, min_prob=1e-3)[2] > 0


@pytest.mark.parametrize("bad", [[-torch.inf, -torch.inf], [torch.nan, 0.0], [torch.inf, 0.0]],
                         ids=["no finite logit", "NaN", "+inf"])
def test_rows_without_a_token_raise(backend, bad):
    """The kernels draw -1 on such a row (sample_from_races' contract); the op raises, as torch.multinomial, rather
    than return an index that would pick the last token. Rows with some -inf logits (masked tokens) draw. On a GPU
    the op's check is a device-side assert, which would end the process's CUDA context: there the kernel's -1."""
    device = backend_device(backend)
    masked = torch.tensor([[-torch.inf, 1.0], [0.0, -torch.inf]], device=device)
    assert fastar.ops.sample_categorical(masked).tolist() == [1, 0]
    logits = torch.tensor([bad, [0.0, 1.0]], device=device)
    race = torch.ones(2, 2, device=device)
    assert ref.sample_from_races(logits.cpu(), race.cpu()).tolist()[0] == -1
    kernels = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    assert kernels.sample_categorical(logits, race, 1.0, 0, 1.0, 0.0)[0].item() == -1
    if device == "cuda":
        return
    for name in (backend, "reference"):
        with fastar.use_backend(name), pytest.raises(RuntimeError, match="no token to draw"):
            fastar.ops.sample_categorical(logits)
    with fastar.use_backend("torch"), pytest.raises(RuntimeError, match="probability tensor contains"):
        fastar.ops.sample_categorical(logits)  # what the official code runs


@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 5), (0, 1)], ids=str)
def test_empty(backend, shape):
    out = fastar.ops.sample_categorical(torch.zeros(shape, device=backend_device(backend)), top_k=2, top_p=0.5)
    assert out.shape == shape[:-1] and out.dtype == torch.long


def test_generator_made_without_device_index(backend):
    """torch.Generator("cuda") is on the current device, cuda:0 here: accepted for logits on cuda:0."""
    device = torch.device(backend_device(backend))
    logits = torch.zeros(2, 5, device=device)  # on cuda:0 (an index), where the generator below has none
    draws = [fastar.ops.sample_categorical(logits, generator=torch.Generator(device.type).manual_seed(3)) for _ in "ab"]
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("kw,match", [
    (dict(logits=torch.zeros(3, 0)), "at least one token"),
    (dict(logits=torch.zeros(3, 4, dtype=torch.long)), "logits"),
    (dict(logits=torch.zeros(())), "logits"), (dict(temperature=0.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_p=1.5), "top_p"), (dict(min_prob=-0.1), "min_prob"), (dict(generator=3), "generator")])
def test_bad_inputs(kw, match):
    kw = {"logits": torch.zeros(3, 4), **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        fastar.ops.sample_categorical(kw.pop("logits"), **kw)


def test_binding_checks_name_the_argument():
    race = torch.rand(3, 4)
    with pytest.raises(RuntimeError, match=r"race must be \[3, 4\] like logits"):
        torch.ops.fastar.sample_categorical(torch.zeros(3, 4), race[:2], 1.0, 0, 1.0, 0.0)
    with pytest.raises(RuntimeError, match="race must be contiguous float32"):
        torch.ops.fastar.sample_categorical(torch.zeros(3, 4), race.double(), 1.0, 0, 1.0, 0.0)
    with pytest.raises(RuntimeError, match="logits must be contiguous"):
        torch.ops.fastar.sample_categorical(torch.zeros(4, 3).t(), race, 1.0, 0, 1.0, 0.0)
    if fastar.backends()["simt"]:  # the generator's words are the CPU kernel's alone
        with pytest.raises(RuntimeError, match="race must be contiguous float32, got Long"):
            torch.ops.fastar_simt.sample_categorical(torch.zeros(3, 4), race.long(), 1.0, 0, 1.0, 0.0)


def test_words_are_torch_exponentials():
    """The CPU kernel's race from the generator's words: the words are those torch's CPU exponential_ consumes
    (reference.exponentials makes races() from them bit for bit), and the kernel's exponentials, made in float32,
    pick the token with the smallest of them under equal masses (uniform logits: the race is argmin q) except
    where two are within a few ulp."""
    g = torch.Generator().manual_seed(3)
    logits = torch.zeros(3000, 4096)
    words = ref.race_bits(logits, g)
    assert words.dtype == torch.int64 and words.shape == logits.shape
    q = ref.exponentials(words)
    assert torch.equal(q, ref.races(logits, torch.Generator().manual_seed(3)))
    out = torch.ops.fastar.sample_categorical(logits, words, 1.0, 0, 1.0, 0.0)
    two = q.double().topk(2, dim=-1, largest=False).values  # the smallest q of each row, and the next
    near = (two[:, 1] - two[:, 0]) < 1e-6 * two[:, 0]
    first = q.argmin(dim=-1)
    assert ((out == first) | near).all() and (out == first).sum() >= 2990
    # the same words through the float32 draws: the same tokens
    assert torch.equal(out, torch.ops.fastar.sample_categorical(logits, q, 1.0, 0, 1.0, 0.0)) or near.any()


def test_opcheck(backend):
    ns = torch.ops.fastar_simt if backend == "simt" else torch.ops.fastar
    dev = backend_device(backend)
    logits = logits_of((6, 37), seed=6).to(dev)
    race = torch.rand(6, 37, device=dev)
    torch.library.opcheck(ns.sample_categorical.default, (logits, race, 0.8, 5, 0.9, 1e-3))


def test_compiles_fullgraph():
    """One graph; with inductor's random ops falling back to eager's, the same exponentials and so the same draws."""
    @torch.compile(fullgraph=True)
    def pick(logits):
        return fastar.ops.sample_categorical(logits * 2, top_k=4, top_p=0.9)

    logits = logits_of((50, 30), seed=7)
    torch.manual_seed(0)
    with torch._inductor.config.patch(fallback_random=True):
        a = pick(logits)
    torch.manual_seed(0)
    assert torch.equal(a, fastar.ops.sample_categorical(logits * 2, top_k=4, top_p=0.9))
