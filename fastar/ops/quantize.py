"""Vector quantization ops: nearest-code search (VAR, LlamaGen) and VAR's multi-scale residual quantizer."""
import torch
import torch.nn.functional as F

from fastar.ops import _msq_up  # noqa: F401  (the msq_up kernel's fake and backward)
from fastar.ops._checks import FLOATS, check_choice, check_same_device, check_tensor
from fastar.ops._registry import Decline, autograd_decline, kernel, op
from fastar.reference import quantize as reference
from fastar.torch import quantize as torch_impl

METRICS = ("l2", "cosine")
FLOATS64 = FLOATS + (torch.float64,)


@op(reference=reference.vq_nearest, torch=torch_impl.vq_nearest)
def vq_nearest(x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2", return_distance: bool = False):
    """Index of the nearest code for every vector of x.

    x (..., D) and codebook (K, D) in float32, bfloat16 or float16; distances are computed in float32.
    metric "l2": squared Euclidean distance, as VAR's quantizer; "cosine": both sides L2-normalized first
    (LlamaGen). Returns int64 indices of shape x.shape[:-1], and with return_distance the float32 squared
    distances too. Ties go to the lowest index (as torch.argmin); a NaN distance never wins, so a vector
    with a NaN gets index 0 and distance NaN. Never builds the N x K distance matrix. The distance has no backward
    in the kernels: when it is asked for under autograd (x or codebook requiring grad), the torch formulation runs.
    """
    name = "vq_nearest"
    check_tensor(name, "x", x, min_dim=1)
    check_tensor(name, "codebook", codebook, dim=2)
    check_choice(name, "metric", metric, METRICS)
    check_same_device(name, x=x, codebook=codebook)
    if codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"{name}: codebook must hold at least one code of D >= 1, got shape {tuple(codebook.shape)}")
    if codebook.shape[1] != x.shape[-1]:
        raise ValueError(f"{name}: codebook has D={codebook.shape[1]} but x has D={x.shape[-1]} (last dim)")

    def run(ops):
        idx, dist = ops.vq_nearest(x.reshape(-1, x.shape[-1]), codebook, metric)
        idx, dist = idx.view(x.shape[:-1]), dist.view(x.shape[:-1])
        return (idx, dist) if return_distance else idx
    return x.device, (return_distance and autograd_decline(name, x, codebook)) or run


@kernel("vq_nearest")
def _vq_nearest(x, codebook, metric):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=torch.float32)


# ---- VAR's multi-scale residual quantization (reference: fastar.reference.quantize; semantics in its docstring) ----
#
# Every function takes the quantizer's tensors: codebook (V, C) = embedding.weight, phi_weight (K, C, C, 3, 3) and
# phi_bias (K, C) = the K Phi convs of quant_resi stacked, patch_nums (pn_1, ..., pn_SN) with pn_SN = H = W.
# Maps are computed in float32 (VAR runs its quantizer with autocast off) and returned in channels_last memory:
# the fused kernels read and write NHWC, where a pixel is a C-vector, and oneDNN / cuDNN convolve it fastest.
# The Phi 3x3 convolutions are torch's; the compiled ops fuse everything around them.

CL = torch.channels_last


def phi_index(SN: int, K: int) -> tuple:
    """The Phi (of K) used at each of SN scales, as VAR's quant_resi[si / (SN - 1)]."""
    return reference.phi_index(SN, K)


def _check_msq(op, codebook, phi_weight, phi_bias, patch_nums, *, C=None, H=None):
    """codebook may be None (functions that take the codes themselves); C and H are those of the maps given."""
    check_tensor(op, "phi_weight", phi_weight, dim=5, dtypes=FLOATS64)
    check_tensor(op, "phi_bias", phi_bias, dim=2, dtypes=FLOATS64)
    check_same_device(op, phi_weight=phi_weight, phi_bias=phi_bias)
    Cv = phi_weight.shape[1]
    if codebook is not None:
        check_tensor(op, "codebook", codebook, dim=2, dtypes=FLOATS64)
        check_same_device(op, codebook=codebook, phi_weight=phi_weight)
        if codebook.shape[0] == 0:
            raise ValueError(f"{op}: codebook must hold at least one code, got shape {tuple(codebook.shape)}")
        Cv = codebook.shape[1]
    if C is not None and Cv != C:
        raise ValueError(f"{op}: the codebook / Phi have Cvae={Cv} but the feature map has C={C}")
    K = phi_weight.shape[0]
    if K == 0 or tuple(phi_weight.shape[1:]) != (Cv, Cv, 3, 3) or tuple(phi_bias.shape) != (K, Cv):
        raise ValueError(f"{op}: phi_weight must be (K, {Cv}, {Cv}, 3, 3) and phi_bias (K, {Cv}), got "
                         f"{tuple(phi_weight.shape)} and {tuple(phi_bias.shape)}")
    if not isinstance(patch_nums, (list, tuple)) or not patch_nums or any(
            isinstance(pn, bool) or not isinstance(pn, int) or pn < 1 for pn in patch_nums):
        raise ValueError(f"{op}: patch_nums must be a non-empty list or tuple of positive ints, got {patch_nums!r}")
    if H is not None and patch_nums[-1] != H:
        raise ValueError(f"{op}: the last patch size patch_nums[-1]={patch_nums[-1]} must equal the map's H=W={H}")
    if max(patch_nums) > patch_nums[-1]:
        raise ValueError(f"{op}: patch_nums must not exceed the last one, got {patch_nums!r}")


def _check_map(op, name, f, C=None):
    check_tensor(op, name, f, dim=4, dtypes=FLOATS64)
    if f.shape[2] != f.shape[3]:
        raise ValueError(f"{op}: {name} must be square (B, C, H, H), got shape {tuple(f.shape)}")
    if C is not None and f.shape[1] != C:
        raise ValueError(f"{op}: {name} has C={f.shape[1]} but the codebook has Cvae={C}")


def _check_idx(op, ms_idx_Bl, patch_nums, V):
    if len(ms_idx_Bl) != len(patch_nums):
        raise ValueError(f"{op}: ms_idx_Bl holds {len(ms_idx_Bl)} scales but patch_nums {len(patch_nums)}")
    B = ms_idx_Bl[0].shape[0]
    for si, (idx, pn) in enumerate(zip(ms_idx_Bl, patch_nums)):
        check_tensor(op, f"ms_idx_Bl[{si}]", idx, dim=2, dtypes=(torch.int64,))
        if tuple(idx.shape) != (B, pn * pn):
            raise ValueError(f"{op}: ms_idx_Bl[{si}] must be (B={B}, {pn * pn}), got {tuple(idx.shape)}")
        if idx.numel() and idx.device.type != "meta" and (idx.min() < 0 or idx.max() >= V):
            raise IndexError(f"{op}: ms_idx_Bl[{si}] holds an index outside [0, {V}) (the codebook size)")


def _phi_folded(phi_weight, phi_bias, resi_ratio, dtype):
    """Phi_k(x) = (1 - r) x + r (W_k * x + b_k) as one conv: r W_k plus (1 - r) on the centre tap of c -> c."""
    C = phi_weight.shape[1]
    eye = torch.eye(C, dtype=dtype, device=phi_weight.device).mul_(1 - resi_ratio)
    w = phi_weight.to(dtype) * resi_ratio + F.pad(eye[None, :, :, None, None], (1, 1, 1, 1))
    return w, phi_bias.to(dtype) * resi_ratio


def _up_phi(ops, src, idx, patch_nums, scales, SN, H, phi, *, summed=False):
    """h = Phi_k(bicubic-up(codes)) of the given scales, a list of (B, C, H, H) channels_last maps: one fused
    gather + upsample for all scales, then one conv per run of scales sharing a Phi (batched, no copy).
    summed: one map per run, its sum. Phi_k is affine, so that is conv_k(sum of the ups) + n b_k: one conv per run."""
    w, b = phi
    up = ops.msq_up(src, idx, list(patch_nums), H)  # (S * B, C, H, H), scale-major
    B = up.shape[0] // len(scales)
    ks = [phi_index(SN, w.shape[0])[si] for si in scales]
    hs, s = [], 0
    while s < len(ks):
        k = ks[s]
        n = next((j for j in range(s, len(ks)) if ks[j] != k), len(ks)) - s
        up_run = up[s * B:(s + n) * B]  # (n * B, C, H, H)
        if summed:
            hs.append(F.conv2d(up_run.view(n, B, *up.shape[1:]).sum(0), w[k], b[k] * n, padding=1))
        else:  # unbind, not split(B): an empty batch (B = 0) still gives one map per scale
            hs += F.conv2d(up_run, w[k], b[k], padding=1).unflatten(0, (n, B)).unbind(0)
        s += n
    return [h.contiguous(memory_format=CL) for h in hs]  # no-op on the conv's own channels_last output


def _residual_steps(ops, f_BChw, codebook, phi, patch_nums):
    """VAR's encode loop; yields (idx_Bl (B, pn^2), f_hat before this scale, h of this scale) per scale.
    h is differentiable when codebook or Phi require grad; f_hat and f_rest are float32 buffers of the kernel."""
    f_rest = f_BChw.detach().to(torch.float32).contiguous(memory_format=CL).clone()  # (B, C, H, W)
    f_hat = torch.zeros_like(f_rest)
    code32 = codebook.detach().to(torch.float32).contiguous()
    SN, H, h = len(patch_nums), patch_nums[-1], None
    for si, pn in enumerate(patch_nums):
        h32 = None if h is None else h.detach().to(torch.float32).contiguous(memory_format=CL)
        idx_Bl = ops.msq_residual_search(f_hat, f_rest, h32, code32, pn)  # applies the previous scale's h
        (h,) = _up_phi(ops, codebook.contiguous(), idx_Bl, [pn], [si], SN, H, phi)
        yield idx_Bl, f_hat, h


def _check_encode(op, f_BChw, codebook, phi_weight, phi_bias, patch_nums):
    """Checks the arguments of the functions that quantize f_BChw."""
    _check_map(op, "f_BChw", f_BChw)
    _check_msq(op, codebook, phi_weight, phi_bias, patch_nums, C=f_BChw.shape[1], H=f_BChw.shape[2])
    check_same_device(op, f_BChw=f_BChw, codebook=codebook)


@kernel("msq_residual_search")
def _msq_residual_search(f_hat, f_rest, h, codebook, pn):
    return f_hat.new_empty(f_hat.shape[0], pn * pn, dtype=torch.int64)


@kernel("msq_add_down")
def _msq_add_down(f_hat, h, patch_nums):
    return f_hat.new_empty(f_hat.shape[0], sum(pn * pn for pn in patch_nums), f_hat.shape[1])


@op(reference=reference.f_to_idxBl_or_fhat, torch=torch_impl.f_to_idxBl_or_fhat)
def f_to_idxBl_or_fhat(f_BChw, codebook, phi_weight, phi_bias, patch_nums, *, to_fhat=False, resi_ratio=0.5):
    """Encode f_BChw (B, C, H, W): per scale, indices (B, pn^2) int64, or the cumulative f_hat (B, C, H, W)
    float32 after that scale when to_fhat. As VectorQuantizer2.f_to_idxBl_or_fhat. The f_hats carry gradients to
    codebook and Phi as VAR's loop does (not to f): under autograd they come from the torch formulation."""
    name = "f_to_idxBl_or_fhat"
    _check_encode(name, f_BChw, codebook, phi_weight, phi_bias, patch_nums)

    def run(ops):
        phi = _phi_folded(phi_weight, phi_bias, resi_ratio, torch.float32)
        with torch.no_grad():
            steps = _residual_steps(ops, f_BChw, codebook.to(torch.float32), phi, patch_nums)
            return [f_hat + h if to_fhat else idx_Bl for idx_Bl, f_hat, h in steps]
    return f_BChw.device, (to_fhat and autograd_decline(name, codebook, phi_weight, phi_bias)) or run


def _accumulate(ops, src, idx, patch_nums, phi, last_one):
    """embed_to_fhat on compiled ops: h of every scale (of every run of scales sharing a Phi when only the last
    f_hat is wanted), then one pass adding them up (copies of f_hat per scale)."""
    SN, H = len(patch_nums), patch_nums[-1]
    hs = _up_phi(ops, src, idx, patch_nums, range(SN), SN, H, phi, summed=last_one)
    B, C = hs[0].shape[:2]
    f_hat = torch.zeros_like(hs[0])  # (B, C, H, H) channels_last
    rows = ops.msq_add_down(f_hat, hs, [0 if last_one else H] * len(hs))  # at pn = H the rows copy f_hat
    if last_one:
        return f_hat
    return [r.view(B, H, H, C).permute(0, 3, 1, 2) for r in rows.split(H * H, dim=1)]  # (B, C, H, H) each


@op(reference=reference.idxBl_to_fhat, torch=torch_impl.idxBl_to_fhat)
def idxBl_to_fhat(ms_idx_Bl, codebook, phi_weight, phi_bias, patch_nums, *, last_one=False, resi_ratio=0.5):
    """Decode per-scale indices (B, pn^2): the cumulative f_hat (B, C, H, H) float32 after each scale, or only the
    last one. As VQVAE.idxBl_to_img's embed_to_fhat(all_to_max_scale=True) before the decoder."""
    name = "idxBl_to_fhat"
    _check_msq(name, codebook, phi_weight, phi_bias, patch_nums)
    _check_idx(name, ms_idx_Bl, patch_nums, codebook.shape[0])

    def run(ops):
        phi = _phi_folded(phi_weight, phi_bias, resi_ratio, torch.float32)
        idx = torch.cat([i.contiguous() for i in ms_idx_Bl], 1)  # (B, L)
        return _accumulate(ops, codebook.to(torch.float32).contiguous(), idx, patch_nums, phi, last_one)
    return codebook.device, autograd_decline(name, codebook, phi_weight, phi_bias) or run


def _rows(h_BChw):
    """(B, pn^2, C) float32 rows of a (B, C, pn, pn) map."""
    B, C, pn, _ = h_BChw.shape
    return h_BChw.to(torch.float32).permute(0, 2, 3, 1).reshape(B, pn * pn, C)


@op(reference=reference.embed_to_fhat, torch=torch_impl.embed_to_fhat)
def embed_to_fhat(ms_h_BChw, phi_weight, phi_bias, patch_nums, *, last_one=False, resi_ratio=0.5):
    """Decode per-scale code maps (B, C, pn, pn): as idxBl_to_fhat, from the codes themselves."""
    name = "embed_to_fhat"
    _check_msq(name, None, phi_weight, phi_bias, patch_nums)
    if len(ms_h_BChw) != len(patch_nums):
        raise ValueError(f"{name}: ms_h_BChw holds {len(ms_h_BChw)} scales but patch_nums {len(patch_nums)}")
    for si, (h, pn) in enumerate(zip(ms_h_BChw, patch_nums)):
        _check_map(name, f"ms_h_BChw[{si}]", h, C=phi_weight.shape[1])
        if h.shape[-1] != pn or h.shape[0] != ms_h_BChw[0].shape[0]:
            raise ValueError(f"{name}: ms_h_BChw[{si}] must be (B, C, {pn}, {pn}), got {tuple(h.shape)}")
        check_same_device(name, phi_weight=phi_weight, **{f"ms_h_BChw[{si}]": h})

    def run(ops):
        phi = _phi_folded(phi_weight, phi_bias, resi_ratio, torch.float32)
        src = torch.cat([_rows(h) for h in ms_h_BChw], 1)  # (B, L, C)
        return _accumulate(ops, src, None, patch_nums, phi, last_one)
    return ms_h_BChw[0].device, autograd_decline(name, *ms_h_BChw, phi_weight, phi_bias) or run


@op(reference=reference.idxBl_to_var_input, torch=torch_impl.idxBl_to_var_input)
def idxBl_to_var_input(ms_idx_Bl, codebook, phi_weight, phi_bias, patch_nums, *, resi_ratio=0.5):
    """Teacher forcing: (B, L - 1, C) float32, the input of scale si + 1 = area-down(cumulative f_hat after si,
    pn_{si+1}) flattened. As VectorQuantizer2.idxBl_to_var_input."""
    name = "idxBl_to_var_input"
    _check_msq(name, codebook, phi_weight, phi_bias, patch_nums)
    _check_idx(name, ms_idx_Bl, patch_nums, codebook.shape[0])

    def run(ops):
        SN, H, (B, C) = len(patch_nums), patch_nums[-1], (ms_idx_Bl[0].shape[0], codebook.shape[1])
        if SN == 1:
            return codebook.new_zeros(B, 0, C, dtype=torch.float32)
        phi = _phi_folded(phi_weight, phi_bias, resi_ratio, torch.float32)
        idx = torch.cat([i.contiguous() for i in ms_idx_Bl[:-1]], 1)  # (B, L - pn_SN^2)
        hs = _up_phi(ops, codebook.to(torch.float32).contiguous(), idx, patch_nums[:-1], range(SN - 1), SN, H, phi)
        return ops.msq_add_down(torch.zeros_like(hs[0]), hs, list(patch_nums[1:]))
    return codebook.device, autograd_decline(name, codebook, phi_weight, phi_bias) or run


@op(reference=reference.get_next_autoregressive_input, torch=torch_impl.get_next_autoregressive_input)
def get_next_autoregressive_input(si, SN, f_hat, h_BChw, phi_weight, phi_bias, patch_nums, *, resi_ratio=0.5):
    """One inference step: f_hat (B, C, H, H) float32 += Phi(bicubic-up(h_BChw (B, C, pn, pn))), in place; returns
    (f_hat, area-down(f_hat, pn_{si+1}) (B, C, pn', pn')), or (f_hat, f_hat) at the last scale. A channels_last f_hat
    is updated directly; any other layout goes through a copy. A float64 f_hat (a .double() model) runs the torch
    formulation, with a one-time warning."""
    name = "get_next_autoregressive_input"
    check_tensor(name, "f_hat", f_hat, dim=4, dtypes=(torch.float32, torch.float64))
    _check_msq(name, None, phi_weight, phi_bias, patch_nums, C=f_hat.shape[1], H=f_hat.shape[2])
    _check_map(name, "h_BChw", h_BChw, C=f_hat.shape[1])
    check_same_device(name, f_hat=f_hat, h_BChw=h_BChw, phi_weight=phi_weight)
    if h_BChw.shape[0] != f_hat.shape[0]:
        raise ValueError(f"{name}: h_BChw {tuple(h_BChw.shape)} and f_hat {tuple(f_hat.shape)} must have the same "
                         f"batch")
    if not 0 <= si < SN or SN != len(patch_nums) or h_BChw.shape[-1] != patch_nums[si]:
        raise ValueError(f"{name}: need 0 <= si < SN = len(patch_nums) and h_BChw of patch size patch_nums[si], got "
                         f"si={si}, SN={SN}, {len(patch_nums)} patch_nums, h_BChw {tuple(h_BChw.shape)}")
    if f_hat.dtype == torch.float64:
        return f_hat.device, Decline("the kernels update a float32 f_hat in place, got float64")
    declined = autograd_decline(name, f_hat, h_BChw, phi_weight, phi_bias)
    if declined:
        return f_hat.device, declined
    return f_hat.device, lambda ops: _next_input(ops, si, SN, f_hat, h_BChw, phi_weight, phi_bias, patch_nums,
                                                 resi_ratio)


def _next_input(ops, si, SN, f_hat, h_BChw, phi_weight, phi_bias, patch_nums, resi_ratio):
    """get_next_autoregressive_input on compiled ops."""
    phi = _phi_folded(phi_weight, phi_bias, resi_ratio, torch.float32)
    H, B, C = f_hat.shape[2], f_hat.shape[0], f_hat.shape[1]
    (h,) = _up_phi(ops, _rows(h_BChw).contiguous(), None, [h_BChw.shape[-1]], [si], SN, H, phi)
    pn_next = patch_nums[si + 1] if si < SN - 1 else 0
    work = f_hat if f_hat.is_contiguous(memory_format=CL) else f_hat.contiguous(memory_format=CL)
    rows = ops.msq_add_down(work, [h], [pn_next])  # (B, pn_next^2, C)
    if work is not f_hat:
        f_hat.copy_(work)
    return f_hat, f_hat if pn_next == 0 else rows.view(B, pn_next, pn_next, C).permute(0, 3, 1, 2)


@op(reference=reference.msq_forward, torch=torch_impl.msq_forward)
def msq_forward(f_BChw, codebook, phi_weight, phi_bias, patch_nums, *, beta=0.25, resi_ratio=0.5):
    """VAR's quantizer training forward (VectorQuantizer2.forward): returns (f_hat (B, C, H, W) with the
    straight-through gradient to f_BChw, codebook hits per scale (SN, V) float32, mean_vq_loss). The loss is the
    mean over scales of beta MSE(f_hat.detach(), f) + MSE(f_hat, f.detach()); it trains f (commitment), the
    codebook and the Phi convs. Computes in float32, or float64 when f_BChw is float64 (for gradcheck)."""
    _check_encode("msq_forward", f_BChw, codebook, phi_weight, phi_bias, patch_nums)
    return f_BChw.device, lambda ops: _msq_forward(ops, f_BChw, codebook, phi_weight, phi_bias, patch_nums, beta,
                                                   resi_ratio)


def _msq_forward(ops, f_BChw, codebook, phi_weight, phi_bias, patch_nums, beta, resi_ratio):
    """msq_forward on compiled ops."""
    dtype = torch.float64 if f_BChw.dtype == torch.float64 else torch.float32
    phi = _phi_folded(phi_weight, phi_bias, resi_ratio, dtype)
    V = codebook.shape[0]
    idx, hs = [], []
    for idx_Bl, _, h in _residual_steps(ops, f_BChw, codebook.to(dtype), phi, patch_nums):
        idx.append(idx_Bl)
        hs.append(h)
    hits_SV = torch.stack([i.reshape(-1).bincount(minlength=V) for i in idx]).to(torch.float32)
    f = f_BChw.to(dtype)
    f_hat_S = torch.stack(hs).cumsum(0)  # (SN, B, C, H, W): f_hat after each scale
    # The mean over all SN * B * C * H * W elements is the mean over scales of the per-scale MSEs.
    mean_vq_loss = (f_hat_S.detach() - f).square().mean().mul(beta) + (f_hat_S - f.detach()).square().mean()
    f_hat = (f_hat_S[-1].detach() - f.detach()).add_(f)
    return f_hat, hits_SV, mean_vq_loss
