"""The autograd contract of every op whose kernels have no backward of their own (inference kernels, fused decodes
of VAR's quantizer, diffusion_loss's noise): under autograd the op runs its torch formulation, whose gradients are
the reference's, never a result that silently carries no gradient; under no_grad the kernels run. And what cannot be
differentiated again raises under create_graph=True."""
import pytest
import torch

import fastar
from fastar import ops
from fastar.models.mar.diffloss import SimpleMLPAdaLN
from fastar.reference.transformer_decode import BLOCKS
from tests.test_quantize_multiscale import make as make_quantizer

pytestmark = pytest.mark.filterwarnings("ignore:fastar.ops")  # the decline's one-time warning is the contract


def randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def transformer_decode_case():
    C, F = 8, 16
    shapes = [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,), (C,), (C,), (F, C), (F,), (C, F), (C,)]
    assert len(shapes) == len(BLOCKS["gpt2"])
    layer = leaves(*(randn(*s, seed=i) * 0.3 + (1 if i in (0, 6) else 0) for i, s in enumerate(shapes)))
    x = leaves(randn(1, 1, C, seed=20))[0]
    caches = [randn(1, 2, 5, C // 2, seed=21)], [randn(1, 2, 5, C // 2, seed=22)]
    return (lambda: ops.transformer_decode(x, [layer], [caches[0][0].clone()], [caches[1][0].clone()], 2, [None],
                                           heads=2)), [x, *layer]


def diffusion_sample_case():
    head = SimpleMLPAdaLN(4, 8, 6, 1)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    z = leaves(randn(2, 6, seed=30, dtype=torch.float32))[0]
    return (lambda: ops.diffusion_sample(z, head, num_steps=3, generator=torch.Generator().manual_seed(0)), [z])


def quantizer_case(fn):
    f, codebook, phi_weight, phi_bias, patch_nums, ms_idx_Bl = make_quantizer("odd", dtype=torch.float64)
    codebook, phi_weight, phi_bias = leaves(codebook, phi_weight, phi_bias)
    ms_h = leaves(*(ops.idxBl_to_fhat(ms_idx_Bl, codebook.detach(), phi_weight.detach(), phi_bias.detach(),
                                      patch_nums)[0][:, :, :pn, :pn] for pn in patch_nums))
    q = (codebook, phi_weight, phi_bias)
    calls = {
        "f_to_idxBl_or_fhat": (lambda: ops.f_to_idxBl_or_fhat(f, *q, patch_nums, to_fhat=True)[-1], q),
        "idxBl_to_fhat": (lambda: ops.idxBl_to_fhat(ms_idx_Bl, *q, patch_nums, last_one=True), q),
        "embed_to_fhat": (lambda: ops.embed_to_fhat(ms_h, phi_weight, phi_bias, patch_nums)[-1],
                          [*ms_h, phi_weight, phi_bias]),
        "idxBl_to_var_input": (lambda: ops.idxBl_to_var_input(ms_idx_Bl, *q, patch_nums), q),
        "get_next_autoregressive_input": (
            lambda: ops.get_next_autoregressive_input(0, len(patch_nums), torch.zeros_like(f).float(),
                                                      ms_h[0].float(), phi_weight, phi_bias, patch_nums)[1],
            [ms_h[0], phi_weight, phi_bias]),
    }
    return calls[fn]


CASES = {
    "attention_decode": lambda: (
        lambda: ops.attention_decode(*CASE_QKV, 6), CASE_QKV),
    "vq_nearest": lambda: (
        lambda: ops.vq_nearest(*CASE_VQ, return_distance=True)[1], CASE_VQ),
    "transformer_decode": transformer_decode_case,
    "diffusion_sample": diffusion_sample_case,
    **{fn: (lambda fn=fn: quantizer_case(fn)) for fn in ("f_to_idxBl_or_fhat", "idxBl_to_fhat", "embed_to_fhat",
                                                         "idxBl_to_var_input", "get_next_autoregressive_input")},
}
CASE_QKV = leaves(randn(1, 2, 3, 8, seed=1), randn(1, 2, 10, 8, seed=2), randn(1, 2, 10, 8, seed=3))
CASE_VQ = leaves(randn(5, 4, seed=4, dtype=torch.float32), randn(7, 4, seed=5, dtype=torch.float32))


@pytest.mark.parametrize("op", list(CASES))
def test_inference_kernels_under_autograd_give_the_reference_gradients(op):
    """They were returned with requires_grad set and None (or, for transformer_decode, partial) gradients."""
    call, inputs = CASES[op]()
    out = call()
    assert fastar.last_backend(op) == "torch" and out.requires_grad
    got = torch.autograd.grad(out.square().sum(), inputs)
    with fastar.use_backend("reference"):
        want = torch.autograd.grad(call().square().sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)
        assert w.abs().sum() > 0
    with torch.no_grad():  # sampling: the kernels
        call()
    assert fastar.last_backend(op) != "torch"


def diffusion_loss_case():
    head = SimpleMLPAdaLN(3, 8, 5, 1).double()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x_start, z = randn(4, 3, seed=40).clamp(-0.9, 0.9), randn(4, 5, seed=41)
    t = torch.tensor([0, 1, 500, 999])
    return head, lambda noise: ops.diffusion_loss(x_start, z, head, t=t, noise=noise)


def test_diffusion_loss_noise_gradient_has_the_direct_term():
    """The fused gradient reaches noise only through the head's input: a noise that requires grad runs the torch
    formulation (its MSE term's own derivative was dropped)."""
    _, loss = diffusion_loss_case()
    noise = leaves(randn(4, 3, seed=42))[0]
    (got,) = torch.autograd.grad(loss(noise).sum(), noise)
    assert fastar.last_backend("diffusion_loss") == "torch"
    with fastar.use_backend("reference"):
        (want,) = torch.autograd.grad(loss(noise).sum(), noise)
    torch.testing.assert_close(got, want)
    loss(noise.detach())
    assert fastar.last_backend("diffusion_loss") == "cpu"


def test_diffusion_loss_double_backward_raises():
    head, loss = diffusion_loss_case()
    params = list(head.parameters())
    with pytest.raises(RuntimeError, match="fastar.ops.diffusion_loss: double backward"):
        torch.autograd.grad(loss(randn(4, 3, seed=42)).sum(), params, create_graph=True)


def test_conv3x3_compiles_fullgraph_under_autograd():
    """The prepared-weight cache is bypassed while compiling (dynamo refused its dict write inside the autograd
    function); the compiled gradient is eager's."""
    x, w, b = leaves(randn(1, 4, 6, 6, seed=50, dtype=torch.float32), randn(5, 4, 3, 3, seed=51, dtype=torch.float32),
                     randn(5, seed=52, dtype=torch.float32))
    compiled = torch.compile(lambda x, w, b: ops.conv3x3(x, w, b).square().sum(), fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(ops.conv3x3(x, w, b).square().sum(), (x, w, b))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


def test_msq_up_backward_traces_with_a_symbolic_batch():
    """opcheck's dynamic-shape AOT test of msq_up's backward (aten's bicubic backward failed on a symbolic B)."""
    _, codebook, *_, patch_nums, ms_idx_Bl = make_quantizer("odd", dtype=torch.float32)
    idx = torch.cat(ms_idx_Bl, 1)
    torch.library.opcheck(torch.ops.fastar.msq_up.default, (codebook.requires_grad_(), idx, list(patch_nums),
                                                            patch_nums[-1]))
