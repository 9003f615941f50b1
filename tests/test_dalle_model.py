"""DALL-E on fastar ops: the dVAE's layers and losses, the transformer's layer schedule, masks, sampling and
gradients against the reference ops, the tokenizer, bad inputs and the train / sample CLI."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastar
from fastar.models.dalle import (DALLE, DALLE_12B, DVAE, DALLEConfig, Decoder, DVAEConfig, Encoder, TextTokenizer,
                                 layer_kind, map_pixels, parameter_count, unmap_pixels)
from fastar.models.dalle import dalle as dalle_module
from fastar.models import layers
from fastar.models.dalle import dvae as dvae_module
from fastar.models.layers import Linear
from tests.conftest import backend_device
from tests.test_var_model import assert_finished, run_cli
from tests.tolerance import assert_close

TINY = DALLEConfig(width=64, depth=4, heads=2, text_vocab=40, text_len=6, image_vocab=32, grid=4, conv_kernel=3)
TINY_DVAE = DVAEConfig(n_hid=16, n_blk_per_group=1, group_count=3, vocab_size=32, n_init=8)


def conv(n_in, n_out, k):
    return n_out * n_in * k * k + n_out


def block(n_in, n_out, kernels):
    """A residual block: 1x1 id path when the widths differ, four convs n_in -> h -> h -> h -> n_out, h = n_out / 4."""
    h = n_out // 4
    widths = (n_in, h, h, h, n_out)
    return (conv(n_in, n_out, 1) if n_in != n_out else 0) + sum(conv(widths[i], widths[i + 1], k)
                                                               for i, k in enumerate(kernels))


def test_dvae_parameter_counts_match_the_layer_formulas():
    """openai's encoder (n_hid 256, 2 blocks x 4 groups, 8192 codes) ~53.8 M, decoder ~43.8 M parameters."""
    with torch.device("meta"):
        enc, dec = Encoder(), Decoder()
    widths = (256, 512, 1024, 2048)
    n_enc = conv(3, 256, 7) + conv(2048, 8192, 1) + sum(
        block(w if i else (widths[g - 1] if g else 256), w, (3, 3, 3, 1)) for g, w in enumerate(widths)
        for i in range(2))
    dwidths = widths[::-1]
    n_dec = conv(8192, 128, 1) + conv(256, 6, 1) + sum(
        block(w if i else (dwidths[g - 1] if g else 128), w, (1, 3, 3, 3)) for g, w in enumerate(dwidths)
        for i in range(2))
    assert sum(p.numel() for p in enc.parameters()) == n_enc
    assert sum(p.numel() for p in dec.parameters()) == n_dec
    assert round(n_enc / 1e6, 1) == 53.8 and round(n_dec / 1e6, 1) == 43.8


def test_dvae_module_names_are_the_released_keys():
    with torch.device("meta"):
        enc, dec = Encoder(), Decoder()
    keys = set(enc.state_dict())
    assert {"blocks.input.w", "blocks.input.b", "blocks.group_1.block_1.res_path.conv_1.w",
            "blocks.group_2.block_1.id_path.w", "blocks.group_4.block_2.res_path.conv_4.b",
            "blocks.output.conv.w"} <= keys
    assert "blocks.group_1.block_1.id_path.w" not in keys  # 256 -> 256: identity
    assert enc.state_dict()["blocks.output.conv.w"].shape == (8192, 2048, 1, 1)
    assert dec.state_dict()["blocks.input.w"].shape == (128, 8192, 1, 1)
    assert dec.state_dict()["blocks.group_1.block_1.id_path.w"].shape == (2048, 128, 1, 1)
    assert dec.state_dict()["blocks.output.conv.w"].shape == (6, 256, 1, 1)


def test_dvae_shapes_and_post_gain():
    torch.manual_seed(0)
    dvae = DVAE(TINY_DVAE)
    img = torch.rand(2, 3, 16, 16)
    logits = dvae.encoder(map_pixels(img))
    assert logits.shape == (2, 32, 4, 4)
    assert dvae.decoder(F.one_hot(logits.argmax(1), 32).permute(0, 3, 1, 2).float()).shape == (2, 6, 16, 16)
    tokens = dvae.img_to_tokens(img)
    assert tokens.shape == (2, 4, 4) and tokens.dtype == torch.long
    one_hot = F.one_hot(tokens, 32).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(dvae.decoder.decode_tokens(tokens), dvae.decoder(one_hot))  # the codebook lookup
    assert dvae.tokens_to_img(tokens).shape == (2, 3, 16, 16)
    blk = dvae.encoder.blocks.group_2.block_1
    assert blk.post_gain == 1 / 3 ** 2  # 1 / n_layers^2, 3 groups x 1 block
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(blk(x), blk.id_path(x) + blk.res_path(x) / 9)


def test_map_unmap_pixels():
    x = torch.rand(1, 3, 4, 4)
    assert map_pixels(x).min() >= 0.1 and map_pixels(x).max() <= 0.9
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)


def test_logit_laplace_loss_is_the_density_in_float64():
    g = torch.Generator().manual_seed(1)
    x = map_pixels(torch.rand(2, 3, 5, 5, generator=g, dtype=torch.float64))
    stats = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    mu, b = stats[:, :3], stats[:, 3:].exp()
    density = torch.exp(-(torch.log(x / (1 - x)) - mu).abs() / b) / (2 * b * x * (1 - x))
    torch.testing.assert_close(dvae_module.logit_laplace_nll(x, stats), -density.log().mean(), rtol=1e-12, atol=0)
    t = torch.linspace(1e-7, 1 - 1e-7, 200001, dtype=torch.float64)  # a density on (0, 1): integrates to 1
    f = torch.exp(-(torch.logit(t) - 0.3).abs() / 0.5) / (2 * 0.5 * t * (1 - t))
    assert abs(torch.trapezoid(f, t).item() - 1) < 1e-3


def test_kl_to_uniform_and_schedules():
    assert abs(dvae_module.kl_to_uniform(torch.zeros(1, 16, 2, 2)).item()) < 1e-6
    assert abs(dvae_module.kl_to_uniform(torch.full((1, 16, 1, 1), -1e4).index_fill(1, torch.tensor([3]), 0.))
               .item() - math.log(16)) < 1e-5
    assert dvae_module.tau_schedule(0) == 1 and dvae_module.tau_schedule(150_000) == 1 / 16
    assert dvae_module.beta_schedule(0) == 0 and dvae_module.beta_schedule(5000) == dvae_module.beta_schedule(9999)
    assert abs(dvae_module.beta_schedule(2500) - 3.3) < 1e-9  # the cosine's midpoint


def test_dvae_training_step_reaches_every_parameter():
    dvae = DVAE(TINY_DVAE)
    loss, nll, kl = dvae(torch.rand(2, 3, 16, 16), 1.0, 0.5, torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dvae.parameters())


def test_layer_schedule_and_mask_per_layer():
    assert [layer_kind(i, 8) for i in range(8)] == ["row", "column", "row", "row", "row", "column", "row", "conv"]
    kinds = [layer_kind(i, 64) for i in range(64)]
    assert kinds[63] == "conv" and [i + 1 for i, k in enumerate(kinds) if k == "column"] == list(range(2, 63, 4))
    model = DALLE(TINY)
    for i, blk in enumerate(model.blocks):
        m = blk.attn.mask
        assert (m.kind, m.text_len, m.grid, m.conv_kernel) == (layer_kind(i, 4), TINY.text_len + 1, 4, 3)


@pytest.mark.parametrize("n", [16, 15, 9])  # a whole grid, training's grid minus its last slot, a part
def test_column_transpose_trick_is_the_column_mask(n):
    """column_attention (the transposed grid, batched causal) = attention under the column mask, values and
    gradients, in float64 on the reference ops."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 5 + n, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    mask = fastar.ops.AttentionMask.dalle("column", 5, 4)
    with fastar.use_backend("reference"):
        out = dalle_module.column_attention(q, k, v, mask)
        expected = fastar.ops.attention(q, k, v, mask)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    dout = torch.randn(out.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(expected, (q, k, v), dout)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_12b_config_on_meta_device():
    with torch.device("meta"):
        model = DALLE(DALLE_12B)
    n = sum(p.numel() for p in model.parameters())
    assert n == parameter_count(DALLE_12B) and 12.0e9 < n < 12.3e9
    assert sum(p.numel() for p in DALLE(TINY).parameters()) == parameter_count(TINY)


def tiny_inputs(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, TINY.text_vocab, (B, TINY.text_len), generator=g)
    text[0, 4:] = 0  # padding
    return text, torch.randint(0, TINY.image_vocab, (B, TINY.grid ** 2), generator=g)


def test_padding_tokens_per_position_and_image_position_embeddings():
    model = DALLE(TINY)
    text = torch.zeros(1, TINY.text_len, dtype=torch.long)
    x = model.embed_text(text)[0, 1:] - model.text_pos_emb.weight[1:]
    torch.testing.assert_close(x, model.text_emb.weight[TINY.text_vocab:])  # one padding token per position
    img = model.embed_image(torch.zeros(1, 16, dtype=torch.long))[0] - model.image_emb.weight[0]
    torch.testing.assert_close(img[5], model.image_row_emb.weight[1] + model.image_col_emb.weight[1])


def test_loss_weights_text_and_image_1_to_7():
    model = DALLE(TINY)
    text, image = tiny_inputs()
    loss, ce_text, ce_image = dalle_module.loss(model, text, image)
    torch.testing.assert_close(loss, ce_text / 8 + 7 * ce_image / 8)


def test_kv_cache_logits_match_teacher_forcing():
    """Prefill + decode on the masked caches gives the teacher-forced logits at every image position."""
    torch.manual_seed(0)
    model = DALLE(TINY).eval()
    text, image = tiny_inputs()
    _, image_logits = model(text, image)
    seen = []
    orig = model.to_image_logits.forward
    model.to_image_logits.forward = lambda x: seen.append(orig(x)) or seen[-1]
    with torch.no_grad():  # the sampled tokens differ from `image`: condition on them through image_prefix
        for m in (0, 7):
            seen.clear()
            model.generate(text, image_prefix=image[:, :m], generator=torch.Generator().manual_seed(0))
            assert len(seen) == 16 - m
            torch.testing.assert_close(seen[0], image_logits[:, m], rtol=1e-4, atol=1e-4)


def sample(model, text, **kw):
    return model.generate(text, temperature=1.0, top_k=10, top_p=0.95,
                          generator=torch.Generator(text.device).manual_seed(3), **kw)


def test_fastar_ops_sampling_equals_reference_ops(backend):
    dev = backend_device(backend)
    torch.manual_seed(0)
    model = DALLE(TINY).eval().to(dev)
    text, image = tiny_inputs()
    tokens = sample(model, text.to(dev), image_prefix=image[:, :5].to(dev))
    assert fastar.last_backend("attention_decode") == backend
    with fastar.use_backend("reference"):
        ref_tokens = sample(model, text.to(dev), image_prefix=image[:, :5].to(dev))
    assert tokens.shape == (3, 16) and torch.equal(tokens[:, :5].cpu(), image[:, :5])
    assert torch.equal(tokens.cpu(), ref_tokens.cpu())
    assert not torch.equal(tokens, sample(model, text.to(dev), image_prefix=image[:, :4].to(dev)))


def test_sampling_on_bfloat16_decode_weights(monkeypatch):
    """layers.decode_weights(model, bfloat16): the decode steps read bfloat16 weights (every Linear's, logits head
    included). With weights that bfloat16 holds exactly the products are bit for bit the float32 ones, so the tokens
    are the float32 run's; on exit the model samples as before."""
    torch.manual_seed(0)
    model = DALLE(TINY).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Linear):
                m.weight.copy_(m.weight.bfloat16().float())
    text, image = tiny_inputs()
    want = sample(model, text, image_prefix=image[:, :5])
    dtypes, steps, op, stack = [], [], fastar.ops.linear, fastar.ops.transformer_decode
    monkeypatch.setattr(fastar.ops, "linear", lambda x, w, b=None: dtypes.append(w.dtype) or op(x, w, b))
    monkeypatch.setattr(fastar.ops, "transformer_decode", lambda x, ws, *a, **k: steps.append(
        {w[j].dtype for w in ws for j in (2, 4, 8, 10)}) or stack(x, ws, *a, **k))
    with torch.no_grad(), layers.decode_weights(model):
        got = sample(model, text, image_prefix=image[:, :5])
    # the logits head of each of the 11 tokens, and the 10 decode steps' blocks in one call each (the prefill's
    # many rows run oneDNN's GEMM)
    assert set(dtypes) == {torch.bfloat16} and len(dtypes) == 11
    assert steps == [{torch.bfloat16}] * 10
    assert torch.equal(got, want) and "decode_weight" not in vars(model.to_image_logits)


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sampling_on_16_bit_caches(backend, monkeypatch, cache_dtype):
    """generate(cache_dtype=...): every layer's KV caches are 16-bit under the float32 model (the prefill writes
    them, each decode step's transformer_decode reads them), and fastar ops sample the tokens the reference ops
    (attention in float64 on the same 16-bit values) do."""
    dev = backend_device(backend)
    torch.manual_seed(0)
    model = DALLE(TINY).eval().to(dev)
    text, image = (t.to(dev) for t in tiny_inputs())
    seen, stack = [], fastar.ops.transformer_decode
    monkeypatch.setattr(fastar.ops, "transformer_decode", lambda x, ws, kc, vc, *a, **k: seen.append(
        {c.dtype for c in (*kc, *vc)} | {x.dtype}) or stack(x, ws, kc, vc, *a, **k))
    tokens = sample(model, text, image_prefix=image[:, :5], cache_dtype=cache_dtype)
    assert seen == [{cache_dtype, torch.float32}] * 10  # the 10 decode steps after the prefill of 5
    assert fastar.last_backend("attention_decode") == backend
    with fastar.use_backend("reference"):
        assert torch.equal(tokens, sample(model, text, image_prefix=image[:, :5], cache_dtype=cache_dtype))
    with pytest.raises(ValueError, match="DALLE.generate: cache_dtype must be None, the model's torch.float32 or"):
        sample(model, text, cache_dtype=torch.float64)


def test_training_step_gradients_match_float64_reference(backend):
    dev = backend_device(backend)
    torch.manual_seed(0)
    model = DALLE(TINY).to(dev)
    text, image = (t.to(dev) for t in tiny_inputs())
    grads = {}
    for name, dtype in ((backend, torch.float32), ("reference", torch.float32), ("reference", torch.float64)):
        with fastar.use_backend(name):
            model.to(dtype).zero_grad(set_to_none=True)
            dalle_module.loss(model, text, image)[0].backward()
            grads[name, dtype] = {n: p.grad.cpu() for n, p in model.named_parameters()}
        if name == backend:
            assert fastar.last_backend("attention") == backend
    for n, g in grads[backend, torch.float32].items():
        assert_close("var_grads", g, grads["reference", torch.float64][n], grads["reference", torch.float32][n])


def test_tokenizer_lowercases_and_limits_length():
    tok = TextTokenizer.train(["a handwritten seven", "a handwritten two"], 40, 6)
    assert torch.equal(tok.encode(["A HANDWRITTEN Seven"]), tok.encode(["a handwritten seven"]))
    assert tok.decode(tok.encode(["a handwritten two"])) == ["a handwritten two"]
    with pytest.raises(ValueError, match="text_len must be in \\[1, 256\\]"):
        TextTokenizer.train(["a"], 40, 257)
    with pytest.raises(ValueError, match="more than text_len=6"):
        tok.encode(["seven " * 7])


def test_bad_inputs_are_named():
    model = DALLE(TINY)
    text, image = tiny_inputs()
    with pytest.raises(ValueError, match="text has 7 tokens, the model takes text_len=6"):
        model(torch.cat([text, text[:, :1]], 1), image)
    with pytest.raises(ValueError, match="text token ids must be in \\[0, 40\\)"):
        model(text + 40, image)
    with pytest.raises(ValueError, match="image token ids must be in \\[0, 32\\)"):
        model(text, image + 32)
    with pytest.raises(ValueError, match="training takes the whole grid, 16 image tokens, got 9"):
        model(text, image[:, :9])
    with pytest.raises(ValueError, match="got 17 image tokens, the 4 x 4 grid takes at most 16"):
        model.generate(text, image_prefix=torch.cat([image, image[:, :1]], 1))
    with pytest.raises(ValueError, match="text must be \\(B, text_len\\) int64, got torch.float32"):
        model.generate(text.float())  # the text named, not the default image prefix made from it
    with pytest.raises(TypeError, match="text must be a \\(B, text_len\\) int64 tensor, got list"):
        model.generate(text.tolist())
    with pytest.raises(ValueError, match="Encoder: x must be a floating-point \\(B, 3, H, W\\)"):
        Encoder(TINY_DVAE)(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="Decoder: z must be a floating-point \\(B, 32, H, W\\) tensor, got "
                                         "torch.int64"):
        Decoder(TINY_DVAE)(torch.zeros(1, 32, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="decode_tokens: idx must be in \\[0, 32\\)"):
        Decoder(TINY_DVAE).decode_tokens(torch.full((1, 4, 4), 32))


def test_train_then_sample_cli(tmp_path):
    out = run_cli(tmp_path, "train", "dalle", "--dvae-steps", "3", "--dalle-steps", "3", "--bs", "8", "--out", "run")
    assert "dalle loss" in out and (tmp_path / "run" / "samples.png").exists()
    assert_finished(tmp_path / "run" / "ckpt.pt", "dalle", 3)
    out = run_cli(tmp_path, "sample", "dalle", "--ckpt", "run/ckpt.pt", "--text", "a handwritten seven", "--n", "2",
                  "--prefix-from", "3", "--out", "g.png")
    assert "fastar train dalle" in out and (tmp_path / "g.png").exists()
    run_cli(tmp_path, "sample", "dalle", "--ckpt", "run/ckpt.pt", "--n", "2", "--bf16-weights", "--cache-dtype",
            "bfloat16", "--out", "b.png")
    assert (tmp_path / "b.png").exists()


def test_generate_progress_bar_counts_the_tokens(capsys):
    text, image = tiny_inputs(B=1)
    torch.manual_seed(0)
    DALLE(TINY).eval().generate(text, image_prefix=image[:, :2], progress=True)
    err = capsys.readouterr().err
    assert "DALL-E tokens" in err and f"0/{TINY.grid ** 2 - 2}" in err  # the bar with its total (cleared when done)


def test_dvae_refuses_pixels_it_cannot_tokenize():
    """Int images, pixels outside [0, 1] and sizes off the downsampling were tokenized silently (map_pixels ran
    before any check: a uint8 image gave a NaN loss, 18 px a 4 x 4 grid with pixels dropped)."""
    dvae = DVAE(TINY_DVAE)
    f = 2 ** (TINY_DVAE.group_count - 1)
    good = torch.rand(1, TINY_DVAE.channels, 2 * f, 2 * f)
    assert dvae.img_to_tokens(good).shape == (1, 2, 2)
    for img, match in [((good * 255).to(torch.uint8), "floating-point"), (good * 255, r"pixels in \[0, 1\]"),
                       (torch.rand(1, TINY_DVAE.channels, 2 * f + 2, 2 * f), f"multiples of {f}")]:
        with pytest.raises((TypeError, ValueError), match=match):
            dvae.img_to_tokens(img)
    for tau in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError, match="DVAE.forward: tau must be"):
            dvae(good, tau, 1.0)


def test_text_decode_refuses_ids_past_the_vocabulary():
    tok = TextTokenizer.train(["a handwritten seven", "a handwritten one"], 40, 6)
    ids = tok.encode(["a handwritten seven"])
    assert tok.decode(ids) == ["a handwritten seven"]
    with pytest.raises(ValueError, match=r"ids must be in \[0, "):
        tok.decode(torch.tensor([[1000]]))  # once decoded to '' (the id dropped)


def test_text_and_image_batches_must_agree():
    model = DALLE(TINY).eval()
    text, image = tiny_inputs(B=2)
    for call in (lambda: model(text, image[:1]), lambda: model.generate(text, image_prefix=image[:1, :2])):
        with pytest.raises(ValueError, match="the image tokens' batch 1 must be the text's, 2"):
            call()


def test_text_encode_refuses_non_strings():
    tok = TextTokenizer.train(["a handwritten seven"], 40, 6)
    for captions in ([5], [None], "a handwritten seven"):
        with pytest.raises(TypeError, match="captions must be a list of strings"):
            tok.encode(captions)
