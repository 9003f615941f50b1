"""VAR (next-scale prediction) on fastar ops: VQVAE tokenizer, transformer, build_vae_var."""
from fastar.models.var.build import PATCH_NUMS, build_vae_var
from fastar.models.var.quant import VectorQuantizer2
from fastar.models.var.var import VAR, VARConfig
from fastar.models.var.vqvae import VQVAE, VQVAEConfig

__all__ = ["PATCH_NUMS", "VAR", "VARConfig", "VQVAE", "VQVAEConfig", "VectorQuantizer2", "build_vae_var"]
