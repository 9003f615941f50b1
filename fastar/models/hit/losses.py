"""HiT's training objectives, as the official code defines them (utils/losses.py, trainers): the non-saturating
logistic GAN loss, R1 on reals (weight 10, every step, no 1/2), balanced consistency regularization (bCR) with
DiffAugment's color, translation and cutout policies, and the EMA generator."""
import torch
import torch.nn.functional as F

import fastar.ops


def d_loss(real_logits, fake_logits):
    """The discriminator's non-saturating logistic loss: mean softplus(-real) + mean softplus(fake) (a scalar)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits):
    """The generator's non-saturating logistic loss: mean softplus(-D(fake)) (a scalar)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits, real, weight=10.0):
    """weight * mean over the batch of |dD(x)/dx|^2; real must require grad; differentiable (create_graph). The
    gradient is taken at the reals only: fastar's ops skip their weights' gradients in it (input_grads_only)."""
    with fastar.ops.input_grads_only():
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return weight * grad.square().flatten(1).sum(1).mean()


def diff_augment(x, generator=None):
    """DiffAugment 'color,translation,cutout' on (B, 3, H, W): brightness, saturation, contrast; a shift by up to
    1/8 of the size with zero fill; a zeroed square of half the size."""
    B, _, H, W = x.shape
    r = lambda *s: torch.rand(*s, generator=generator).to(x)  # noqa: E731
    x = x + (r(B, 1, 1, 1) - 0.5)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (r(B, 1, 1, 1) * 2) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (r(B, 1, 1, 1) + 0.5) + mean
    sy, sx = int(H * 0.125 + 0.5), int(W * 0.125 + 0.5)
    ty = (r(B) * (2 * sy + 1)).long() - sy
    tx = (r(B) * (2 * sx + 1)).long() - sx
    yy = torch.arange(H, device=x.device)[None, :, None] - ty[:, None, None]
    xx = torch.arange(W, device=x.device)[None, None, :] - tx[:, None, None]
    inside = ((yy >= 0) & (yy < H) & (xx >= 0) & (xx < W))[:, None]
    idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).flatten(1)[:, None].expand(-1, x.shape[1], -1)
    x = x.flatten(2).gather(2, idx).view_as(x) * inside
    cy, cx = (r(B) * (H + 1 - H // 2)).long(), (r(B) * (W + 1 - W // 2)).long()
    ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    cut = ((ys[None, :, None] >= cy[:, None, None]) & (ys[None, :, None] < cy[:, None, None] + H // 2) &
           (xs[None, None, :] >= cx[:, None, None]) & (xs[None, None, :] < cx[:, None, None] + W // 2))
    return x * ~cut[:, None]


def consistency(D, real, fake, real_logits, fake_logits, weight=10.0):
    """bCR: weight * (MSE(D(real), D(aug(real))) + MSE(D(fake), D(aug(fake)))), augmented images detached."""
    aug = D(diff_augment(torch.cat([real, fake]).detach()))
    return weight * (F.mse_loss(real_logits, aug[:len(real)]) + F.mse_loss(fake_logits, aug[len(real):]))


@torch.no_grad()
def ema_update(ema, model, decay):
    """Every floating tensor of the EMA model, parameters and BatchNorm statistics alike, moves toward the model's."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
        raise ValueError(f"ema_update: decay must be a number in [0, 1], got {decay!r}")
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(m, 1 - decay)
        else:
            e.copy_(m)
