"""FractalGen (fractal generative models: AR / MAR levels down to a per-pixel transformer) on fastar ops."""
from fastar.models.fractalgen.fractalgen import (MODELS, FractalGen, FractalGenConfig, bits_per_dim, build,
                                                 fractalar_in64, fractalmar_base_in256, fractalmar_huge_in256,
                                                 fractalmar_in64, fractalmar_large_in256)

__all__ = ["MODELS", "FractalGen", "FractalGenConfig", "bits_per_dim", "build", "fractalar_in64",
           "fractalmar_base_in256", "fractalmar_huge_in256", "fractalmar_in64", "fractalmar_large_in256"]
