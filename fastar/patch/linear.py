"""The row every codebase's patch shares: torch's nn.Linear instances of a live model run fastar.models.layers.linear
(oneDNN for float32 on the CPU, inference and training, on CPUs not made by Intel, where MKL's sgemm takes its AVX2
path; F.linear otherwise). Opt-in (linear=True): the float32 products then sum in oneDNN's order, within the
tolerance rule of the official ones but not bit-identical, so a seeded sampling run may draw other tokens where two
are near-tied. Only with a model: nn.Linear's class is every codebase's in the process, so it is never patched.
MLP_ROW, in the same group for MAR and FractalGen: timm's Mlp (their blocks' MLPs) with fc1's GELU in the product's
epilogue."""
import torch.nn as nn

from fastar.models.layers import linear, linear_gelu, onednn_declines
from fastar.patch._table import Row


def linear_forward(self, input):
    return linear(input, self.weight, self.bias)


def _declines(self, input):
    return onednn_declines(input, self.weight, self.bias)


ROW = Row("linear", "torch.nn.modules.linear", "Linear", "forward", linear_forward, "float32 on the CPU (inference, "
          "and training through oneDNN's forward and d x), the float32 GEMM library oneDNN (CPUs not made by Intel), "
          "fastar's kernels active", _declines)


def mlp_forward(self, x):
    """timm's Mlp.forward(x): fc1 and its GELU as one oneDNN product with the GELU in the epilogue (no second pass
    over the hidden activations; tools/official_mar_patch.py times it in MAR-B's sample_tokens against the official
    code, README), then drop1, norm, fc2 (fastar.models.layers.linear) and drop2 as timm calls them."""
    h = linear_gelu(x, self.fc1.weight, self.fc1.bias, approximate=self.act.approximate)
    return self.drop2(linear(self.norm(self.drop1(h)), self.fc2.weight, self.fc2.bias))


def _mlp_declines(self, x):
    if not (isinstance(self.fc1, nn.Linear) and isinstance(self.fc2, nn.Linear)):
        return f"fc1 / fc2 are {type(self.fc1).__name__} / {type(self.fc2).__name__}, not nn.Linear (use_conv)"
    if type(self.act) is not nn.GELU:
        return f"activation {self.act!r}, not nn.GELU"
    return onednn_declines(x, self.fc1.weight, self.fc1.bias)


MLP_ROW = Row("linear", "timm.layers.mlp", "Mlp", "forward", mlp_forward, "nn.Linear layers, nn.GELU, float32 on "
              "the CPU with oneDNN the float32 GEMM library (CPUs not made by Intel)", _mlp_declines)


def rows(model, wanted):
    """[ROW] when asked for and patching a live model, else []."""
    return [ROW] if wanted and model is not None else []
