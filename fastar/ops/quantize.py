"""Vector quantization ops: nearest-code search (VAR, LlamaGen) and, next, VAR's multi-scale residual quantizer."""
import torch

from fastar import _backend
from fastar.ops._checks import check_choice, check_same_device, check_tensor
from fastar.reference import quantize as reference

METRICS = ("l2", "cosine")


def vq_nearest(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2", return_distance: bool = False):
    """Index of the nearest code for every vector of x.

    x (..., D) and codebook (K, D) in float32, bfloat16 or float16; distances are computed in float32.
    metric "l2": squared Euclidean distance, as VAR's quantizer; "cosine": both sides L2-normalized first
    (LlamaGen). Returns int64 indices of shape x.shape[:-1], and with return_distance the float32 squared
    distances too. Ties go to the lowest index (as torch.argmin); a NaN distance never wins, so a vector
    with a NaN gets index 0 and distance NaN. Never builds the N x K distance matrix.
    """
    op = "vq_nearest"
    check_tensor(op, "x", x, min_dim=1)
    check_tensor(op, "codebook", codebook, dim=2)
    check_choice(op, "metric", metric, METRICS)
    check_same_device(op, x=x, codebook=codebook)
    if codebook.shape[0] == 0:
        raise ValueError(f"{op}: codebook must hold at least one code, got shape {tuple(codebook.shape)}")
    if codebook.shape[1] != x.shape[-1]:
        raise ValueError(f"{op}: codebook has D={codebook.shape[1]} but x has D={x.shape[-1]} (last dim)")
    ops, _ = _backend.resolve(op, x.device)
    x_ND = x.reshape(-1, x.shape[-1])
    if ops is None:
        idx, dist = reference.vq_nearest(x_ND, codebook, metric=metric, return_distance=True)
    else:
        idx, dist = ops.vq_nearest(x_ND, codebook, metric)
    idx, dist = idx.view(x.shape[:-1]), dist.view(x.shape[:-1])
    return (idx, dist) if return_distance else idx
