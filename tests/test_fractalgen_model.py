"""FractalGen models (issue 12): official keys and parameter counts, KV-cache decoding, seeded sampling and a training
step on fastar's kernels against the reference ops, bad inputs, and the CLI (torchrun DDP: tests/test_fsdp.py)."""
from pathlib import Path

import pytest
import torch

import fastar
from fastar.models.fractalgen import MODELS, FractalGen, FractalGenConfig, build
from fastar.models.fractalgen import sample as fractalgen_sample
from fastar.models.fractalgen.pixelloss import PIX_MEAN, PIX_STD
from fastar.models.layers import Linear
from tests.conftest import backend_device, bf16_emulated, sample_cli_warns_before_loading
from tests.test_var_model import assert_finished, run_cli
from tests.tolerance import assert_close

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.one_schedule
# 8 px images: 4 patches of 4x4, then 16 pixels (or 4 patches of 2x2, then 4 pixels), then R, G, B
TINY = {"ar": FractalGenConfig((8, 4, 1), (32, 16, 16), (2, 1, 1), (2, 2, 2), ("ar", "ar"), class_num=10),
        "mar": FractalGenConfig((8, 4, 1), (32, 16, 16), (2, 1, 1), (2, 2, 2), ("mar", "mar"), class_num=10,
                                num_conds=5),
        "mar+guiding pixel": FractalGenConfig((8, 4, 2, 1), (32, 16, 16, 16), (1, 1, 1, 1), (2, 2, 2, 2),
                                              ("mar", "mar", "mar"), class_num=10, num_conds=5, guiding_pixel=True)}


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny ops are far too small to split; under a loaded machine two threads mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def official_sections():
    """{model: (parameter count, [(key, shape, kind)])} from the key lists the official code printed."""
    out = {}
    for section in (DATA / "fractalgen-state-dict-keys.txt").read_text().split("\n--- ")[1:]:
        head, *lines = section.strip().splitlines()
        out[head.split()[0]] = int(head.split()[-1]), [(k, eval(s), kind) for k, s, kind in
                                                       (ln.split(" ", 1)[:1] + ln.split(" ", 1)[1].rsplit(" ", 1)
                                                        for ln in lines)]
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_keys_and_parameter_count_equal_official(name):
    count, keys = official_sections()[name]
    with torch.device("meta"):
        model = build(name)
    params = dict(model.named_parameters())
    assert [(k, list(v.shape), "P" if k in params else "B") for k, v in model.state_dict().items()] == keys
    assert sum(p.numel() for p in params.values()) == count
    model.load_state_dict({k: torch.empty(s, device="meta") for k, s, _ in keys}, strict=True, assign=True)


def tiny(kind, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = TINY[kind]
    return FractalGen(FractalGenConfig(**{**cfg.__dict__, **overrides}))


def images(B, side, seed=1):
    """ImageNet-normalized images of whole 0..255 values (PixelLoss's rounding then never depends on its jitter)."""
    x = torch.randint(256, (B, 3, side, side), generator=torch.Generator().manual_seed(seed)) / 255
    return (x - torch.tensor(PIX_MEAN)[:, None, None]) / torch.tensor(PIX_STD)[:, None, None]


def test_ar_kv_cache_decoding_matches_the_causal_forward():
    """The conditions the KV-cache loop hands the child, step by step, are the full causal forward's on the same
    patches."""
    ar = tiny("ar").eval().generator
    cond = torch.randn(2, 32)
    seen, drawn = [], torch.randn(2, ar.seq_len, 3, 4, 4)

    def child(cond_list, **_):
        seen.append(cond_list[0])
        return drawn[:, len(seen) - 1]

    ar.sample([cond], 1, 1.0, "constant", 1.0, 0.0, child)
    patches = drawn.flatten(2)
    full = ar.transformer(ar.embed(patches[:, :-1], cond, 0), 0)  # (2, S, C)
    torch.testing.assert_close(torch.stack(seen, 1), full, atol=1e-5, rtol=1e-5)


def test_ar_few_rows_decode_in_one_call_bit_for_bit(monkeypatch):
    """With few rows an AR level's decode step is one transformer_decode call (llama blocks, RoPE): the conditions it
    hands the child and its caches are the blocks' one by one, bit for bit."""
    ar = tiny("ar").eval().generator
    cond, drawn = torch.randn(2, 32), torch.randn(2, ar.seq_len, 3, 4, 4)
    runs = []
    for one_call in (True, False):
        if not one_call:
            monkeypatch.setattr(type(ar), "decode_stack", lambda self, x: None)
        seen, calls, op = [], [], fastar.ops.transformer_decode
        monkeypatch.setattr(fastar.ops, "transformer_decode", lambda *a, **k: calls.append(1) or op(*a, **k))

        def child(cond_list, **_):
            seen.append(cond_list[0])
            return drawn[:, len(seen) - 1]
        ar.sample([cond], 1, 1.0, "constant", 1.0, 0.0, child)
        runs.append(torch.stack(seen, 1))
        assert len(calls) == (ar.seq_len if one_call else 0)
    assert torch.equal(*runs)


def test_ar_sampling_on_bfloat16_decode_weights(monkeypatch):
    """layers.decode_weights(model, bfloat16): the AR levels' and PixelLoss's one-call decode steps read bfloat16
    product weights; with weights bfloat16 holds exactly the draws are the float32 run's."""
    from fastar.models import layers
    model = tiny("ar").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, layers.Linear):
                m.weight.copy_(m.weight.bfloat16().float())
    labels = torch.tensor([3])

    def sample():
        return model.generate(labels, num_iter_list=[2, 2, 2], cfg=2.0, generator=torch.Generator().manual_seed(5))
    want, dtypes, op = sample(), set(), fastar.ops.transformer_decode
    monkeypatch.setattr(fastar.ops, "transformer_decode", lambda x, ws, *a, **k: dtypes.update(
        t.dtype for w in ws for t in w if t.dim() == 2) or op(x, ws, *a, **k))
    with layers.decode_weights(model):
        got = sample()
    assert dtypes == {torch.bfloat16} and torch.equal(got, want)


def test_pixelloss_kv_cache_decoding_matches_the_official_recompute():
    """Channel by channel, the one-token decode gives the logits of the official full 4-token forward, and the
    same seeded draws."""
    pixel = tiny("mar").eval().next_fractal.next_fractal
    cond, ids = torch.randn(5, 16), torch.randint(256, (5, 3))
    caches = [tuple(torch.empty(5, 2, 3, 8) for _ in range(2)) for _ in pixel.blocks]
    full = pixel.predict(ids, cond)
    for i in range(3):
        with torch.no_grad():  # the decode kernels (under autograd the torch formulation would run)
            torch.testing.assert_close(pixel.decode(ids, cond, i, caches), full[:, i], atol=1e-5, rtol=1e-5)
        assert fastar.last_backend("attention_decode") == "cpu"
    cond = torch.randn(6, 16)  # [cond; uncond] rows under CFG
    draws = [pixel.sample([cond], 1.1, 2.0, 1e-2, generator=torch.Generator().manual_seed(0), kv_cache=kv)
             for kv in (True, False)]
    assert torch.equal(*draws)


def test_pixelloss_few_rows_decode_in_one_call_bit_for_bit(monkeypatch):
    """With few rows (fractalar's pixels, B 1 under CFG) a decode step's blocks are one transformer_decode call: the
    logits and caches of the blocks called one by one, bit for bit, and sample() takes that path."""
    pixel = tiny("mar").eval().next_fractal.next_fractal
    cond, ids = torch.randn(2, 16), torch.randint(256, (2, 3))
    caches = [[tuple(torch.zeros(2, 2, 3, 8) for _ in range(2)) for _ in pixel.blocks] for _ in range(2)]
    stack = [block.decode_operands() for block in pixel.blocks]
    with torch.no_grad():
        for i in range(3):
            assert torch.equal(pixel.decode(ids, cond, i, caches[0], stack), pixel.decode(ids, cond, i, caches[1]))
    assert all(torch.equal(a, b) for x, y in zip(*caches) for a, b in zip(x, y))
    calls, op = [], fastar.ops.transformer_decode
    monkeypatch.setattr(fastar.ops, "transformer_decode", lambda *a, **k: calls.append(1) or op(*a, **k))
    pixel.sample([cond], 1.0, 2.0, 0.0, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3


@pytest.mark.parametrize("kind", list(TINY))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_forced_pixel_logits_decode_to_exactly_that_colour(kind, cfg):
    """A PixelLoss whose biases force R = 9, G = 200, B = 77 (all other logits 100 below): every pixel of every image
    comes out as that colour, whatever the levels above do: the channel order, the CFG mix and the normalization
    from ids to the data loader's space and back to [0, 1] undo exactly what training does."""
    model = tiny(kind).eval()
    pixel = model
    while not hasattr(pixel, "r_mlm"):
        pixel = pixel.next_fractal
    with torch.no_grad():
        for mlm, value in zip((pixel.r_mlm, pixel.g_mlm, pixel.b_mlm), (9, 200, 77)):
            mlm.bias.zero_()
            mlm.bias[0, value] = 100.0
    out = model.generate(torch.tensor([3, 7]), num_iter_list=[3, 2, 2], cfg=cfg,
                         generator=torch.Generator().manual_seed(0))
    want = torch.tensor([9, 200, 77.0])[None, :, None, None].expand_as(out) / 255
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    assert torch.equal((out * 255).round(), want * 255)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_mar_sampling_puts_each_patch_where_it_was_chosen(cfg):
    """With conditions that name their (row, position) and a child that returns a patch filled with that name, the
    sampled canvas holds at each position of each image its own name: every position drawn once, the [cond; uncond]
    rows paired, the transformer fed the patches drawn so far, unpatchify the inverse of patchify."""
    mar = tiny("mar").eval().next_fractal.generator  # 16 positions of 1x1 patches
    bsz, S = 2, mar.seq_len
    rows = 2 * bsz if cfg != 1.0 else bsz
    name = 100.0 * torch.arange(rows)[:, None] + torch.arange(S)  # (rows, S)
    drawn = []

    def predict(patches, mask, cond_list):
        assert patches.shape[0] == rows and torch.equal(mask[:bsz], mask[bsz:] if rows > bsz else mask)
        seen = ~mask.bool()
        assert torch.equal(patches[seen], (name % (100 * bsz))[seen][:, None].expand(-1, patches.shape[-1]))
        return [name[..., None].expand(-1, -1, 8)] * 5

    def child(cond_list, cfg, temperature, filter_threshold, generator):
        c = cond_list[0][:, 0]
        n = len(c) // 2 if rows > bsz else len(c)
        if rows > bsz:
            assert torch.equal(c[n:], c[:n] + 100 * bsz)  # each uncond row follows its cond row
        drawn.append(c[:n])
        return c[:n, None, None, None].expand(n, 3, 1, 1)

    mar.predict = predict
    out = mar.sample([torch.zeros(rows, 32)], 5, cfg, "linear", 1.0, 0.0, child)
    assert sorted(torch.cat(drawn).tolist()) == sorted(name[:bsz].flatten().tolist())
    torch.testing.assert_close(out, name[:bsz].view(bsz, 1, 4, 4).expand(bsz, 3, 4, 4), atol=0, rtol=0)


@pytest.mark.parametrize("kind", list(TINY))
def test_sampling_on_fastar_ops_equals_reference_ops(kind, backend):
    """Same weights, same seed: the backend's attention (MAR levels) and attention_decode (AR levels, PixelLoss) draw
    the same pixels as the reference ops, at cfg with the linear schedule, temperature and filter_threshold."""
    dev = backend_device(backend)
    model = tiny(kind).eval().to(dev)
    labels = torch.tensor([3, 7], device=dev)

    def sample():
        return model.generate(labels, num_iter_list=[3, 2, 2], cfg=3.0, temperature=1.1, filter_threshold=1e-2,
                              generator=torch.Generator(dev).manual_seed(5))

    out = sample()
    assert out.shape == (2, 3, 8, 8) and 0 <= out.min() and out.max() <= 1
    if kind == "ar":  # 4 rows: the AR levels' and PixelLoss's decode steps are transformer_decode calls
        assert fastar.last_backend("transformer_decode") == backend
    else:  # PixelLoss under the MAR levels: a row per pixel of the patches, decoded block by block
        assert fastar.last_backend("attention_decode") == backend
        assert fastar.last_backend("attention") == backend
    with fastar.use_backend("reference"):
        ref = sample()
    assert torch.equal(out, ref)
    assert torch.equal(out, sample())  # seeded
    assert not torch.equal(out, model.generate(labels, num_iter_list=[3, 2, 2], cfg=3.0,
                                               generator=torch.Generator(dev).manual_seed(6)))


@pytest.mark.parametrize("kind", list(TINY))
def test_training_step_gradients_match_float64_reference(kind, backend):
    """One training step (label dropout, MAR masks, every level, the guiding-pixel loss): every parameter's gradient
    within the tolerance rule of the float64 reference ops."""
    dev = backend_device(backend)
    model = tiny(kind, proj_dropout=0.0).train().to(dev)
    x, labels = images(3, 8).to(dev), torch.tensor([1, 2, 3], device=dev)
    grads, losses = {}, {}
    for name, dtype in ((backend, torch.float32), ("reference", torch.float32), ("reference", torch.float64)):
        with fastar.use_backend(name):
            model.to(dtype).zero_grad(set_to_none=True)
            torch.manual_seed(0)  # the same label dropout and masks
            loss = model(x.to(dtype), labels)
            loss.backward()
            losses[name, dtype] = loss.item()
            grads[name, dtype] = {n: p.grad.cpu() for n, p in model.named_parameters()}
        if name == backend:
            assert fastar.last_backend("attention") == backend
    # A 4-patch MAR level often masks every patch (the ratio is mostly > 0.75): no patch_emb gradient, as officially.
    assert [n for n, g in grads[backend, torch.float32].items() if not g.abs().sum() > 0 and "patch_emb" not in n] == []
    assert losses[backend, torch.float32] == pytest.approx(losses["reference", torch.float64], rel=1e-5)
    for n, g in grads[backend, torch.float32].items():
        assert_close("fractalgen_grads", g, grads["reference", torch.float64][n], grads["reference", torch.float32][n])


def test_nll_is_unconditional_and_unweighted():
    """Eval mode: labels are replaced by fake_latent (the same NLL for any labels) and R is not up-weighted."""
    model = tiny("ar", r_weight=5.0).eval()
    x = images(2, 8)
    torch.manual_seed(0)
    a = model(x, torch.tensor([1, 2]))
    torch.manual_seed(0)
    assert torch.equal(a, model(x, torch.tensor([5, 9])))


def test_bad_inputs_are_named():
    model = tiny("mar").eval()
    x, labels = images(2, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="imgs must be \\(B >= 1, 3, 8, 8\\), got \\(2, 3, 4, 8\\)"):
        model(x[:, :, :4], labels)
    with pytest.raises(ValueError, match="imgs must be \\(B >= 1, 3, 8, 8\\), got \\(0, 3, 8, 8\\)"):
        model(x[:0], labels[:0])
    with pytest.raises(ValueError, match="imgs must be ImageNet-normalized"):
        model(x * 10, labels)
    with pytest.raises(TypeError, match="labels must be a 1-D int64"):
        model(x, labels.float())
    with pytest.raises(ValueError, match="labels must be in"):
        model(x, torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="one entry per image"):
        model(x, torch.tensor([1]))
    with pytest.raises(ValueError, match="num_iter_list"):
        model.generate(labels, num_iter_list=[4])
    with pytest.raises(ValueError, match="cfg_schedule"):
        model.generate(labels, num_iter_list=[4, 4], cfg_schedule="cosine")
    with pytest.raises(ValueError, match="temperature"):
        model.generate(labels, num_iter_list=[4, 4], temperature=0)
    with pytest.raises(ValueError, match="build: name"):
        build("fractalgen_xl")
    with pytest.raises(ValueError, match="generator_type_list"):
        FractalGenConfig((8, 4, 1), (32, 16, 16), (2, 1, 1), (2, 2, 2), ("mar", "gpt"))
    with pytest.raises(ValueError, match="one entry per level"):
        FractalGenConfig((8, 4, 1), (32, 16), (2, 1, 1), (2, 2, 2), ("mar", "mar"))


def test_train_then_sample_cli(tmp_path, capsys):
    from fastar.__main__ import main as fastar_main
    out = run_cli(tmp_path, "train", "fractalgen", "--steps", "3", "--warmup", "1", "--bs", "8", "--nll-passes", "1",
                  "--num-samples", "2", "--num-iter", "2,2", "--cfg", "2.5", "--temperature", "1.5", "--out", "run")
    assert "NLL" in out and "bits/dim" in out and (tmp_path / "run" / "samples.png").exists()
    assert_finished(tmp_path / "run" / "ckpt.pt", "fractalgen", 3)
    # the checkpoint's samples.png settings are the sample CLI's defaults (below)
    out = run_cli(tmp_path, "sample", "fractalgen", "--ckpt", "run/ckpt.pt", "--classes", "0", "1",
                  "--bf16-weights", "--out", "g.png")
    assert "fastar train fractalgen checkpoint" in out and (tmp_path / "g.png").exists()
    assert "num_iter [2, 2], cfg 2.5 (linear), temperature 1.5" in out
    with pytest.raises(SystemExit):  # 3 entries for 2 levels: once the third silently dropped
        fastar_main(["sample", "fractalgen", "--ckpt", str(tmp_path / "run" / "ckpt.pt"), "--num-iter", "2,2,2",
                     "--out", str(tmp_path / "x.png")])
    assert "--num-iter needs one step count for each of the model's 2 transformer levels, got 2,2,2" in \
        capsys.readouterr().err


@pytest.mark.parametrize("kind", ["ar", "mar", "mar+guiding pixel"])
def test_bf16_generate(kind, monkeypatch):
    """generate(precision="bf16"): MAR levels' attention ran on bfloat16 queries (their products in bfloat16),
    PixelLoss's in float32; the images stay float32 in [0, 1] and agree with the fp32 run's on at least 80% of the
    pixel values (measured: all of them on these tiny models; a draw diverges once a logit moves across it). AR
    levels at 2 images with CFG decode 4 rows a step through transformer_decode's float32 weights, so their images
    are the fp32 ones. The weight copies are dropped after; without bf16 instructions (simulated) the same
    images, with a warning, and the CLI warns before loading; an unknown precision is refused."""
    monkeypatch.setenv("FASTAR_EMULATED_BF16", "1")  # the mode's numerics on any CPU
    model, labels = tiny(kind).eval(), torch.tensor([3, 7])
    seen = set()
    for name in ("attention", "attention_decode"):
        op = getattr(fastar.ops, name)
        monkeypatch.setattr(fastar.ops, name, lambda q, *a, _op=op, **kw: seen.add(q.dtype) or _op(q, *a, **kw))

    def generate(precision):
        seen.clear()
        return model.generate(labels, num_iter_list=[2, 2, 2], cfg=2.0, precision=precision,
                              generator=torch.Generator().manual_seed(5))

    out32, seen32 = generate("fp32"), set(seen)
    out16, seen16 = generate("bf16"), set(seen)
    if kind == "ar":
        assert torch.equal(out16, out32)
    else:
        assert seen32 == {torch.float32} and seen16 == {torch.bfloat16, torch.float32}
        assert out16.dtype == torch.float32 and 0 <= out16.min() and out16.max() <= 1
        assert (out16 == out32).float().mean() >= 0.8
    assert all(m.product_weight is None for m in model.modules() if isinstance(m, Linear))
    assert torch.equal(bf16_emulated(monkeypatch, "FractalGen.generate", lambda: generate("bf16")), out16)
    sample_cli_warns_before_loading(monkeypatch, fractalgen_sample, "fractalgen")
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        generate("fp16")


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_float64_model_samples(kind):
    """A .double() model samples (its pixel logits drawn from as float32, as DALL-E's): sample_categorical refused
    float64 logits, so a float64 FractalGen could train but not sample. The pixels match the float32 model's."""
    labels = torch.tensor([3, 7])

    def sample(model):
        with fastar.use_backend("reference"):
            return model.generate(labels, num_iter_list=[2, 2, 2], cfg=2.0, generator=torch.Generator().manual_seed(5))
    got, want = sample(tiny(kind).eval().double()), sample(tiny(kind).eval())
    assert got.dtype == torch.float64 and (got.float() - want).abs().max() < 1e-5


def test_generate_refuses_bad_arguments():
    """A NaN cfg or an inf temperature passed the `cfg < 1` / `temperature > 0` tests and drew -1 pixels into an
    embedding; a filter_threshold outside [0, 1] and float step counts were taken; empty labels failed inside."""
    model = tiny("mar").eval()
    labels = torch.tensor([3])
    for kw, match in [(dict(cfg=float("nan")), "cfg must be a finite number"),
                      (dict(temperature=float("inf")), "temperature must be a finite number"),
                      (dict(filter_threshold=-1.0), r"filter_threshold must be >= 0.0 and <= 1.0"),
                      (dict(num_iter_list=[2.5, 2]), "num_iter_list needs a positive int count"),
                      (dict(labels=torch.tensor([], dtype=torch.long)), "at least one label")]:
        with pytest.raises(ValueError, match=match):
            model.generate(**{"labels": labels, "num_iter_list": [2, 2], **kw})
    with pytest.raises(TypeError, match="progress must be None or a callable .* got int"):  # once "not callable"
        model.generate(labels, num_iter_list=[2, 2], progress=3)
    with pytest.raises(ValueError, match="FractalGen.generate: labels are on meta, the model on cpu"):
        model.generate(labels.to("meta"), num_iter_list=[2, 2])


def test_generate_takes_a_guidance_below_one():
    """cfg < 1 interpolates between the unconditional and the conditional logits (as MAR and VAR take it): at a
    constant 0 the draws are the unconditional model's, whatever the labels; at 0.5 the labels show. The pixel
    tables are scaled up so that the tiny model's conditions move its draws at all."""
    model = tiny("mar").eval()
    pixels = model.next_fractal.next_fractal
    with torch.no_grad():
        for table in (pixels.r_codebook, pixels.g_codebook, pixels.b_codebook):
            table.weight.mul_(100)
    draw = lambda label, cfg: model.generate(torch.tensor([label]), num_iter_list=[2, 2], cfg=cfg,  # noqa: E731
                                             cfg_schedule="constant", filter_threshold=0.0,
                                             generator=torch.Generator().manual_seed(3))
    assert torch.equal(draw(3, 0.0), draw(7, 0.0))
    assert not torch.equal(draw(3, 0.5), draw(7, 0.5))
