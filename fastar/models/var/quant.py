"""VAR's multi-scale residual quantizer as a module (FoundationVision/VAR models/quant.py, VectorQuantizer2).

Holds the checkpoint's tensors (embedding, quant_resi.qresi_ls.{k}, ema_vocab_hit_SV) and the official method
names; the residual loops themselves are fastar.ops' multi-scale quantization ops.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# Phi used at each of the 10 scales of both released schedules. Scales 2 and 7 are exact ties between two Phis in
# real arithmetic; the official float64 argmin resolves them this way, so the table is written out, not computed.
PHI_IDX_SN10 = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)


def phi_indices(SN, K):
    """The Phi each scale uses: the one whose tick is nearest to si/(SN-1) (ticks as official for K = 4)."""
    if SN == 10 and K == 4:
        return PHI_IDX_SN10
    ticks = torch.linspace(1 / 3 / K, 1 - 1 / 3 / K, K, dtype=torch.float64)
    return tuple(int((ticks - si / (SN - 1)).abs().argmin()) for si in range(SN))


class Phi(nn.Conv2d):
    """h -> (1 - r) h + r conv3x3(h): the residual refinement of an upsampled code map, r = |quant_resi| = 0.5."""

    def __init__(self, Cvae, quant_resi):
        super().__init__(Cvae, Cvae, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw):
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


class PhiPartiallyShared(nn.Module):
    """K Phis shared by neighbouring scales (the released VAE: K = 4 for 10 scales)."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls

    def for_scale(self, si, SN):
        return self.qresi_ls[phi_indices(SN, len(self.qresi_ls))[si]]


class VectorQuantizer2(nn.Module):
    def __init__(self, vocab_size, Cvae, v_patch_nums, beta=0.25, quant_resi=0.5, share_quant_resi=4):
        super().__init__()
        self.vocab_size, self.Cvae, self.v_patch_nums, self.beta = vocab_size, Cvae, tuple(v_patch_nums), beta
        self.quant_resi = PhiPartiallyShared(nn.ModuleList(Phi(Cvae, quant_resi) for _ in range(share_quant_resi)))
        # per-scale EMA of codebook usage: a training statistic, but a checkpoint key
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    def phis(self):
        SN = len(self.v_patch_nums)
        return [self.quant_resi.for_scale(si, SN) for si in range(SN)]

    # ===================== VAE training =====================
    def forward(self, f_BChw):
        """(f_hat with a straight-through gradient, per-scale codebook usage in %, vq loss)."""
        f_no_grad = f_BChw.detach()
        f_rest, f_hat = f_no_grad.clone(), torch.zeros_like(f_no_grad)
        H, SN, loss = f_BChw.shape[-1], len(self.v_patch_nums), 0.0
        usages = []
        for si, pn in enumerate(self.v_patch_nums):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, self.Cvae), self.embedding.weight).argmin(1)
            h = self.embedding(idx).view(-1, pn, pn, self.Cvae).permute(0, 3, 1, 2)
            if si != SN - 1:
                h = F.interpolate(h, size=(H, H), mode="bicubic")
            h = self.quant_resi.for_scale(si, SN)(h)
            f_hat, f_rest = f_hat + h, f_rest - h.detach()
            hit = torch.bincount(idx, minlength=self.vocab_size).float()
            if self.training:
                self.ema_vocab_hit_SV[si].mul_(0.99).add_(hit, alpha=0.01)
            usages.append((hit > 0).float().mean().item() * 100)
            loss = loss + self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_no_grad)
        f_hat = (f_hat.detach() - f_no_grad) + f_BChw
        return f_hat, usages, loss / SN

    # ===================== VAR training and inference =====================
    def f_to_idxBl_or_fhat(self, f_BChw, to_fhat):
        with torch.no_grad():
            f_rest, f_hat = f_BChw.detach().clone(), torch.zeros_like(f_BChw)
            H, SN, out = f_BChw.shape[-1], len(self.v_patch_nums), []
            for si, pn in enumerate(self.v_patch_nums):
                z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
                idx = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, self.Cvae), self.embedding.weight).argmin(1)
                h = self.embedding(idx).view(-1, pn, pn, self.Cvae).permute(0, 3, 1, 2)
                if si != SN - 1:
                    h = F.interpolate(h, size=(H, H), mode="bicubic")
                h = self.quant_resi.for_scale(si, SN)(h)
                f_hat, f_rest = f_hat + h, f_rest - h
                out.append(f_hat.clone() if to_fhat else idx.view(f_BChw.shape[0], pn * pn))
            return out

    def embed_to_fhat(self, ms_h_BChw, last_one=False):
        f_hat, H, SN, out = None, self.v_patch_nums[-1], len(self.v_patch_nums), []
        for si, h in enumerate(ms_h_BChw):
            if si != SN - 1:
                h = F.interpolate(h, size=(H, H), mode="bicubic")
            h = self.quant_resi.for_scale(si, SN)(h)
            f_hat = h if f_hat is None else f_hat + h
            out.append(f_hat.clone())
        return out[-1] if last_one else out

    def idxBl_to_var_input(self, gt_ms_idx_Bl):
        B, H, SN = gt_ms_idx_Bl[0].shape[0], self.v_patch_nums[-1], len(self.v_patch_nums)
        f_hat, out = torch.zeros(B, self.Cvae, H, H, device=gt_ms_idx_Bl[0].device), []
        for si in range(SN - 1):
            pn = self.v_patch_nums[si]
            h = self.embedding(gt_ms_idx_Bl[si]).transpose(1, 2).reshape(B, self.Cvae, pn, pn)
            f_hat = f_hat + self.quant_resi.for_scale(si, SN)(F.interpolate(h, size=(H, H), mode="bicubic"))
            pn = self.v_patch_nums[si + 1]
            out.append(F.interpolate(f_hat, size=(pn, pn), mode="area").view(B, self.Cvae, -1).transpose(1, 2))
        return torch.cat(out, dim=1)

    def get_next_autoregressive_input(self, si, SN, f_hat, h_BChw):
        H = self.v_patch_nums[-1]
        if si != SN - 1:
            f_hat = f_hat + self.quant_resi.for_scale(si, SN)(F.interpolate(h_BChw, size=(H, H), mode="bicubic"))
            pn = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")
        f_hat = f_hat + self.quant_resi.for_scale(si, SN)(h_BChw)
        return f_hat, f_hat
