"""Argument checks the models' public calls share: each error names the call, the argument and what was wrong."""
import math

import torch


def check_labels(op, labels, batch, num_classes, *, null_class=False, device=None):
    """labels: a 1-D int64 tensor of `batch` entries (None: any) in [0, num_classes), or up to num_classes itself
    with null_class (the unconditional class of a model that embeds it as one more class); on `device` (the
    model's) when given."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        raise TypeError(f"{op}: labels must be a 1-D int64 tensor, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}"
                        + (f" of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else ""))
    if device is not None and labels.device != device:
        raise ValueError(f"{op}: labels are on {labels.device}, the model on {device}")
    if batch is not None and len(labels) != batch:
        raise ValueError(f"{op}: labels must have one entry per image ({batch}), got {len(labels)}")
    top = num_classes + null_class
    check_values(op, labels, 0, top - 1, f"labels must be in [0, {top}) (the model has {num_classes} classes"
                 + (", the last index the null class" if null_class else "") + ")")


def check_values(op, x, low, high, must):
    """Every value of x in [low, high], else ValueError "{op}: {must}, got [min, max]". On the CPU the check reads
    the extremes; on an accelerator it is torch._assert_async (no host sync in a training step: a bad value
    surfaces as a device-side assert, as the embedding it would reach raises anyway); none on the meta device."""
    if x.numel() == 0 or x.device.type == "meta":
        return
    if x.device.type != "cpu":
        torch._assert_async(((x >= low) & (x <= high)).all(), f"{op}: {must}")
        return
    lo, hi = (v.item() for v in x.aminmax())
    if not low <= lo <= hi <= high:
        show = (lambda v: f"{v:.3f}") if x.is_floating_point() else str  # noqa: E731
        raise ValueError(f"{op}: {must}, got [{show(lo)}, {show(hi)}]")


def check_number(op, name, value, *, low=None, high=None, above=None):
    """value a finite real number (NaN and inf refused: they turn filters off or draw nothing), >= low, <= high,
    > above."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high) or (above is not None and
                                                                                     value <= above):
        bounds = " and ".join(b for b in (low is not None and f">= {low}", above is not None and f"> {above}",
                                          high is not None and f"<= {high}") if b)
        raise ValueError(f"{op}: {name} must be {bounds}, got {value!r}")
    return value


def check_count(op, name, value, *, low=1):
    """value an int (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{op}: {name} must be an int >= {low}, got {value!r}")
    return value


def check_maps(op, name, x, channels):
    """x (B, channels, H, W) floating point: an image or a latent map (torch's convolutions say neither which call
    nor which argument)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating-point (B, {channels}, H, W) tensor, got "
                         + (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__))
