"""VAR's multi-scale residual quantizer as a module (FoundationVision/VAR models/quant.py, VectorQuantizer2).

It holds the checkpoint's tensors (embedding, quant_resi.qresi_ls.{k}, ema_vocab_hit_SV) under the official names
and methods; the residual loops themselves are fastar.ops' multi-scale quantization ops, which take the Phi convs
as stacked weights and pick Phi_k per scale with fastar.ops.phi_index.
"""
import torch
import torch.distributed as dist
import torch.nn as nn

import fastar


class PhiPartiallyShared(nn.Module):
    """K Phi convs shared by neighbouring scales (the released VAE: K = 4 for 10 scales).
    Phi_k(h) = (1 - r) h + r conv3x3_k(h), r = |quant_resi|: a residual refinement of the upsampled codes."""

    def __init__(self, Cvae, K):
        super().__init__()
        self.qresi_ls = nn.ModuleList(nn.Conv2d(Cvae, Cvae, kernel_size=3, stride=1, padding=1) for _ in range(K))

    def stacked(self):
        """(weight (K, C, C, 3, 3), bias (K, C)): the form fastar.ops takes; differentiable."""
        return (torch.stack([phi.weight for phi in self.qresi_ls]),
                torch.stack([phi.bias for phi in self.qresi_ls]))


class VectorQuantizer2(nn.Module):
    """VAR's multi-scale residual quantizer (models/quant.py, same names and methods): a (vocab_size, Cvae) codebook,
    the Phi convolutions quant_resi, and the per-scale loops on fastar.ops' quantizer ops; f_BChw (B, Cvae, h, w)
    with h = w = v_patch_nums[-1]."""

    def __init__(self, vocab_size, Cvae, v_patch_nums, beta=0.25, quant_resi=0.5, share_quant_resi=4):
        super().__init__()
        self.vocab_size, self.Cvae, self.v_patch_nums, self.beta = vocab_size, Cvae, tuple(v_patch_nums), beta
        self.resi_ratio = abs(quant_resi)
        self.quant_resi = PhiPartiallyShared(Cvae, share_quant_resi)
        # per-scale EMA of codebook hits: a VAE-training statistic, but a checkpoint key
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, Cvae)

    def _args(self):
        """The quantizer arguments every fastar.ops multi-scale op takes after its inputs."""
        return (self.embedding.weight, *self.quant_resi.stacked(), self.v_patch_nums)

    # ===================== VAE training =====================
    def forward(self, f_BChw):
        """(f_hat with the straight-through gradient, % of the codebook hit at each scale (by every process when
        training under torch.distributed), vq loss)."""
        f_hat, hits_SV, vq_loss = fastar.ops.msq_forward(f_BChw, *self._args(), beta=self.beta,
                                                         resi_ratio=self.resi_ratio)
        if self.training:
            if dist.is_available() and dist.is_initialized():  # every process's hits, as VAR all-reduces them
                hits_SV = hits_SV.clone()
                dist.all_reduce(hits_SV)
            self.ema_vocab_hit_SV.mul_(0.99).add_(hits_SV, alpha=0.01)
        return f_hat, (hits_SV > 0).float().mean(1).mul(100).tolist(), vq_loss

    # ===================== VAR training and inference =====================
    def f_to_idxBl_or_fhat(self, f_BChw, to_fhat):
        """Per scale: indices (B, pn*pn), or the cumulative f_hat (B, Cvae, H, W) when to_fhat."""
        return fastar.ops.f_to_idxBl_or_fhat(f_BChw, *self._args(), to_fhat=to_fhat, resi_ratio=self.resi_ratio)

    def idxBl_to_fhat(self, ms_idx_Bl, last_one=False):
        """The cumulative f_hat after each scale of ms_idx_Bl, or only the last."""
        return fastar.ops.idxBl_to_fhat(ms_idx_Bl, *self._args(), last_one=last_one, resi_ratio=self.resi_ratio)

    def embed_to_fhat(self, ms_h_BChw, last_one=False):
        """As idxBl_to_fhat, from the code maps (B, Cvae, pn, pn) themselves."""
        weight, bias = self.quant_resi.stacked()
        return fastar.ops.embed_to_fhat(ms_h_BChw, weight, bias, self.v_patch_nums, last_one=last_one,
                                        resi_ratio=self.resi_ratio)

    def idxBl_to_var_input(self, gt_ms_idx_Bl):
        """Teacher forcing: (B, L - pn_1^2, Cvae), scale si+1's input = area-down of the cumulative f_hat after si."""
        return fastar.ops.idxBl_to_var_input(gt_ms_idx_Bl, *self._args(), resi_ratio=self.resi_ratio)

    def get_next_autoregressive_input(self, si, SN, f_hat, h_BChw):
        """f_hat += Phi(up(h_BChw)) in place; returns (f_hat, the next scale's input map, or f_hat at the last)."""
        weight, bias = self.quant_resi.stacked()
        return fastar.ops.get_next_autoregressive_input(si, SN, f_hat, h_BChw, weight, bias, self.v_patch_nums,
                                                        resi_ratio=self.resi_ratio)
