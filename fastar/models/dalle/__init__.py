"""DALL-E on fastar ops: the discrete VAE, the BPE text tokenizer and the sparse text-to-image transformer."""
from fastar.models.dalle.dalle import DALLE, DALLE_12B, DALLEConfig, layer_kind, parameter_count
from fastar.models.dalle.dvae import DVAE, Decoder, DVAEConfig, Encoder, map_pixels, unmap_pixels
from fastar.models.dalle.text import TextTokenizer

__all__ = ["DALLE", "DALLE_12B", "DALLEConfig", "DVAE", "DVAEConfig", "Decoder", "Encoder", "TextTokenizer",
           "layer_kind", "map_pixels", "parameter_count", "unmap_pixels"]
