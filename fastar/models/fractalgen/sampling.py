"""Categorical draws for FractalGen's pixels."""
import torch


# TODO(sampling branch): fastar.ops.sample_categorical replaces this function at the merge (same signature).
def sample_categorical(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_prob=0.0, generator=None):
    """One draw per row of logits (..., V) from softmax(logits / temperature), keeping the top_k most likely values
    (0: all), the smallest set with mass >= top_p, and values of probability >= min_prob. Returns (...) int64."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_k > 0:
        keep &= probs >= probs.topk(min(top_k, probs.shape[-1]), dim=-1).values[..., -1:]
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the more likely values
        keep &= torch.zeros_like(keep).scatter(-1, order, before < top_p)
    if min_prob > 0.0:
        keep &= probs >= min_prob
    probs = torch.where(keep, probs, 0).reshape(-1, probs.shape[-1])
    on = generator.device if generator is not None else probs.device  # a CPU generator draws CPU-side
    return torch.multinomial(probs.to(on), 1, generator=generator).to(logits.device).view(logits.shape[:-1])
