"""HiT (Zhao et al. 2021): the generator on fastar's multi-axis attention, its discriminator and training losses."""
from fastar.models.hit.discriminator import StyleGANDiscriminator
from fastar.models.hit.generator import CONFIGS, TINY, HiTConfig, HiTGenerator

__all__ = ["HiTConfig", "HiTGenerator", "StyleGANDiscriminator", "CONFIGS", "TINY"]
