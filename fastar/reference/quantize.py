"""Reference quantization, written as VAR's quantizer computes it (models/quant.py, VectorQuantizer2).

Multi-scale residual quantization (VAR's models/quant.py): per scale si with patch size pn,
z = area-down(f_rest, pn) -> idx = nearest code -> h = Phi_k(bicubic-up(codebook[idx], H)) -> f_hat += h,
f_rest -= h. Phi_k(x) = (1 - r) x + r conv3x3_k(x) with the Phi k of scale si from phi_index(SN, K).
phi_weight (K, C, C, 3, 3) and phi_bias (K, C) stack the K Phi convs (quant_resi.qresi_ls.k.{weight,bias}).
"""
import torch
import torch.nn.functional as F

# Phi index per scale of VAR's PhiPartiallyShared for (SN, K) = (10, 4). Scales 2 and 7 are exact ties in real
# arithmetic that float64 resolves this way: the table is written out, not recomputed.
PHI_INDEX_SN10_K4 = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)


def phi_index(SN: int, K: int) -> tuple:
    """Phi used at each of SN scales among K Phis: quant_resi[si / (SN - 1)] of VAR (quant.py:219-226)."""
    if (SN, K) == (10, 4):
        return PHI_INDEX_SN10_K4
    if K == 1:
        return (0,) * SN
    lo = 1 / 3 / K if K == 4 else 1 / 2 / K
    step = (1 - 2 * lo) / (K - 1)  # np.linspace(lo, 1 - lo, K) in the same float64 steps
    ticks = [lo + i * step for i in range(K - 1)] + [1 - lo]
    at = [si / (SN - 1) if SN > 1 else 0.0 for si in range(SN)]
    return tuple(min(range(K), key=lambda k: (abs(ticks[k] - a), k)) for a in at)


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
    idx_N = d_NK.argmin(1)  # VAR's search; torch.argmin picks a NaN, which must never win: those rows again
    nan_N = d_NK.gather(1, idx_N[:, None])[:, 0].isnan()
    if nan_N.device.type != "meta" and nan_N.any():
        idx_N[nan_N] = d_NK[nan_N].nan_to_num(nan=torch.inf, posinf=torch.inf).argmin(1)
    idx = idx_N.view(x.shape[:-1])
    if not return_distance:
        return idx
    return idx, d_NK.gather(1, idx_N[:, None]).view(x.shape[:-1])


# ---- multi-scale residual quantization: the building blocks, then VAR's functions ----

def area_down(f_BChw: torch.Tensor, pn: int) -> torch.Tensor:
    """(B, C, pn, pn), a new tensor: F.interpolate(mode='area'), an exact copy at pn == H (VAR's last scale)."""
    return F.interpolate(f_BChw, size=(pn, pn), mode="area")


def bicubic_up(h_BChw: torch.Tensor, H: int) -> torch.Tensor:
    """(B, C, H, H): F.interpolate(mode='bicubic', align_corners=False); the identity at pn == H."""
    return h_BChw if h_BChw.shape[-1] == H else F.interpolate(h_BChw, size=(H, H), mode="bicubic")


def phi(h_BChw: torch.Tensor, phi_weight, phi_bias, k: int, resi_ratio: float = 0.5) -> torch.Tensor:
    """Phi_k(h) = h (1 - r) + conv3x3_k(h) r (VAR's Phi.forward)."""
    return h_BChw.mul(1 - resi_ratio) + F.conv2d(h_BChw, phi_weight[k], phi_bias[k], padding=1).mul_(resi_ratio)


def embed(idx_Bl: torch.Tensor, codebook: torch.Tensor, pn: int) -> torch.Tensor:
    """(B, C, pn, pn) codes of the (B, pn * pn) indices of one scale."""
    return F.embedding(idx_Bl, codebook).transpose(1, 2).reshape(idx_Bl.shape[0], codebook.shape[1], pn, pn)


def _wide(*tensors):
    """The tensors in float64 if one of them is, else in float32: the ops' results are float32 from bfloat16 and
    float16 inputs too."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.to(dtype) for t in tensors]


def _up_phi(h_BChw, si, SN, H, phi_weight, phi_bias, resi_ratio):
    k = phi_index(SN, phi_weight.shape[0])[si]
    return phi(bicubic_up(h_BChw, H), phi_weight, phi_bias, k, resi_ratio)


def f_to_idxBl_or_fhat(f_BChw, codebook, phi_weight, phi_bias, patch_nums, *, to_fhat=False, resi_ratio=0.5):
    """Encode: per scale, (B, pn * pn) int64 indices, or the cumulative f_hat (B, C, H, W) when to_fhat."""
    f_BChw, codebook, phi_weight, phi_bias = _wide(f_BChw.detach(), codebook, phi_weight, phi_bias)
    B, C, H, W = f_BChw.shape
    SN = len(patch_nums)
    f_rest = f_BChw.clone()
    f_hat = torch.zeros_like(f_rest)
    out = []
    for si, pn in enumerate(patch_nums):
        z_NC = area_down(f_rest, pn).permute(0, 2, 3, 1).reshape(-1, C)
        idx_Bl = vq_nearest(z_NC, codebook).view(B, pn * pn)
        h_BChw = _up_phi(embed(idx_Bl, codebook, pn), si, SN, H, phi_weight, phi_bias, resi_ratio)
        f_hat.add_(h_BChw)
        f_rest.sub_(h_BChw)
        out.append(f_hat.clone() if to_fhat else idx_Bl)
    return out


def embed_to_fhat(ms_h_BChw, phi_weight, phi_bias, patch_nums, *, last_one=False, resi_ratio=0.5):
    """Decode per-scale code maps (B, C, pn, pn): cumulative f_hat (B, C, H, W) per scale, or the last one."""
    *ms_h_BChw, phi_weight, phi_bias = _wide(*ms_h_BChw, phi_weight, phi_bias)
    SN, H = len(patch_nums), patch_nums[-1]
    f_hat = ms_h_BChw[0].new_zeros(ms_h_BChw[0].shape[0], ms_h_BChw[0].shape[1], H, H)
    out = []
    for si, h_BChw in enumerate(ms_h_BChw):
        f_hat.add_(_up_phi(h_BChw, si, SN, H, phi_weight, phi_bias, resi_ratio))
        if not last_one:  # VAR's all_to_max_scale loop keeps no copies
            out.append(f_hat.clone())
    return f_hat if last_one else out


def idxBl_to_fhat(ms_idx_Bl, codebook, phi_weight, phi_bias, patch_nums, *, last_one=False, resi_ratio=0.5):
    """Decode per-scale indices (B, pn * pn): embed_to_fhat of their codes."""
    ms_h_BChw = [embed(idx_Bl, codebook, pn) for idx_Bl, pn in zip(ms_idx_Bl, patch_nums)]
    return embed_to_fhat(ms_h_BChw, phi_weight, phi_bias, patch_nums, last_one=last_one, resi_ratio=resi_ratio)


def idxBl_to_var_input(ms_idx_Bl, codebook, phi_weight, phi_bias, patch_nums, *, resi_ratio=0.5):
    """Teacher forcing: (B, L - 1, C), the input of scale si + 1 being area-down(cumulative f_hat, pn_{si+1})."""
    codebook, phi_weight, phi_bias = _wide(codebook, phi_weight, phi_bias)
    SN, H, C = len(patch_nums), patch_nums[-1], codebook.shape[1]
    B = ms_idx_Bl[0].shape[0]
    f_hat = codebook.new_zeros(B, C, H, H)
    next_scales = []
    for si in range(SN - 1):
        h_BChw = embed(ms_idx_Bl[si], codebook, patch_nums[si])
        f_hat = f_hat + _up_phi(h_BChw, si, SN, H, phi_weight, phi_bias, resi_ratio)  # not in place: differentiable
        pn_next = patch_nums[si + 1]
        next_scales.append(area_down(f_hat, pn_next).reshape(B, C, pn_next * pn_next).transpose(1, 2))
    return torch.cat(next_scales, dim=1) if next_scales else codebook.new_zeros(B, 0, C)


def get_next_autoregressive_input(si, SN, f_hat, h_BChw, phi_weight, phi_bias, patch_nums, *, resi_ratio=0.5):
    """One inference step: f_hat += Phi(bicubic-up(h_BChw)) in place; returns (f_hat, next scale's input
    area-down(f_hat) (B, C, pn', pn')), or (f_hat, f_hat) at the last scale."""
    H = f_hat.shape[-1]
    h_BChw, phi_weight, phi_bias = (t.to(f_hat.dtype) for t in (h_BChw, phi_weight, phi_bias))
    f_hat.add_(_up_phi(h_BChw, si, SN, H, phi_weight, phi_bias, resi_ratio))
    if si == SN - 1:
        return f_hat, f_hat
    return f_hat, area_down(f_hat, patch_nums[si + 1])


def msq_forward(f_BChw, codebook, phi_weight, phi_bias, patch_nums, *, beta=0.25, resi_ratio=0.5):
    """VAR's quantizer training forward: (f_hat (B, C, H, W) with the straight-through gradient, codebook hits
    per scale (SN, V) float32, mean_vq_loss = mean over scales of beta MSE(f_hat.detach(), f) + MSE(f_hat,
    f.detach())). Gradients reach f (commitment and straight-through), the codebook and the Phi convs. Computes in
    float64 when f_BChw is float64, else in float32 (every tensor taken there, differentiably)."""
    dtype = torch.float64 if f_BChw.dtype == torch.float64 else torch.float32
    f_BChw, codebook, phi_weight, phi_bias = (t.to(dtype) for t in (f_BChw, codebook, phi_weight, phi_bias))
    B, C, H, W = f_BChw.shape
    SN, V = len(patch_nums), codebook.shape[0]
    f_no_grad = f_BChw.detach()
    f_rest = f_no_grad.clone()
    f_hat = torch.zeros_like(f_rest)
    hits_SV = torch.zeros(SN, V, dtype=torch.float32, device=f_BChw.device)
    mean_vq_loss = 0.0
    for si, pn in enumerate(patch_nums):
        z_NC = area_down(f_rest, pn).permute(0, 2, 3, 1).reshape(-1, C).detach()
        idx_Bl = vq_nearest(z_NC, codebook.detach()).view(B, pn * pn)
        if not f_BChw.is_meta:  # bincount has no meta kernel: meta inputs give meta results
            hits_SV[si] = idx_Bl.reshape(-1).bincount(minlength=V).float()
        h_BChw = _up_phi(embed(idx_Bl, codebook, pn), si, SN, H, phi_weight, phi_bias, resi_ratio)
        f_hat = f_hat + h_BChw
        f_rest = f_rest - h_BChw.detach()
        mean_vq_loss = mean_vq_loss + F.mse_loss(f_hat.detach(), f_BChw).mul(beta) + F.mse_loss(f_hat, f_no_grad)
    mean_vq_loss = mean_vq_loss * (1.0 / SN)
    f_hat = (f_hat.detach() - f_no_grad).add_(f_BChw)
    return f_hat, hits_SV, mean_vq_loss
