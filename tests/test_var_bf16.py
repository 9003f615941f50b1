"""VAR's bf16 sampling mode (issues 17 and 20): agreement with float32 within bounds measured on this model, on
fastar's kernels and on the torch backend, and the decline on CPUs without bf16 GEMM instructions.

The bounds come from measurement (AMD EPYC Zen 1, bf16 GEMMs emulated through FASTAR_EMULATED_BF16=1; the numerics
are those of the bf16 mode, only slower): this model (depth 2, AdaLN gammas 1.0, so every block's bf16 rounding
reaches the logits), B = 16, cfg 2, top-k 30, top-p 0.95, seed 0 gave, on cpu, simt and torch alike, a logits error
of 1.8e-4 to 2.3e-4 of the logits' scale at every scale whose inputs agree. With today's draw (exponential race) and
the VQVAE decoder in bfloat16 too (AMD EPYC Zen 4, AVX512-BF16): token agreement 1.0 on all three backends and image
PSNR 47.4-47.6 dB, the decoder's rounding. The test asserts each with a margin of about 4x on the error: logits
error <= 1e-3, agreement >= 0.95, PSNR >= 35 dB.
"""
import copy
import warnings

import pytest
import torch

import fastar
from fastar.models.var import build_vae_var
from fastar.models.var import sample as var_sample
from fastar.models.var import var as var_module
from tests.conftest import bf16_emulated, sample_cli_warns_before_loading
from tests.test_var_model import TINY_PN, TINY_VAE, sampled_tokens

pytestmark = pytest.mark.one_schedule
MAX_LOGITS_ERR, MIN_AGREEMENT, MIN_PSNR = 1e-3, 0.95, 35.0


def model():
    torch.manual_seed(0)
    vae, var = build_vae_var(depth=2, patch_nums=TINY_PN, vae_cfg=TINY_VAE, init_adaln_gamma=1.0, num_classes=10)
    return vae, var.eval()


def run(vae, var, precision):
    """(images, token maps, logits per scale, dtypes attention_decode and the VQVAE decoder's output had) of one
    seeded sample call."""
    logits, dtypes = [], set()
    decode = fastar.ops.attention_decode

    def spy(q, *args, **kwargs):
        dtypes.add(q.dtype)
        return decode(q, *args, **kwargs)

    hook = var.head.register_forward_hook(lambda m, args, out: logits.append(out.clone()))
    decoded = vae.decoder.register_forward_hook(lambda m, args, out: dtypes.add(("decoder", out.dtype)))
    fastar.ops.attention_decode = spy
    try:
        img, tokens = sampled_tokens(vae, var, B=16, label_B=torch.arange(16) % 10, g_seed=0, cfg=2.0, top_k=30,
                                     top_p=0.95, precision=precision)
    finally:
        fastar.ops.attention_decode = decode
        hook.remove()
        decoded.remove()
    return img, tokens, logits, dtypes


@pytest.mark.parametrize("backend", ["cpu", "simt", "torch"])
def test_bf16_sampling_agrees_with_fp32(backend, monkeypatch):
    """bf16 against fp32 on the same backend (the torch backend draws its own way): the attention ran in bf16, the
    logits of every scale whose inputs agree (all earlier tokens equal) within MAX_LOGITS_ERR of their scale, the
    tokens and images within the measured bounds above."""
    if not fastar.backends().get(backend, True):
        pytest.skip(f"the {backend} backend is not built")
    monkeypatch.setenv("FASTAR_EMULATED_BF16", "1")  # the mode's numerics on any CPU
    vae, var = model()
    with fastar.use_backend(backend):
        img32, tokens32, logits32, dtypes32 = run(vae, var, "fp32")
        img16, tokens16, logits16, dtypes16 = run(vae, var, "bf16")
    assert dtypes32 == {torch.float32, ("decoder", torch.float32)}
    assert dtypes16 == {torch.bfloat16, ("decoder", torch.bfloat16)}  # attention and the VQVAE decoder in bf16
    assert all(t.dtype == torch.float32 for t in (*logits16, img16))  # the head, and the images widened
    for si, (a, b) in enumerate(zip(logits16, logits32)):
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert 0 < err <= MAX_LOGITS_ERR, f"scale {si}: logits error {err:.2e} of their scale"
        if not torch.equal(tokens16[si], tokens32[si]):
            break  # later scales see different inputs
    n = sum(pn * pn for pn in TINY_PN)
    agreement = sum((a == b).float().mean().item() * pn * pn for a, b, pn in zip(tokens16, tokens32, TINY_PN)) / n
    mse = (img16 - img32).pow(2).mean().item()
    assert agreement >= MIN_AGREEMENT
    assert mse == 0 or 10 * torch.log10(torch.tensor(1 / mse)).item() >= MIN_PSNR


def test_bf16_sampling_warns_without_bf16_instructions(monkeypatch):
    """On a CPU without AMX-BF16 / AVX512-BF16 (simulated here, so the check runs on every CPU) the mode runs, the
    same images as where the CPU has them, with a warning naming the missing instruction sets, by the method and by
    the CLI (before loading anything); a CPU that has them runs it silently; an unknown precision is refused."""
    vae, var = model()
    info = fastar.build_info()
    monkeypatch.setattr(fastar._backend, "build_info", lambda: {**info, "cpu_bf16": "amx-bf16"})
    monkeypatch.delenv("FASTAR_EMULATED_BF16", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = var.autoregressive_infer_cfg(2, 1, g_seed=0, precision="bf16")
    assert img.shape == (2, 3, 16, 16)
    emulated = bf16_emulated(monkeypatch, "VAR.autoregressive_infer_cfg",
                             lambda: var.autoregressive_infer_cfg(2, 1, g_seed=0, precision="bf16"))
    assert torch.equal(emulated, img)
    sample_cli_warns_before_loading(monkeypatch, var_sample, "var")
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        var.autoregressive_infer_cfg(2, 1, g_seed=0, precision="fp16")


def test_bf16_weight_copies_follow_the_weights(monkeypatch):
    """The bf16 copies kept between calls are remade when a weight changes in place (an optimizer step, a
    load_state_dict): sampling then equals that of a fresh model holding the new weights."""
    monkeypatch.setenv("FASTAR_EMULATED_BF16", "1")
    vae, var = model()
    kw = dict(B=2, label_B=1, g_seed=0, cfg=2.0, top_k=30, precision="bf16")
    before = var.autoregressive_infer_cfg(**kw)
    copies = var_module._gemm_copies[var.blocks[1]][1]
    assert torch.equal(var.autoregressive_infer_cfg(**kw), before)
    assert var_module._gemm_copies[var.blocks[1]][1] is copies  # unchanged weights: converted once
    with torch.no_grad():
        var.blocks[1].ffn.fc2.weight.mul_(-3)
    after = var.autoregressive_infer_cfg(**kw)
    fresh = copy.deepcopy(var)
    fresh.vae_proxy = var.vae_proxy
    assert not torch.equal(after, before)
    assert torch.equal(after, fresh.autoregressive_infer_cfg(**kw))
