"""Categorical sampling shared by the models (VAR's top-k / top-p, FractalGen's pixels, DALL-E's tokens):
temperature, the filters and the draw in one pass over the logits and their exponentials (csrc/cpu/sampling.cpp,
csrc/kernels/sampling/sampling.cu)."""
import math

import torch

from fastar.ops._checks import check_generator, check_tensor
from fastar.ops._registry import kernel, op
from fastar.reference import sampling as reference
from fastar.torch import sampling as torch_impl


@kernel("sample_categorical")  # fake kernel, for torch.compile / opcheck
def _sample_categorical(logits, race, temperature, top_k, top_p, min_prob):
    return logits.new_empty(logits.shape[:-1], dtype=torch.long)


@op(reference=reference.sample_categorical, torch=torch_impl.sample_categorical)
def sample_categorical(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_prob=0.0, generator=None):
    """One token per row of logits (..., V) float32 / bfloat16 / float16 -> indices (...) int64.

    The draw is from p = softmax(logits / temperature) restricted to the tokens that pass every filter, renormalised:
      min_prob  drop tokens with p < min_prob (0: off). FractalGen's filter_threshold applies this test to the
                conditional logits before mixing them for cfg (PixelLoss.sample); on the mixed logits it is this
                plain filter.
      top_k     keep the tokens whose logit is >= the k-th largest, ties with it included (0 or >= V: off).
      top_p     keep the smallest set of largest logits holding top_p of what survived the above, ties at the cut
                included (1: off; 0: the argmax).
    The largest logit always stays. temperature > 0 divides the logits (FractalGen multiplies: pass 1 / its
    temperature); temperature -> 0 is the argmax, uniform over tied maxima. A row with a NaN or +inf logit, or
    without a finite one, raises RuntimeError as torch.multinomial does (on a GPU a device-side assert, so no host
    sync; the kernels draw -1 there, which as an index would be the last token).
    generator: the draw is torch.multinomial's for one sample, an exponential race (the kept token with the largest
    p / q, q ~ Exp(1) one per token), with q drawn from the generator as torch.multinomial draws it for float32
    probabilities: one seed gives the official code's token (VAR's, FractalGen's torch.multinomial) up to the last
    bits of p, on every backend (the `torch` backend is that official formulation).
    """
    op = "sample_categorical"
    check_tensor(op, "logits", logits, min_dim=1)
    if logits.shape[-1] < 1:
        raise ValueError(f"{op}: logits must have at least one token in its last dim, got shape {tuple(logits.shape)}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"{op}: top_k must be an int >= 0 (0: off), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 <= top_p <= 1:
        raise ValueError(f"{op}: top_p must be in [0, 1] (1: off), got {top_p!r}")
    if not isinstance(min_prob, (int, float)) or not 0 <= min_prob <= 1:
        raise ValueError(f"{op}: min_prob must be in [0, 1] (0: off), got {min_prob!r}")
    check_generator(op, generator, logits.device)
    V = logits.shape[-1]

    def run(ops):
        rows = logits.reshape(-1, V).contiguous()  # (R, V)
        # (R, V): the CPU kernel takes the generator's words and makes only the exponentials it races (torch's
        # serial exponential_ was most of the op's time); the CUDA and simt kernels, and graphs (dynamo does not trace
        # random_), take float32 Exp(1) draws
        cpu = logits.device.type == "cpu" and ops is torch.ops.fastar and not torch.compiler.is_compiling()
        race = (reference.race_bits if cpu else reference.races)(logits, generator)
        return reference.require_drawn(ops.sample_categorical(rows, race, float(temperature), top_k, float(top_p),
                                                              float(min_prob)).view(logits.shape[:-1]))
    return logits.device, run
