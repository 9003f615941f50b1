"""sample_categorical in float64: one index per row of logits from softmax(logits / temperature) after the
min_prob, top-k and top-p filters, drawn by an exponential race (the kernels' algorithm, and torch.multinomial's).

The filters, on x = logits of a row (V tokens), p = softmax(x / temperature):
  min_prob  drop tokens with p < min_prob (FractalGen's `softmax(l) < filter_threshold` test);
  top_k     drop tokens with x below the k-th largest x (ties with it stay, as VAR's `logits < topk.amin`);
  top_p     over the survivors renormalised, drop a token when the mass of the tokens with a strictly larger x is
            >= top_p (VAR's ascending `cumsum <= 1 - top_p`, with ties at the cut kept whole);
and the largest x always stays. The draw is the kept token with the largest p / q, q ~ Exp(1) one per token
(argmax of log p + Gumbel noise), the first on ties: torch.multinomial's algorithm for one sample, with its draws
of q, so one seed gives the token torch.multinomial draws from the same probabilities. A row with a NaN or +inf
logit, or no finite one, draws -1 (sample_from_races, as the kernels), and sample_categorical raises on it
(require_drawn), as torch.multinomial does.
"""
import math

import torch


def races(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """The Exp(1) draws every backend races the kept masses against: (rows, V) float32 on logits' device, drawn as
    torch.multinomial draws them for float32 probabilities (exponential_ on a (rows, V) tensor)."""
    V = logits.shape[-1]
    return torch.empty(math.prod(logits.shape[:-1]), V, dtype=torch.float32,
                       device=logits.device).exponential_(1, generator=generator)


def race_bits(logits: torch.Tensor, generator=None) -> torch.Tensor:
    """The generator's 64-bit words that torch's CPU exponential_ turns into races(logits, generator), one per
    token: (rows, V) int64, drawn by random_() on an int64 tensor (the same random64() per element, top bit
    dropped), for the CPU kernel, which makes its exponentials itself (exponentials below) at the tokens it keeps."""
    V = logits.shape[-1]
    return torch.empty(math.prod(logits.shape[:-1]), V, dtype=torch.int64,
                       device=logits.device).random_(generator=generator)


def exponentials(bits: torch.Tensor) -> torch.Tensor:
    """torch's CPU exponential_ from its words (ATen's exponential_distribution<double>): u = the low 53 bits
    / 2^53, q = float32(-log1p(-u))."""
    return (-torch.log1p(-(bits & (2**53 - 1)).double() * 2.0**-53)).float()


def keep_mask(x: torch.Tensor, *, temperature=1.0, top_k=0, top_p=1.0, min_prob=0.0):
    """x (R, V) float64 -> (e (R, V) the unnormalised probabilities exp((x - max) / temperature) of the kept
    tokens, 0 elsewhere; xmax (R, 1))."""
    R, V = x.shape
    xmax = x.amax(dim=-1, keepdim=True)
    e = torch.exp((x - xmax) / temperature)  # (R, V); NaN on rows without a finite logit, masked below
    keep = x == xmax
    rest = torch.ones_like(keep)
    if min_prob > 0:
        rest &= e >= min_prob * e.sum(dim=-1, keepdim=True)
    if 0 < top_k < V:
        rest &= x >= x.topk(top_k, dim=-1).values[:, -1:]
    keep |= rest
    if top_p < 1:
        ek = torch.where(keep, e, 0.0)
        xs, order = x.sort(dim=-1, descending=True)
        es = ek.gather(-1, order)
        above = es.cumsum(dim=-1) - es  # mass before each sorted position, then its tie group's first one
        group = torch.cat([torch.zeros_like(xs[:, :1], dtype=torch.long),
                           (xs[:, 1:] != xs[:, :-1]).long().cumsum(dim=-1)], dim=-1)
        above = torch.full_like(above, torch.inf).scatter_reduce(-1, group, above, "amin").gather(-1, group)
        keep_sorted = above < top_p * ek.sum(dim=-1, keepdim=True)
        keep &= torch.zeros_like(keep).scatter(-1, order, keep_sorted) | (x == xmax)
    return torch.where(keep, e, 0.0), xmax


def sample_from_races(logits, race, *, temperature=1.0, top_k=0, top_p=1.0, min_prob=0.0):
    """logits (..., V), race (rows, V) of Exp(1) draws -> indices (...) int64."""
    V = logits.shape[-1]
    x = logits.detach().double().reshape(-1, V)  # (R, V)
    if x.shape[0] == 0:
        return torch.empty(logits.shape[:-1], dtype=torch.long, device=logits.device)
    e, xmax = keep_mask(x, temperature=temperature, top_k=top_k, top_p=top_p, min_prob=min_prob)
    idx = (e / race.to(x.device).double()).argmax(dim=-1, keepdim=True)  # the first of equal ratios
    idx = torch.where(xmax.isfinite(), idx, -1)
    return idx.reshape(logits.shape[:-1])


def require_drawn(ids: torch.Tensor) -> torch.Tensor:
    """ids, raising where a row drew -1 (a NaN or +inf logit, or none finite): torch.multinomial raises on such rows,
    and a -1 would index the last token of a codebook or a vocabulary. torch._assert_async: a RuntimeError on the
    CPU, a device-side assert on a GPU (no host sync, as torch.multinomial's own check there)."""
    torch._assert_async((ids >= 0).all(), "sample_categorical: a row of logits has a NaN or +inf, or no finite "
                        "value: no token to draw (torch.multinomial raises on such rows too)")
    return ids


def sample_categorical(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_prob=0.0, generator=None):
    """fastar.ops.sample_categorical in float64 (see the module docstring)."""
    return require_drawn(sample_from_races(logits, races(logits, generator), temperature=temperature, top_k=top_k,
                                           top_p=top_p, min_prob=min_prob))
