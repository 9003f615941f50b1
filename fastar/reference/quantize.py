"""Reference quantization, written as VAR's quantizer computes it (models/quant.py, VectorQuantizer2)."""
import torch
import torch.nn.functional as F


def vq_distances(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2") -> torch.Tensor:
    """(N, K) squared distances ||x||^2 + ||e||^2 - 2 x.e, in float32 (float64 inputs stay float64)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_ND = x.reshape(-1, x.shape[-1]).to(dtype)
    e_KD = codebook.to(dtype)
    if metric == "cosine":
        x_ND, e_KD = F.normalize(x_ND, dim=-1), F.normalize(e_KD, dim=-1)
    return (x_ND.square().sum(1, keepdim=True) + e_KD.square().sum(1)).addmm_(x_ND, e_KD.T, alpha=-2)


def vq_nearest(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2", return_distance: bool = False):
    """argmin_k of vq_distances; see fastar.ops.vq_nearest for the contract."""
    d_NK = vq_distances(x, codebook, metric=metric)
    idx_N = torch.where(d_NK.isnan(), torch.inf, d_NK).argmin(1)  # a NaN distance never wins
    idx = idx_N.view(x.shape[:-1])
    if not return_distance:
        return idx
    return idx, d_NK.gather(1, idx_N[:, None]).view(x.shape[:-1])
