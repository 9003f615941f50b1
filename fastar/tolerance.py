"""The one tolerance rule of fastar (habit 10, after FlashAttention's tests), shared by the tests and
`python -m fastar selftest`.

An output is compared with the float64 reference; its error may be at most K[op] times the error of the same
reference computed in the tested precision, plus a floor of a few float32 ulps of the result's scale for the
case where the low-precision reference happens to be exact.
"""
import torch

K = {"vq_nearest": 2.0, "var_logits": 4.0, "var_grads": 4.0,
     # VAR's multi-scale quantizer: Phi folded into one conv and convolution algorithms differ from the reference's.
     "f_to_idxBl_or_fhat": 4.0, "idxBl_to_fhat": 4.0, "embed_to_fhat": 4.0, "idxBl_to_var_input": 4.0,
     "get_next_autoregressive_input": 4.0,
     "msq_forward": 4.0,
     # FlashAttention's factors: 2 for the forward (out, lse), 3 for the gradients.
     "attention": 2.0, "attention_bwd": 3.0,
     # 100 chained DDPM steps amplify rounding chaotically; the GEMMs block and the fused passes sum differently.
     "diffusion_sample": 4.0, "mar_sample_tokens": 4.0,
     # FractalGen: gradients through three levels of LayerNorm / RMSNorm, RoPE and fused attention.
     "fractalgen_grads": 4.0,
     "multi_axis_attention": 2.0, "multi_axis_attention_bwd": 3.0,
     # HiT: a GAN step's gradients through G, D, R1 (a double backward) and bCR, as VAR's.
     "hit_grads": 4.0,
     # HiT's forward without autograd (BatchNorm folded into the Dense layers, row chunks) vs the modules' order.
     "hit_forward": 4.0,
     # MAR's KL VAE: VAR's decoder fast path (the phase convs) against the official formulation.
     "mar_vae": 2.0,
     # VAR's VQVAE decoder fast path: the upsample's phase conv sums 3x3 taps before the conv.
     "vqvae_decode": 2.0, "vqvae_decode_grads": 3.0,
     # the training loss: the head under autograd and the fused loss pass vs the reference's formulation.
     "diffusion_loss": 3.0, "mar_train_grads": 4.0,
     # bf16 mode: the kernel rounds float32 values to bf16 where the emulating reference rounds its own float32 ones.
     "diffusion_sample_bf16": 4.0,
     # the models' Linear on oneDNN: another GEMM's blocking sums K in another order.
     "linear": 2.0,
     # BlurPool2D: columns then rows of taps in float32, where the references sum the 16 products in another order.
     "blur_pool": 2.0,
     # Winograd F(2x2, 3x3): the products of transformed inputs and weights, then the output transform's sums.
     "conv3x3": 2.0,
     # DALL-E's dVAE decoder: its 3x3 convs on conv3x3 against F.conv2d's.
     "dvae_decode": 2.0,
     # the MLP kernel: its GEMMs' blocking and partial sums, and GELU by a polynomial erfc (torch's by Sleef's erf).
     "mlp": 2.0,
     # the GELU and its derivative by that erfc formula, or the tanh form by one exp (torch's: Sleef's erf and tanh).
     "gelu_with_derivative": 2.0,
     # a stack of blocks: LayerNorm, four products and an attention per layer, each summing in its kernel's order.
     "transformer_decode": 4.0}


def error_and_bound(op, out, ref64, ref_lowp, scale=None):
    """(max error of out against ref64, the bound it must stay within, the low-precision reference's own error),
    over the finite reference entries. Raises AssertionError on a shape or NaN mismatch. scale: the magnitude the
    floor is relative to, when it is not the result's own (a result that cancels to 0, such as the query gradient
    of a single key)."""
    out, ref64, ref_lowp = out.detach().double().cpu(), ref64.detach().double().cpu(), ref_lowp.detach().double().cpu()
    assert out.shape == ref64.shape, f"{op}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    assert torch.equal(out.isnan(), ref64.isnan()), f"{op}: NaNs differ from the reference"
    finite = ref64.isfinite()
    err = (out - ref64)[finite].abs().max().item() if finite.any() else 0.0
    ref_err = (ref_lowp - ref64)[finite].abs().max().item() if finite.any() else 0.0
    if scale is None:
        scale = ref64[finite].abs().max().item() if finite.any() else 0.0
    return err, K[op] * ref_err + 4 * torch.finfo(torch.float32).eps * scale, ref_err
