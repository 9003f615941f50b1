"""dropout in plain torch ops: Philox4x32-10 (Salmon et al. 2011) in int64 arithmetic, the mask every kernel makes.

Element e of x (its contiguous order) is kept when (w >> 8) >= round(p 2^24), w being word e % 4 of Philox's output
for counter e // 4 under key seed (its low and high 32 bits); a kept element is multiplied by 1 / (1 - p) (rounded to
float32 for the 16- and 32-bit dtypes, the product rounded once to x's dtype), a dropped one by 0 (a NaN or inf stays
NaN, as torch's x * mask). One seed gives one mask on every device and backend that runs the kernels; the op is linear
in x, so its backward is itself.
"""
import torch

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_LO = 0xFFFFFFFF


def _mulhilo(a, m):
    """(hi, lo) 32-bit halves of a * m, a (int64 tensor of 32-bit values) and m a 32-bit constant, in int64 ops
    that never overflow: 16-bit limbs."""
    a0, a1, m0, m1 = a & 0xFFFF, a >> 16, m & 0xFFFF, m >> 16
    mid = a1 * m0 + a0 * m1  # < 2^33
    low = a0 * m0 + ((mid & 0xFFFF) << 16)  # < 2^49
    return a1 * m1 + (mid >> 16) + (low >> 32), low & _LO


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of counters (c0, c1, c2, c3) (int64 tensors of 32-bit values) under key (k0, k1) -> the 4 output
    words (kernels/dropout/philox.h): 10 rounds, the key bumped after each."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _LO, (k1 + _W1) & _LO
    return c0, c1, c2, c3


def keep_mask(n: int, seed: int, p: float, device=None) -> torch.Tensor:
    """(n,) bool: which of n elements the kernels keep."""
    i = torch.arange((n + 3) // 4, dtype=torch.int64, device=device)  # counter (lo(i), hi(i), 0, 0)
    zero = torch.zeros_like(i)
    words = torch.stack(philox4x32(i & _LO, i >> 32, zero, zero, seed & _LO, (seed >> 32) & _LO), 1).flatten()[:n]
    return (words >> 8) >= int(p * 16777216.0 + 0.5)


def dropout_with_seed(x: torch.Tensor, seed: int, p: float) -> torch.Tensor:
    """The kernels' result for x under seed (see the module docstring)."""
    keep = keep_mask(x.numel(), seed, p, x.device).view(x.shape)
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    if x.dtype == torch.float64:
        return x * (keep.to(x.dtype) * scale)
    s = torch.tensor(scale, dtype=torch.float32).item()  # the float32 scale the kernels use
    return (x.float() * (keep.float() * s)).to(x.dtype)


def dropout(x, p=0.5, *, training=True, generator=None):
    """fastar.ops.dropout with the reference's mask (the seed drawn as the op draws it)."""
    if not training or p == 0:
        return x
    return dropout_with_seed(x.contiguous(), draw_seed(generator), p)


def draw_seed(generator=None) -> int:
    """The Philox key of one dropout call: one int64 draw from a CPU generator (the global one when None), so no
    device synchronises for it and torch.manual_seed fixes it."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())
