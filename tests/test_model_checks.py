"""fastar.models.checks: the value checks the models' public calls share (labels, token ids, pixel ranges)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastar.models.checks import check_labels, check_values


class Syncs(TorchDispatchMode):
    """Counts the ops that copy a value to the host (Tensor.item, int(t), ...)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.name() in ("aten::_local_scalar_dense", "aten::is_nonzero")
        return func(*args, **(kwargs or {}))


def test_values_outside_the_range_are_named_with_their_extremes():
    with pytest.raises(ValueError, match=r"^Op: ids must be in \[0, 4\), got \[-1, 9\]$"):
        check_values("Op", torch.tensor([3, -1, 9, 0]), 0, 3, "ids must be in [0, 4)")
    with pytest.raises(ValueError, match=r"got \[0.000, 1.250\]$"):
        check_values("Op", torch.tensor([0.0, 1.25]), 0.0, 1.0, "pixels must be in [0, 1]")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 11\) \(the model has 10 classes, the last index "
                                         r"the null class\), got \[0, 11\]"):
        check_labels("Op", torch.tensor([0, 11]), 2, 10, null_class=True)
    for bound in (0, 3):  # both ends are inside
        check_values("Op", torch.tensor([bound]), 0, 3, "ids")
    check_values("Op", torch.tensor([], dtype=torch.long), 0, 3, "ids")


def test_meta_tensors_are_checked_by_shape_only():
    """A model built on the meta device (parameter counts, the 12 B DALL-E) takes meta inputs: no value to read."""
    labels = torch.empty(3, dtype=torch.long, device="meta")
    check_labels("Op", labels, 3, 10)
    with pytest.raises(ValueError, match="one entry per image"):
        check_labels("Op", labels, 2, 10)


def test_cpu_check_reads_the_extremes_once():
    with Syncs() as mode:
        check_labels("Op", torch.arange(10), 10, 10)
    assert mode.count == 2  # min and max, one aminmax


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_check_does_not_wait_for_the_device():
    """On a GPU the range check is an asynchronous device assert: a training step's forward does not stall."""
    with Syncs() as mode:
        check_labels("Op", torch.arange(10, device="cuda"), 10, 10)
    assert mode.count == 0
    torch.cuda.synchronize()  # the assert held
