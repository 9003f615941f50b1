"""The VQVAE decoder's fast path (issue 17: channels_last, nearest-2x upsample + conv as one 2x2 phase conv, in-place
elementwise, conv weights made channels_last once per parameter version), taken where fastar's kernels are active,
against the official formulation run in float64 (the reference backend) within the tolerance rule; also after
load_state_dict and an optimizer step, and through autograd."""
import copy

import pytest
import torch

import fastar
from fastar.models.var import VQVAEConfig
from fastar.models.var.basic_vae import AttnBlock, Upsample2x, fast_path
from fastar.models.var.vqvae import VQVAE
from tests.conftest import backend_device
from tests.tolerance import K, assert_close, error_and_bound

# Three levels: two upsamples, the attention of the lowest level and of the mid block, a 1x1 shortcut.
TINY = VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, v_patch_nums=(1, 2, 3))
pytestmark = pytest.mark.one_schedule  # the attention kernel under the model is order-checked by its own tests


def tiny_vae(seed, dev):
    torch.manual_seed(seed)
    vae = VQVAE(TINY)
    with torch.no_grad():  # biases and norm affines away from their 0 / 1 init, so that a wrong one shows
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae.to(dev)


def decode(vae, f):
    return vae.decoder(vae.post_quant_conv(f))


def references(vae, f, grad=False):
    """(float64, float32) official formulation of decode(vae, f): the reference and torch backends."""
    vae64 = copy.deepcopy(vae).double()
    with torch.set_grad_enabled(grad), fastar.use_backend("reference"):
        ref64 = decode(vae64, f.double())
    with torch.set_grad_enabled(grad), fastar.use_backend("torch"):
        ref32 = decode(vae, f)
    return (ref64, ref32, vae64) if grad else (ref64, ref32)


def test_decoder_fast_path_matches_float64(backend):
    dev = backend_device(backend)
    vae = tiny_vae(0, dev).eval()
    f = torch.randn(2, 8, 3, 5, device=dev)  # a non-square latent: h != w through both upsamples
    assert fast_path(f)
    with torch.no_grad():
        out = decode(vae, f)
        assert out.shape == (2, 3, 12, 20) and out.is_contiguous()
        assert_close("vqvae_decode", out, *references(vae, f))
        # the quantizer ops' channels_last maps decode in NCHW, as the official maps (bit for bit the same images)
        assert torch.equal(vae.fhat_to_img(f.contiguous(memory_format=torch.channels_last)), vae.fhat_to_img(f))
        z = vae.post_quant_conv(f)
        assert torch.equal(vae.decoder(z.contiguous(memory_format=torch.channels_last)), vae.decoder(z))
        # new weights into the same parameters (strict, the official keys): the fast path follows them
        vae.load_state_dict(tiny_vae(1, dev).state_dict())
        again = decode(vae, f)
        assert not torch.allclose(again, out)
        assert_close("vqvae_decode", again, *references(vae, f))


def test_decoder_fast_path_gradients_and_training_step(backend):
    """Autograd through the fast path (no in-place silu then): parameter gradients within the rule; after an SGD
    step (in-place parameter updates) the decoder still matches the float64 formulation."""
    dev = backend_device(backend)
    vae = tiny_vae(2, dev).train()
    f = torch.randn(2, 8, 4, 4, device=dev)
    with torch.no_grad():
        before = decode(vae, f)  # prepares the inference weights, which the step below must invalidate
    decode(vae, f).square().sum().backward()
    grads = {n: p.grad for n, p in vae.named_parameters() if p.grad is not None}
    vae.zero_grad(set_to_none=True)
    ref64, ref32, vae64 = references(vae, f, grad=True)
    ref32.square().sum().backward()
    ref64.square().sum().backward()
    params64 = dict(vae64.named_parameters())
    assert grads.keys() == {n for n, p in vae.named_parameters() if p.grad is not None} and len(grads) > 50
    # some gradients are 0 in exact arithmetic (1e-16 in float64: a conv bias that a GroupNorm of one channel per
    # group removes), where both float32 paths return rounding noise: their floor is relative to the decoder's
    # largest gradient; every other gradient keeps its own scale
    largest = max(p.grad.abs().max().item() for p in params64.values() if p.grad is not None)
    # One gradient's float32 reference error can be luckily small (a sum over all positions whose roundings happen to
    # cancel: on an AMD Zen 4 one norm bias's was 1.9e-5 where the kernels' 7.5e-5 was 20 ulps of its 38), and which
    # one is lucky moves with the CPU's GEMM and conv kernels. So each bound is at least K x the decoder's median
    # relative reference error at that gradient's scale; a wrong gradient is off by far more than either.
    ref32 = dict(vae.named_parameters())
    rel = sorted(((ref32[n].grad - params64[n].grad).abs().max() / params64[n].grad.abs().max().clamp_min(1e-30)).item()
                 for n in grads)
    typical = rel[len(rel) // 2]
    for n, g in grads.items():
        g64 = params64[n].grad
        scale = largest if g64.abs().max().item() < 1e-12 * largest else None
        err, bound, ref_err = error_and_bound("vqvae_decode_grads", g, g64, ref32[n].grad, scale)
        bound = max(bound, K["vqvae_decode_grads"] * typical * (scale or g64.abs().max().item()))
        assert err <= bound, f"{n}: gradient error {err:.3g} > {bound:.3g} (reference error {ref_err:.3g})"
    torch.optim.SGD(vae.parameters(), lr=1e-2).step()
    with torch.no_grad():
        after = decode(vae, f)
        assert not torch.allclose(after, before)
        assert_close("vqvae_decode", after, *references(vae, f))


@pytest.mark.parametrize("shape", [(1, 32, 1, 1), (2, 32, 1, 3), (1, 64, 5, 2)], ids=str)
def test_upsample_phase_conv(backend, shape):
    """conv3x3(nearest 2x upsample) as the 2x2 phase conv, edges included, against the plain formulation."""
    dev = backend_device(backend)
    torch.manual_seed(0)
    up = Upsample2x(shape[1]).to(dev)
    x = torch.randn(shape, device=dev)
    with torch.no_grad():
        out = up(x)
        with fastar.use_backend("torch"):
            ref32 = up(x)
        ref64 = copy.deepcopy(up).double()(x.double())  # under the backend too: the phase conv in float64
        with fastar.use_backend("reference"):
            plain64 = copy.deepcopy(up).double()(x.double())
    torch.testing.assert_close(ref64, plain64, rtol=1e-12, atol=1e-12)  # exact in real arithmetic
    assert_close("vqvae_decode", out, plain64, ref32)


def test_attn_block_gradients_have_their_parameters_strides():
    """Under autograd every weight gradient of the attention block has its parameter's strides: DDP's reducer
    compares them, size-1 dims included, and warned on every step of the digits VQVAE's training when proj_out read
    the attention's output as a channels_last view."""
    torch.manual_seed(0)
    block = AttnBlock(32)
    block(torch.randn(2, 32, 4, 4, requires_grad=True)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad.stride() == p.stride(), name


def test_tokenizers_refuse_maps_of_other_channels():
    """An image of 4 channels, an int image, a latent of other channels: the call and argument named (torch's
    convolutions said 'expected input to have 3 channels' or a GroupNorm message); an image of another side than
    the latent's (the encoder floored a 5 x 5 one to the 4 x 4 model's latent unsaid)."""
    from fastar.models.mar import AutoencoderKL, KLConfig
    from fastar.models.var import VQVAE, VQVAEConfig
    vae = VQVAE(VQVAEConfig(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=(1, 2)))
    kl = AutoencoderKL(KLConfig(embed_dim=4, ch=32, ch_mult=(1, 1), num_res_blocks=1))
    for call, match in [(lambda: vae.img_to_idxBl(torch.rand(1, 4, 8, 8)), r"VQVAE.img_to_idxBl: img_B3HW must be"),
                        (lambda: vae.img_to_idxBl(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), "floating-point"),
                        (lambda: vae.img_to_idxBl(torch.rand(1, 3, 5, 5)), r"must be 4 x 4 .* got \(5, 5\)"),
                        (lambda: vae(torch.rand(1, 3, 8, 8)), r"VQVAE.forward: img_B3HW must be 4 x 4"),
                        (lambda: vae.fhat_to_img(torch.rand(1, 3, 4, 4)), r"f_hat_BChw must be .* \(B, 8, H, W\)"),
                        (lambda: kl.encode(torch.rand(3, 8, 8)), r"AutoencoderKL.encode: x_B3HW must be"),
                        (lambda: kl.decode(torch.rand(1, 16, 4, 4)), r"AutoencoderKL.decode: z_BChw .* \(B, 4")]:
        with pytest.raises(ValueError, match=match):
            call()
