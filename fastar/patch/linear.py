"""The row every codebase's patch shares: torch's nn.Linear instances of a live model run fastar.models.layers.linear
(oneDNN for float32 on the CPU, inference and training, on CPUs not made by Intel, where MKL's sgemm takes its AVX2
path; F.linear otherwise). Opt-in (linear=True): the float32 products then sum in oneDNN's order, within the
tolerance rule of the official ones but not bit-identical, so a seeded sampling run may draw other tokens where two
are near-tied. Only with a model: nn.Linear's class is every codebase's in the process, so it is never patched."""
from fastar.models.layers import linear, onednn_declines
from fastar.patch._table import Row


def linear_forward(self, input):
    return linear(input, self.weight, self.bias)


def _declines(self, input):
    return onednn_declines(input, self.weight, self.bias)


ROW = Row("linear", "torch.nn.modules.linear", "Linear", "forward", linear_forward, "float32 on the CPU (inference, "
          "and training through oneDNN's forward and d x), the float32 GEMM library oneDNN (CPUs not made by Intel), "
          "fastar's kernels active", _declines)


def rows(model, wanted):
    """[ROW] when asked for and patching a live model, else []."""
    return [ROW] if wanted and model is not None else []
