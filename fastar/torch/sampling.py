"""sample_categorical as the official codebases write it: temperature division, FractalGen's
`softmax(l) < filter_threshold` mask, VAR's top_k_top_p_filtering (topk + sort + softmax + cumsum), then
softmax + torch.multinomial (an exponential race with q drawn from the generator as the kernels draw it, so one seed
gives the kernels' tokens up to the last bits of the probabilities)."""
import torch


def sample_categorical(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_prob=0.0, generator=None):
    V = logits.shape[-1]
    x = logits.reshape(-1, V).float()  # (R, V); one copy (the caller's logits stay), then VAR's in-place filters
    x = x / temperature if temperature != 1 else x.clone()
    if x.shape[0] == 0:
        return torch.empty(logits.shape[:-1], dtype=torch.long, device=logits.device)
    if min_prob > 0:
        x.masked_fill_((x.softmax(dim=-1) < min_prob) & (x < x.amax(dim=-1, keepdim=True)), -torch.inf)
    if 0 < top_k < V:
        x.masked_fill_(x < x.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True), -torch.inf)
    if top_p < 1:
        sorted_logits, sorted_idx = x.sort(dim=-1)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= 1 - top_p
        remove[..., -1] = False
        x.masked_fill_(remove.scatter(-1, sorted_idx, remove), -torch.inf)
    return torch.multinomial(x.softmax(dim=-1), num_samples=1, generator=generator).view(logits.shape[:-1])
