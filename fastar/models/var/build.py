"""build_vae_var: the VQVAE and VAR of a released configuration (FoundationVision/VAR models/__init__.py)."""
import torch

from fastar.models.var.var import VAR, VARConfig
from fastar.models.var.vqvae import VQVAE, VQVAEConfig

PATCH_NUMS = {256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)}


def build_vae_var(depth=16, patch_nums=PATCH_NUMS[256], shared_aln=False, device=None, vae_cfg=None,
                  init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, **var_kwargs):
    """(vae, var) on `device` ("meta" sizes them without memory). The VAE is frozen in eval mode, as VAR uses it.
    vae_cfg: a VQVAEConfig (default: the released ch160 v4096 z32); var_kwargs: more VARConfig fields."""
    vae_cfg = vae_cfg or VQVAEConfig(v_patch_nums=tuple(patch_nums))
    with torch.device(device or "cpu"):
        vae = VQVAE(vae_cfg).eval().requires_grad_(False)
        var = VAR(vae, VARConfig(depth=depth, patch_nums=tuple(patch_nums), vocab_size=vae_cfg.vocab_size,
                                 Cvae=vae_cfg.z_channels, shared_aln=shared_aln, **var_kwargs))
    if str(device) != "meta":
        var.init_weights(init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head)
    return vae, var
