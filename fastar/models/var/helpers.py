"""Sampling helpers of VAR's inference (FoundationVision/VAR models/helpers.py), with an explicit generator."""
import torch

import fastar


def sample_with_top_k_top_p_(logits_BlV, rng=None, top_k=0, top_p=0.0, more_smooth=False):
    """One token per position from softmax(logits) after top-k / top-p filtering, by fastar.ops.sample_categorical
    (VAR's top_p = 0, off, is its 1), which races the exponentials the official torch.multinomial draws from rng: one
    seed gives the official tokens (up to the last bits of the probabilities). With more_smooth the logits are also filtered in place, as the official code, for the gumbel softmax that
    reads them. Returns idx_Bl (int64)."""
    idx_Bl = fastar.ops.sample_categorical(logits_BlV.float(), top_k=top_k, top_p=top_p if top_p > 0 else 1.0,
                                           generator=rng)
    if more_smooth:
        V = logits_BlV.shape[-1]
        if 0 < top_k < V:  # below the k-th largest; ties with it are kept (top_k >= V keeps every token)
            kth = logits_BlV.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
            logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
        if top_p > 0:  # the smallest logits whose probabilities sum to at most 1 - top_p; the largest always stays
            sorted_logits, sorted_idx = logits_BlV.sort(dim=-1)
            remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= 1 - top_p
            remove[..., -1] = False
            logits_BlV.masked_fill_(remove.scatter(-1, sorted_idx, remove), -torch.inf)
    return idx_Bl


def gumbel_softmax_with_rng(logits, tau, rng=None):
    """Soft Gumbel-softmax (hard=False) whose noise comes from rng, so more_smooth sampling is seeded too."""
    gumbels = -torch.empty_like(logits).exponential_(generator=rng).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)
