"""fastar's public ops: argument checks, dtype policy, dispatch to torch.ops.fastar.* (see fastar._backend)."""
from fastar.ops._registry import input_grads_only
from fastar.ops.attention import AttentionMask, attention, attention_decode, max_head_dim
from fastar.ops.blur_pool import blur_pool
from fastar.ops.conv import conv3x3
from fastar.ops.diffusion import diffusion_loss, diffusion_sample
from fastar.ops.dropout import dropout
from fastar.ops.linear import linear, linear_weight_grad
from fastar.ops.mlp import gelu_with_derivative, mlp
from fastar.ops.multi_axis import multi_axis_attention
from fastar.ops.sampling import sample_categorical
from fastar.ops.transformer_decode import transformer_decode
from fastar.ops.quantize import (embed_to_fhat, f_to_idxBl_or_fhat, get_next_autoregressive_input, idxBl_to_fhat,
                                 idxBl_to_var_input, msq_forward, phi_index, vq_nearest)

__all__ = ["AttentionMask", "attention", "attention_decode", "max_head_dim", "vq_nearest", "f_to_idxBl_or_fhat", "idxBl_to_fhat",
           "embed_to_fhat", "idxBl_to_var_input", "get_next_autoregressive_input", "msq_forward", "phi_index",
           "diffusion_sample", "sample_categorical", "multi_axis_attention", "diffusion_loss", "dropout", "linear",
           "transformer_decode", "conv3x3", "mlp", "gelu_with_derivative", "linear_weight_grad", "blur_pool",
           "input_grads_only"]
