"""dropout as the official codebases write it (nn.Dropout: torch's bernoulli mask from the global generator); the
same distribution as fastar's Philox mask, not the same draws."""
import torch.nn.functional as F


def dropout(x, p=0.5, *, training=True, generator=None):
    return F.dropout(x, p, training=training)
