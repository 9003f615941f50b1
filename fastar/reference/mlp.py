"""mlp in plain torch: a transformer MLP's two Dense layers with the exact GELU between them, plus an optional
residual (HiT's MLP blocks, with their BatchNorm folded into the first layer); or with softmax_group g a softmax over
each g consecutive hidden units instead of the GELU (an attention to g keys folded into two Dense layers: HiT's
cross-attention to its latents)."""
import torch.nn.functional as F


def mlp(x, w1, b1, w2, b2, residual=None, out=None, *, softmax_group=0):
    h = F.linear(x, w1, b1)
    if softmax_group:
        h = h.unflatten(-1, (-1, softmax_group)).softmax(-1).flatten(-2)
    else:
        h = F.gelu(h)
    y = F.linear(h, w2, b2)
    y = y if residual is None else residual + y
    return y if out is None else out.copy_(y)
