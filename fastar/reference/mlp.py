"""mlp in plain torch: a transformer MLP's two Dense layers with the exact GELU between them, plus an optional
residual (HiT's MLP blocks, with their BatchNorm folded into the first layer); or with softmax_group g a softmax over
each g consecutive hidden units instead of the GELU (an attention to g keys folded into two Dense layers: HiT's
cross-attention to its latents)."""
import math

import torch
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


def gelu_with_derivative(x, approximate="none"):
    """(gelu(x), gelu'(x)) from the definitions: x Phi(x) and Phi(x) + x phi(x), Phi the standard normal CDF and phi
    its density; with approximate "tanh", x (1 + tanh u) / 2, u = sqrt(2 / pi) (x + 0.044715 x^3), and its
    derivative (1 + tanh u) / 2 + x (1 - tanh^2 u) u'(x) / 2. Both in forms exact in float64 down to the tails."""
    if approximate == "tanh":  # (1 + tanh u) / 2 = sigmoid(2 u), (1 - tanh^2 u) / 4 = sigmoid(2 u) sigmoid(-2 u):
        k0, k1 = math.sqrt(2 / math.pi), 0.044715  # no cancellation in the negative tail
        u = k0 * (x + k1 * x ** 3)
        s = torch.sigmoid(2 * u)
        return x * s, s + 2 * x * s * torch.sigmoid(-2 * u) * k0 * (1 + 3 * k1 * x * x)
    cdf = torch.special.erfc(-x / math.sqrt(2)) / 2  # torch.special.ndtr's float64 is 0 below x ~ -8.3
    return x * cdf, cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
