"""conv3x3 (Winograd F(2x2, 3x3) on the CPU) against the float64 reference within the tolerance rule, at awkward
shapes on every instruction set, and under autograd to second order (R1's); its declines (float64, backends without a
kernel) run the torch formulation; opcheck; bad inputs named; the VQVAE decoder's wide maps run it."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastar
from fastar.models.dalle import DVAE, DVAEConfig
from fastar.models.var import VQVAEConfig
from fastar.models.var import basic_vae
from fastar.models.var.vqvae import VQVAE
from tests.conftest import run_with_cpu_isa, sanitized
from tests.tolerance import assert_close

# (B, C_in, C_out, H, W): one pixel; odd sides (a last tile half outside); rows of several tile blocks with a
# partial last one (W 70, 131: 35 and 66 tiles); C_out off every register block (1, 5, 13) and above one; C_in 1;
# the decoders' widths at a small map; an empty batch
SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 9), (1, 4, 13, 6, 70), (2, 16, 3, 5, 131), (1, 1, 7, 33, 2),
          (1, 160, 160, 8, 64), (1, 64, 130, 9, 40), (0, 4, 4, 8, 8)]


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def check(shape, bias=True):
    B, Ci, Co, H, W = shape
    x, w = randn(B, Ci, H, W, seed=1), randn(Co, Ci, 3, 3, seed=2) / Ci ** 0.5
    b = randn(Co, seed=3) if bias else None
    out = fastar.ops.conv3x3(x, w, b)
    assert fastar.last_backend("conv3x3") == "cpu" and out.shape == (B, Co, H, W) and out.is_contiguous()
    want64 = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    assert_close("conv3x3", out, want64, F.conv2d(x, w, b, padding=1))


@pytest.mark.parametrize("shape", sanitized(SHAPES, set()), ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_matches_float64(shape, bias):
    check(shape, bias)


def test_non_contiguous_inputs():
    x, w = randn(2, 6, 20, 11, seed=4).transpose(2, 3), randn(3, 6, 3, 3, seed=5)
    assert not x.is_contiguous()
    want64 = F.conv2d(x.double(), w.double(), padding=1)
    assert_close("conv3x3", fastar.ops.conv3x3(x, w), want64, F.conv2d(x, w, padding=1))


ISA_CHILD = """
import fastar
from tests.test_conv import SHAPES, check
assert fastar.build_info()["cpu_isa"] == "%s"
for shape in SHAPES:
    check(shape)
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_every_cpu_isa(isa):
    """Each instruction set's kernel (8, 16 or 32 tiles a work item; 6 or 12 output channels a register block)."""
    run_with_cpu_isa(isa, ISA_CHILD % isa)


def r1_pattern(conv, x, w, b, dy, ddx):
    """conv's output, input gradient with create_graph, and the gradients of <dx, ddx> + |y|^2 / 2 with respect to
    w, b and x (R1's double backward: the backward's own backward)."""
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = conv(x, w, b)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    return [y, dx, *torch.autograd.grad((dx * ddx).sum() + y.square().sum() / 2, (w, b, x))]


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 11), (1, 32, 20, 16, 16), (1, 3, 4, 1, 5)], ids=str)
def test_autograd_to_second_order(shape):
    """Under autograd the kernel's output, input gradient (the kernel on the adjoint weight), weight and bias
    gradients, and the gradients of a function of the input gradient (R1's double backward) against float64."""
    B, Ci, Co, H, W = shape
    args = [randn(B, Ci, H, W, seed=20), randn(Co, Ci, 3, 3, seed=21) / Ci ** 0.5, randn(Co, seed=22),
            randn(B, Co, H, W, seed=23), randn(B, Ci, H, W, seed=24)]
    got = r1_pattern(fastar.ops.conv3x3, *args)
    assert fastar.last_backend("conv3x3") == "cpu"
    official = lambda x, w, b: F.conv2d(x, w, b, padding=1)  # noqa: E731
    want64, lowp = r1_pattern(official, *(a.double() for a in args)), r1_pattern(official, *args)
    for g, w64, lo in zip(got, want64, lowp):  # y, dx, dw, db, d(dx)/dx
        assert_close("conv3x3", g, w64, lo)


def test_declines_run_the_torch_formulation():
    """float64 and backends without the kernel run F.conv2d (a one-time warning each), gradients included; the
    reference and torch backends run their formulation silently."""
    x, w, b = randn(1, 3, 6, 6, seed=6), randn(4, 3, 3, 3, seed=7), randn(4, seed=8)
    with pytest.warns(UserWarning, match="the CPU kernel takes float32"):
        out = fastar.ops.conv3x3(x.double(), w.double(), b.double())
    assert torch.equal(out, F.conv2d(x.double(), w.double(), b.double(), padding=1))
    wg = w.double().requires_grad_()
    fastar.ops.conv3x3(x.double(), wg, b.double()).sum().backward()
    wg2 = w.double().requires_grad_()
    F.conv2d(x.double(), wg2, b.double(), padding=1).sum().backward()
    assert torch.equal(wg.grad, wg2.grad)
    with fastar.use_backend("simt"), pytest.warns(UserWarning, match="a CPU kernel only"):
        fastar.ops.conv3x3(x, w, b)
    assert fastar.last_backend("conv3x3") == "torch"
    for backend in ("torch", "reference"):
        with fastar.use_backend(backend), warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(fastar.ops.conv3x3(x, w, b), F.conv2d(x, w, b, padding=1))


def test_opcheck():
    x, w, b = randn(2, 5, 9, 7, seed=9), randn(3, 5, 3, 3, seed=10), randn(3, seed=11)
    ns = torch.ops.fastar
    torch.library.opcheck(ns.conv3x3_weights.default, (w,))
    u = ns.conv3x3_weights(w)
    assert u.shape == (16, 1, 5, 12)
    torch.library.opcheck(ns.conv3x3.default, (x, u, b, 3))
    torch.library.opcheck(ns.conv3x3.default, (x, u, None, 3))


def test_weight_transform_follows_the_weight():
    """The transform made once per weight is remade when the weight changes in place (an optimizer step, a
    load_state_dict) and is not kept past the weight."""
    x, conv = randn(1, 4, 6, 6, seed=12), torch.nn.Conv2d(4, 3, 3, 1, 1)
    with torch.no_grad():
        first = fastar.ops.conv3x3(x, conv.weight, conv.bias)
        assert torch.equal(fastar.ops.conv3x3(x, conv.weight, conv.bias), first)
        conv.weight.mul_(2)
        assert_close("conv3x3", fastar.ops.conv3x3(x, conv.weight, conv.bias),
                     F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1), conv(x))
    from fastar.ops import _prepared
    assert any(slot[0] == "conv3x3" for slot in _prepared._PREPARED)
    del conv
    assert not any(slot[0] == "conv3x3" for slot in _prepared._PREPARED)


def test_bad_inputs_name_the_argument():
    x, w = torch.zeros(1, 4, 5, 5), torch.zeros(2, 4, 3, 3)
    with pytest.raises(ValueError, match="x must have 4 dims"):
        fastar.ops.conv3x3(x[0], w)
    with pytest.raises(ValueError, match=r"weight must be \(C_out, 4, 3, 3\) .* got \(2, 4, 5, 5\)"):
        fastar.ops.conv3x3(x, torch.zeros(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"weight must be \(C_out, 4, 3, 3\) .* got \(2, 3, 3, 3\)"):
        fastar.ops.conv3x3(x, torch.zeros(2, 3, 3, 3))
    with pytest.raises(TypeError, match="x must be one of"):
        fastar.ops.conv3x3(x.half(), w)
    with pytest.raises(TypeError, match="weight must be one of"):
        fastar.ops.conv3x3(x, w.double())
    with pytest.raises(ValueError, match=r"bias must be \(2,\)"):
        fastar.ops.conv3x3(x, w, torch.zeros(3))
    ns = torch.ops.fastar
    with pytest.raises(RuntimeError, match=r"conv3x3_weights: weight must be \(C_out, C_in, 3, 3\)"):
        ns.conv3x3_weights(torch.zeros(2, 4, 2, 2))
    u = ns.conv3x3_weights(w)
    with pytest.raises(RuntimeError, match=r"conv3x3: u must be conv3x3_weights of a \(13, 4, 3, 3\) weight"):
        ns.conv3x3(x, u, None, 13)
    with pytest.raises(RuntimeError, match=r"conv3x3: u must be conv3x3_weights of a \(2, 5, 3, 3\) weight"):
        ns.conv3x3(torch.zeros(1, 5, 5, 5), u, None, 2)
    with pytest.raises(RuntimeError, match="conv3x3: x must be contiguous"):
        ns.conv3x3(x.transpose(2, 3), u, None, 2)
    with pytest.raises(RuntimeError, match=r"conv3x3: bias must be \(2,\)"):
        ns.conv3x3(x, u, torch.zeros(3), 2)


def test_vqvae_decoder(monkeypatch):
    """The decoder's 3x3 convolutions (conv_in, every ResnetBlock's two, conv_out) run through conv3x3 on the CPU
    backend, at every level's map size, and its images match the float64 official formulation within the decoder's
    rule."""
    cfg = VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, v_patch_nums=(1, 2))
    torch.manual_seed(0)
    vae = VQVAE(cfg).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    f = torch.randn(2, 8, 17, 18)  # levels of 17 x 18, 34 x 36 and 68 x 72: tiles across rows and along them
    calls = []
    conv3x3 = fastar.ops.conv3x3
    monkeypatch.setattr(fastar.ops, "conv3x3", lambda x, *a: calls.append(x.shape[-1]) or conv3x3(x, *a))
    with torch.no_grad():
        out = vae.decoder(vae.post_quant_conv(f))
    monkeypatch.undo()
    blocks = sum(isinstance(m, basic_vae.ResnetBlock) for m in vae.decoder.modules())
    assert len(calls) == 2 * blocks + 2 and set(calls) == {18, 36, 72}
    with torch.no_grad(), fastar.use_backend("reference"):
        ref64 = copy.deepcopy(vae).double().decoder(vae.post_quant_conv.double()(f.double()))
    with torch.no_grad(), fastar.use_backend("torch"):
        ref32 = vae.decoder(vae.post_quant_conv.float()(f))
    assert_close("vqvae_decode", out, ref64, ref32)


def test_dvae_decoder(monkeypatch):
    """DALL-E's dVAE decoder runs its 3x3 convolutions through conv3x3 on the CPU backend and matches its float64
    formulation (the reference backend: F.conv2d) within the rule."""
    torch.manual_seed(0)
    dvae = DVAE(DVAEConfig(n_hid=16, n_blk_per_group=1, group_count=3, vocab_size=32, n_init=8)).eval()
    with torch.no_grad():
        for p in dvae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = F.one_hot(torch.randint(32, (2, 9, 10)), 32).permute(0, 3, 1, 2).float()
    calls = []
    conv3x3 = fastar.ops.conv3x3
    monkeypatch.setattr(fastar.ops, "conv3x3", lambda x, *a: calls.append(x.shape[-1]) or conv3x3(x, *a))
    with torch.no_grad():
        out = dvae.decoder(z)
    monkeypatch.undo()
    assert len(calls) == 3 * 3 and set(calls) == {10, 20, 40}  # 3 groups of one block, three 3x3 convs each
    with torch.no_grad(), fastar.use_backend("reference"):
        ref64 = copy.deepcopy(dvae.decoder).double()(z.double())
        ref32 = dvae.decoder(z)
    assert_close("dvae_decode", out, ref64, ref32)


def test_weight_transform_follows_a_restrided_weight():
    """The cache key holds the strides: a square weight's .data re-pointed at its transpose (same storage, pointer,
    version and shape) gets a new transform (the stale one gave errors of ~17)."""
    x, w = randn(1, 4, 6, 6, seed=13), torch.nn.Parameter(randn(4, 4, 3, 3, seed=14))
    with torch.no_grad():
        fastar.ops.conv3x3(x, w)
        w.data = w.data.transpose(0, 1)
        assert_close("conv3x3", fastar.ops.conv3x3(x, w), F.conv2d(x.double(), w.double(), padding=1),
                     F.conv2d(x, w, padding=1))


@pytest.mark.parametrize("backend", ["cpu", "torch", "reference"])
def test_zero_input_channels_give_the_bias(backend):
    """A sum over no input channels is the bias on every backend (F.conv2d returned (B, 0, H, W))."""
    x, w, b = torch.zeros(1, 0, 4, 4), torch.zeros(3, 0, 3, 3), torch.tensor([1.0, 2.0, 3.0])
    with fastar.use_backend(backend):
        out = fastar.ops.conv3x3(x, w, b)
    assert torch.equal(out, b[None, :, None, None].expand(1, 3, 4, 4))
