"""blur_pool in plain torch ops: BlurPool2D, the blur-then-subsample of StyleGAN2's and HiT's discriminators.

y[b, c, i, j] = sum over a, e in 0..3 of f[a] f[e] x[b, c, 2i + a - 1, 2j + e - 1], f = [1, 3, 3, 1] / 8, x zero
outside its H x W: F.pad(x, (1, 1, 1, 1)) then the normalized 4x4 binomial per channel at stride 2, so y is
(B, C, H // 2, W // 2). The op is linear in x; its backward is the transposed filter (blur_pool_backward), whose own
backward is blur_pool again.
"""
import torch

TAPS = (1 / 8, 3 / 8, 3 / 8, 1 / 8)  # f, exact in binary


def _taps_sum(x, dim, out_len):
    """sum over a of f[a] x[.., 2 i + a - 1, ..] along dim (zero padded by 1 each side) for i < out_len."""
    x = torch.nn.functional.pad(x.movedim(dim, -1), (1, 1))
    y = sum(f * x[..., a:a + 2 * out_len:2] for a, f in enumerate(TAPS))
    return y.movedim(-1, dim)


def blur_pool(x):
    """x (B, C, H, W), H and W >= 2 -> (B, C, H // 2, W // 2): columns then rows of taps, in x's dtype."""
    H, W = x.shape[-2:]
    return _taps_sum(_taps_sum(x, -1, W // 2), -2, H // 2)


def blur_pool_backward(grad, height, width):
    """d blur_pool(x) / d x applied to grad (B, C, height // 2, width // 2) -> (B, C, height, width): each output's
    taps scattered back onto the input positions they read."""
    out = grad.new_zeros(*grad.shape[:-2], height + 2, width + 2)  # the padded input
    Ho, Wo = grad.shape[-2:]
    for a, fa in enumerate(TAPS):
        for e, fe in enumerate(TAPS):
            out[..., a:a + 2 * Ho:2, e:e + 2 * Wo:2] += (fa * fe) * grad
    return out[..., 1:height + 1, 1:width + 1]
