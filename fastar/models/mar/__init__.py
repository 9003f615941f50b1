"""MAR (masked autoregression with a diffusion head) on fastar ops."""
from fastar.models.mar.diffloss import DiffLoss, SimpleMLPAdaLN
from fastar.models.mar.mar import MAR, SIZES, MARConfig, mar, mar_base, mar_huge, mar_large
from fastar.models.mar.vae import AutoencoderKL, KLConfig

__all__ = ["AutoencoderKL", "DiffLoss", "KLConfig", "MAR", "MARConfig", "SIZES", "SimpleMLPAdaLN", "mar", "mar_base", "mar_huge", "mar_large"]
