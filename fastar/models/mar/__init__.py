"""MAR (masked autoregression with a diffusion head) on fastar ops."""
from fastar.models.mar.diffloss import DiffLoss, SimpleMLPAdaLN
from fastar.models.mar.mar import MAR, SIZES, MARConfig, mar

__all__ = ["DiffLoss", "MAR", "MARConfig", "SIZES", "SimpleMLPAdaLN", "mar"]
