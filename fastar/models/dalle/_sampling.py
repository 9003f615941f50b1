"""Token sampling for DALL-E until fastar.ops.sample_categorical lands."""
import torch


# TODO(sampling branch): replace with fastar.ops.sample_categorical (same signature) at merge.
def sample_categorical(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_prob=0.0, generator=None):
    """logits (N, V) -> (N,) int64 drawn from softmax(logits / temperature), restricted to the top_k (0: all),
    the smallest set whose probability reaches top_p, and tokens of probability >= min_prob (the likeliest
    always kept)."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"sample_categorical: logits must be (N, V) floating point, got {logits.dtype} "
                         f"{tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"sample_categorical: temperature must be > 0, got {temperature}")
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    probs = logits.softmax(1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(1, descending=True)
        drop = sorted_p.cumsum(1) - sorted_p >= top_p  # tokens past the nucleus (the first always stays)
        probs = probs.scatter(1, order, sorted_p.masked_fill(drop, 0))
    if min_prob > 0:
        keep = (probs >= min_prob) | (probs == probs.amax(1, keepdim=True))  # the likeliest token always stays
        probs = torch.where(keep, probs, 0)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
