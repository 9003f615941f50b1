"""linear as the official codebases run it: nn.Linear's F.linear (torch's addmm)."""
import torch.nn.functional as F


def linear(x, weight, bias=None):
    return F.linear(x, weight.to(x.dtype), bias)
