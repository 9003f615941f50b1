"""Argument checks shared by the ops: each error names the argument, what was expected and what was given."""
import operator

import torch

FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def check_tensor(op, name, t, *, min_dim=None, dim=None, dtypes=FLOATS):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: {name} must have {dim} dims, got shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{op}: {name} must have at least {min_dim} dims, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")


def check_same_device(op, **tensors):
    (first, t0), *rest = tensors.items()
    device = t0.device
    for name, t in rest:
        if t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but {first} is on {device}")


def generator_on(generator, device):
    """Whether generator is a torch.Generator on `device` (one made without an index, torch.Generator("cuda"), is on
    the current device)."""
    if not isinstance(generator, torch.Generator) or generator.device.type != device.type:
        return False
    index = generator.device.index
    return device.type != "cuda" or (index if index is not None else torch.cuda.current_device()) == device.index


def check_generator(op, generator, device):
    """None, or a torch.Generator on `device` (generator_on)."""
    if generator is not None and not generator_on(generator, device):
        raise ValueError(f"{op}: generator must be a torch.Generator on {device}, got {generator!r}"
                         + (f" on {generator.device}" if isinstance(generator, torch.Generator) else ""))


def check_choice(op, name, value, choices):
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {choices}, got {value!r}")


def check_int(op, name, value, *, low=None):
    """value as an int (Python's, numpy's, a 0-dim integer tensor, a SymInt under torch.compile), never a bool or a
    float (which would be truncated); at least `low`."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{op}: {name} must be an int, got the bool {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}") from None
    if low is not None and n < low:
        raise ValueError(f"{op}: {name} must be >= {low}, got {n}")
    return n
