"""build_vae_var: the VQVAE and VAR of a released configuration, taking FoundationVision/VAR's own call
(models/__init__.py: every keyword of it) as well as fastar's (vae_cfg, VARConfig fields)."""
import warnings

import torch

from fastar.models.var.var import VAR, VARConfig
from fastar.models.var.vqvae import VQVAE, VQVAEConfig

PATCH_NUMS = {256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}
KERNEL_FLAGS = ("flash_if_available", "fused_if_available")  # choose the official code's kernels: fastar has its own


def build_vae_var(device=None, patch_nums=PATCH_NUMS[256], V=None, Cvae=None, ch=None, share_quant_resi=None,
                  num_classes=1000, depth=16, shared_aln=False, attn_l2_norm=True, flash_if_available=None,
                  fused_if_available=None, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1,
                  vae_cfg=None, **var_kwargs):
    """(vae, var) on `device` ("meta" sizes them without memory). The VAE is frozen in eval mode, as VAR uses it.
    V, Cvae, ch, share_quant_resi size the VQVAE as the official call does (default: the released ch160 v4096
    z32), or vae_cfg (a VQVAEConfig) does, not both; init_std < 0: sqrt(1 / 3C) as the official init;
    var_kwargs: more VARConfig fields. flash_if_available / fused_if_available are accepted and ignored (said once):
    fastar's kernels run either way."""
    vae_args = {"vocab_size": V, "z_channels": Cvae, "ch": ch, "share_quant_resi": share_quant_resi}
    given = {k: v for k, v in vae_args.items() if v is not None}
    if vae_cfg is not None and given:
        raise ValueError(f"build_vae_var: pass the VQVAE's size either as vae_cfg or as V/Cvae/ch/share_quant_resi, "
                         f"not both (got vae_cfg and {sorted(given)})")
    if not attn_l2_norm:
        raise ValueError("build_vae_var: attn_l2_norm=False is not supported: fastar's VAR attention is the "
                         "l2-normalized one of every released VAR model")
    flags = [k for k, v in (("flash_if_available", flash_if_available), ("fused_if_available", fused_if_available))
             if v is not None]
    if flags:
        warnings.warn(f"build_vae_var: {', '.join(flags)} choose the official code's kernels and are ignored: "
                      f"fastar's own kernels run (fastar.backends() = what is built)", stacklevel=2)
    vae_cfg = vae_cfg or VQVAEConfig(v_patch_nums=tuple(patch_nums), **given)
    if tuple(vae_cfg.v_patch_nums) != tuple(patch_nums):
        raise ValueError(f"build_vae_var: vae_cfg.v_patch_nums {tuple(vae_cfg.v_patch_nums)} must be patch_nums "
                         f"{tuple(patch_nums)}: the VAR and its quantizer walk the same scales")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"build_vae_var: depth must be an int >= 1 (width 64 depth, depth heads), got {depth!r}")
    with torch.device(device or "cpu"):
        vae = VQVAE(vae_cfg).eval().requires_grad_(False)
        var = VAR(vae, VARConfig(depth=depth, patch_nums=tuple(patch_nums), vocab_size=vae_cfg.vocab_size,
                                 Cvae=vae_cfg.z_channels, num_classes=num_classes, shared_aln=shared_aln,
                                 **var_kwargs))
    if str(device) != "meta":
        var.init_weights(init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head,
                         init_std=init_std)
    return vae, var
