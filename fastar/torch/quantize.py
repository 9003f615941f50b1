"""VAR's quantizer as the official code runs it (FoundationVision/VAR models/quant.py): per scale, area-down,
distances by addmm then argmin, embedding, bicubic-up, the Phi conv; in float32, since VAR runs its quantizer
with autocast off. fastar.reference.quantize is written as that loop, so these are its functions, which run
lower-precision tensors in float32 (float64 stays float64, as in fastar.ops)."""
from fastar.reference import quantize as reference

vq_nearest = reference.vq_nearest  # computes distances in float32 itself: VAR's addmm + argmin
# these take bfloat16 / float16 in float32 themselves (float64 stays float64)
f_to_idxBl_or_fhat = reference.f_to_idxBl_or_fhat
idxBl_to_fhat = reference.idxBl_to_fhat
embed_to_fhat = reference.embed_to_fhat
idxBl_to_var_input = reference.idxBl_to_var_input
get_next_autoregressive_input = reference.get_next_autoregressive_input
msq_forward = reference.msq_forward
