"""MAR on fastar: the official key lists and parameter counts (tests/data), the KL-16 VAE, and seeded sampling
against the float64 reference."""
import copy
import dataclasses
import math

import pytest
import torch

import fastar
from fastar.models import layers
from fastar.models.fractalgen.blocks import Block
from fastar.models.layers import Linear
from fastar.models.mar import MAR, AutoencoderKL, KLConfig, mar, mar_base, mar_large
from fastar.models.mar import sample as mar_sample
from tests.conftest import bf16_emulated, sample_cli_warns_before_loading
from tests.test_var_model import DATA, assert_finished, kinds, official_keys, run_cli
from tests.tolerance import assert_close

MAR_KEYS, KL_KEYS = "mar-base-state-dict-keys.txt", "kl16-vae-state-dict-keys.txt"


def official_counts():
    """{size: parameter count} from the MAR-B key list's header (the official code's own counts)."""
    line = next(l for l in (DATA / MAR_KEYS).read_text().splitlines() if l.startswith("# Parameter counts"))
    return {size: int(n) for size, n in (part.split() for part in line.split(":")[1].split(","))}


@pytest.mark.parametrize("size", ["base", "large", "huge"])
def test_parameter_counts(size):
    with torch.device("meta"):
        assert sum(p.numel() for p in mar(size).parameters()) == official_counts()[size]
    assert official_counts()["base"] == 207_924_768  # the README's 208M


def test_mar_base_matches_official_keys():
    with torch.device("meta"):
        model = mar("base")
    assert kinds(model) == official_keys(MAR_KEYS)  # names, shapes, parameter vs buffer


def test_kl16_vae_matches_official_keys():
    with torch.device("meta"):
        vae = AutoencoderKL()
    expected = official_keys(KL_KEYS)
    assert len(expected) == 312 and kinds(vae) == expected
    assert sum(p.numel() for p in vae.parameters()) == 66_456_019
    vae.load_state_dict({k: torch.empty(s, device="meta") for k, (s, _) in expected.items()}, strict=True, assign=True)


# main_mar.py's call of the official builder for MAR-B (the README's flags: diffloss_d 6, diffloss_w 1024).
MAIN_MAR_KWARGS = dict(img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, mask_ratio_min=0.7,
                       label_drop_prob=0.1, class_num=1000, attn_dropout=0.1, proj_dropout=0.1, buffer_size=64,
                       diffloss_d=6, diffloss_w=1024, num_sampling_steps="100", diffusion_batch_mul=4,
                       grad_checkpointing=False)


def test_official_builders_take_main_mar_kwargs():
    with torch.device("meta"), pytest.warns(UserWarning, match="attn_dropout=0.1 is not applied"):
        model = mar_base(**MAIN_MAR_KWARGS)
    assert kinds(model) == official_keys(MAR_KEYS)
    assert model.cfg.num_sampling_steps == 100 and model.diffloss.num_sampling_steps == 100
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 2 * 12 * 2 and set(drops) == {0.1}  # attention projection and MLP of every block
    with torch.device("meta"), pytest.warns(UserWarning):
        large = mar_large(**{**MAIN_MAR_KWARGS, "diffloss_d": 8, "diffloss_w": 1280})
    assert sum(p.numel() for p in large.parameters()) == official_counts()["large"]
    with torch.device("meta"), pytest.warns(UserWarning):  # the official defaults: a d3 head
        assert mar_base().cfg.diffloss_d == 3


@pytest.mark.parametrize("kwargs, error, match", [
    ({"decoder_depth": 4}, TypeError, r"unexpected keyword arguments \['decoder_depth'\]"),
    ({"patch_size": 2}, ValueError, "patch_size must be 1"),
    ({"num_sampling_steps": "ddim25"}, ValueError, "num_sampling_steps must be a step count"),
])
def test_official_builder_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        mar_base(attn_dropout=0.0, **kwargs)


TINY_KL = KLConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def test_kl_vae_fast_path_matches_reference():
    """Encode + decode a 16 px image: the decoder's fast path (fastar's backend: the upsample as a phase conv) vs
    the official formulation on the reference backend."""
    torch.manual_seed(0)
    vae, x = AutoencoderKL(TINY_KL).eval(), torch.rand(2, 3, 16, 16) * 2 - 1

    def roundtrip(m, x, backend):
        with fastar.use_backend(backend), torch.no_grad():
            mean, _ = m.encode(x)
            return m.decode(mean)

    out = roundtrip(vae, x, "cpu")
    assert out.shape == (2, 3, 16, 16)
    assert_close("mar_vae", out, roundtrip(vae.double(), x.double(), "reference"), roundtrip(vae.float(), x, "reference"))


def tiny_mar(seed=0):
    torch.manual_seed(seed)
    model = mar("base", width=32, depth=1, num_heads=2, diffloss_d=1, diffloss_w=32, img_size=64, buffer_size=4,
                class_num=10, num_sampling_steps=8).eval()
    for p in model.diffloss.parameters():  # the zero-initialised head would predict eps = 0 throughout
        torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_sample_tokens(cfg):
    model = tiny_mar()
    labels = torch.tensor([3, 7])

    def sample(m, backend):
        with fastar.use_backend(backend):
            return m.sample_tokens(2, num_iter=4, cfg=cfg, labels=labels, generator=torch.Generator().manual_seed(1))

    out = sample(model, "cpu")
    assert out.shape == (2, 16, 4, 4)
    ref32 = sample(model, "reference")
    ref64 = sample(tiny_mar().double(), "reference")
    assert_close("mar_sample_tokens", out, ref64, ref32)


def test_sampling_decoder_computes_only_the_predicted_rows():
    """forward_mae_decoder(x, mask, rows) in sampling, on fastar's path: the last block's queries, projection and MLP
    run on the asked rows alone (Block.forward_rows), and z agrees with z[rows] of the whole decoder on the float64
    reference by the tolerance rule (two blocks: one whole, one pruned; 3 of 16 rows of each of 2 sequences)."""
    torch.manual_seed(0)
    model = mar("base", width=32, depth=2, num_heads=2, diffloss_d=1, diffloss_w=32, img_size=64, buffer_size=4,
                class_num=10).eval()
    model64 = copy.deepcopy(model).double()
    mask = torch.zeros(2, 16)
    mask[0, 5:12], mask[1, :7] = 1, 1
    rows = torch.zeros(2, 16, dtype=torch.bool)
    rows[0, [5, 9, 11]], rows[1, [0, 2, 6]] = True, True
    seen = []
    fc1 = model.decoder_blocks[-1].mlp.fc1
    fc1.forward_gelu = lambda x, *args: seen.append(x.shape[:-1]) or Linear.forward_gelu(fc1, x, *args)

    def decode(m, backend, asked):
        with fastar.use_backend(backend), torch.no_grad():
            x = torch.randn(2, 4 + 9, 32, generator=torch.Generator().manual_seed(1)).to(m.mask_token.dtype)
            return m.forward_mae_decoder(x, mask.to(x.dtype), asked)

    z = decode(model, "cpu", rows)
    assert z.shape == (6, 32) and seen == [(2, 3)]
    ref32 = decode(model, "reference", None)[rows]
    assert_close("mar_sample_tokens", z, decode(model64, "reference", None)[rows], ref32)
    assert torch.equal(decode(model, "reference", rows), ref32)  # the official formulation: the whole decoder
    with torch.no_grad():  # sampling a model left in training mode (dropout 0 here): the same rows
        model.train()
        assert torch.allclose(decode(model, "cpu", rows), z, rtol=0, atol=0)
    causal = Block(32, 2, causal=True)
    with pytest.raises(ValueError, match="forward_rows: a bidirectional block only"):
        causal.forward_rows(torch.zeros(1, 4, 32), torch.zeros(1, 1, dtype=torch.long))


def test_training_step_gradients():
    """One training step (mask ratio, orders, label dropout, diffusion_batch_mul draws from one generator): loss and
    gradients on fastar's cpu ops against the same step on the float64 and float32 reference ops."""
    latents, labels = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([3, 7])

    def step(model, backend):
        model.train()
        with fastar.use_backend(backend):
            loss = model(latents.to(model.fake_latent.dtype), labels, generator=torch.Generator().manual_seed(5))
        loss.backward()
        return [loss] + [p.grad for p in model.parameters()]

    out, ref64, ref32 = step(tiny_mar(), "cpu"), step(tiny_mar().double(), "reference"), step(tiny_mar(), "reference")
    assert len(out) == len(list(tiny_mar().parameters())) + 1
    # the float64 oracle draws the float32 run's noise (it once drew its own: 3.5e-2 apart, a vacuous bound)
    assert abs(ref32[0].item() - ref64[0].item()) <= 1e-5 * abs(ref64[0].item())
    for o, r64, r32 in zip(out, ref64, ref32):
        assert_close("mar_train_grads", o, r64, r32)


def test_head_loss_runs_only_the_masked_rows(monkeypatch):
    """DiffLoss.forward with a mask on fastar's path: diffusion_loss sees only the rows of nonzero mask, and the loss
    and every gradient (the head's and z's) agree with the official formulation (every row, the others' loss times
    0) on the float64 reference by the tolerance rule; the same draws (the generator's state after the call)."""
    from fastar.models.mar.diffloss import DiffLoss

    def head(dtype):
        torch.manual_seed(0)
        dl = DiffLoss(4, 8, 2, 16, 10)
        with torch.no_grad():
            for p in dl.parameters():  # the zero init would leave most gradients 0; drawn in float32, then cast
                p.normal_(0, 0.3)  # (a float64 normal_ draws other values: the oracle would be another model)
        return dl.to(dtype)

    g = torch.Generator().manual_seed(2)
    target, z = torch.randn(12, 4, generator=g), torch.randn(12, 8, generator=g)
    mask = (torch.arange(12) % 3 != 0).float()  # 8 of 12 rows
    rows = []
    loss_op = fastar.ops.diffusion_loss
    monkeypatch.setattr(fastar.ops, "diffusion_loss", lambda x, *a, **k: rows.append(len(x)) or loss_op(x, *a, **k))

    def step(dl, backend):
        zz = z.to(dl.net.cond_embed.weight.dtype).clone().requires_grad_()
        gen = torch.Generator().manual_seed(5)
        with fastar.use_backend(backend):
            loss = dl(target.to(zz.dtype), zz, mask.to(zz.dtype), generator=gen)
        loss.backward()
        return [loss, zz.grad] + [p.grad for p in dl.parameters()], gen.get_state()

    out, state = step(head(torch.float32), "cpu")
    assert rows == [8]
    ref64, _ = step(head(torch.float64), "reference")
    ref32, state32 = step(head(torch.float32), "reference")
    assert rows == [8, 12, 12] and torch.equal(state, state32)
    assert abs(ref32[0].item() - ref64[0].item()) <= 1e-5 * abs(ref64[0].item())  # one model, one draw
    for o, r64, r32 in zip(out, ref64, ref32):
        assert_close("mar_train_grads", o, r64, r32)
    assert out[1][mask == 0].abs().max() == 0  # the unmasked rows' z get no gradient, as officially


def test_dropout_and_grad_checkpointing():
    """proj_dropout acts in training only; grad_checkpointing recomputes the blocks (dropout masks included) and
    leaves the loss and every gradient as they were."""
    latents, labels = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([3, 7])

    def step(model, train=True):
        model.train(train)
        torch.manual_seed(11)  # dropout's masks
        loss = model(latents, labels, generator=torch.Generator().manual_seed(5))
        loss.backward()
        return [loss] + [p.grad for p in model.parameters()]

    def variant(**kw):
        model = tiny_mar()
        return MAR(dataclasses.replace(model.cfg, **kw)).requires_grad_(True), model

    plain = step(tiny_mar())
    dropped, base = variant(proj_dropout=0.5)
    dropped.load_state_dict(base.state_dict())
    assert not torch.equal(step(dropped)[0], plain[0])  # dropout changed the training loss
    dropped.zero_grad()
    assert torch.equal(step(dropped, train=False)[0], step(tiny_mar(), train=False)[0])  # and nothing in eval
    ckpt, base = variant(proj_dropout=0.5, grad_checkpointing=True)
    ckpt.load_state_dict(base.state_dict())
    calls, block = [], ckpt.decoder_blocks[0]
    block.forward = lambda *a, forward=block.forward: calls.append(1) or forward(*a)  # (recomputes skip hooks)
    dropped.zero_grad()
    for a, b in zip(step(ckpt), step(dropped)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(calls) == 2  # the block ran again in the backward: its activations were not kept


def test_mask_ratio_distribution():
    """The truncated normal of the official sampler: support [0.7, 1], mean ~0.867."""
    model, g = tiny_mar(), torch.Generator().manual_seed(0)
    r = torch.tensor([model.mask_ratio(g) for _ in range(4000)])
    assert r.min() >= 0.7 and r.max() <= 1.0 and abs(r.mean().item() - 0.8670) < 0.005


def test_lr_schedule():
    """The digits trainers' learning rate (official util/lr_sched.py): a linear warmup, then constant or a half-cycle
    cosine that reaches 0 at the last step."""
    from fastar.models.var.train import lr_at
    assert [lr_at(s, 100, 1.0, "cosine", 10) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, 100, 1.0, "cosine", 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, "cosine", 10) == pytest.approx(0.5)
    assert lr_at(99, 100, 1.0, "cosine", 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_at(99, 100, 2.0, "constant", 0) == 2.0
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 100, 1.0, "linear", 0)


def test_train_then_sample_cli(tmp_path):
    out = run_cli(tmp_path, "train", "mar", "--vae-steps", "3", "--mar-steps", "3", "--bs", "8", "--width", "32",
                  "--num-iter", "2", "--num-steps", "3", "--mar-warmup", "1", "--out", "run")
    assert "mar loss" in out and (tmp_path / "run" / "samples.png").exists()
    assert_finished(tmp_path / "run" / "ckpt.pt", "mar", 3)
    out = run_cli(tmp_path, "sample", "mar", "--ckpt", "run/ckpt.pt", "--classes", "0", "1", "2", "--num-steps",
                  "3", "--out", "g.png")
    assert "fastar train mar checkpoint" in out and (tmp_path / "g.png").exists()
    assert "num_iter 2, cfg 1.5 (linear)" in out  # the checkpoint's samples.png settings: the CLI's defaults


def test_bf16_sampling_agrees_with_fp32(monkeypatch):
    """sample_tokens(precision="bf16"): every Linear product of the transformer ran on bfloat16 operands (so its
    attention on bfloat16 q, k, v) and the head in its bf16 mode; the tokens stay float32 and within 2e-2 of the
    fp32 run's scale (measured: 3.0e-3 on AMD EPYC Zen 4, AVX512-BF16 and AVX2 kernels alike), and differ from it.
    On a CPU without bf16 GEMM instructions (simulated) the mode gives the same tokens with a warning, and the CLI
    warns before loading; an unknown precision is refused."""
    monkeypatch.setenv("FASTAR_EMULATED_BF16", "1")  # the mode's numerics on any CPU
    model, labels = tiny_mar(), torch.tensor([3, 7])
    seen = []
    attention = fastar.ops.attention
    monkeypatch.setattr(fastar.ops, "attention", lambda q, *a, **kw: seen.append(q.dtype) or attention(q, *a, **kw))

    def sample(precision):
        seen.clear()
        out = model.sample_tokens(2, num_iter=4, cfg=2.5, labels=labels, generator=torch.Generator().manual_seed(1),
                                  precision=precision)
        return out, set(seen)

    out32, dtypes32 = sample("fp32")
    out16, dtypes16 = sample("bf16")
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}
    assert out16.dtype == torch.float32
    err = ((out16 - out32).abs().max() / out32.abs().max()).item()
    assert 0 < err <= 2e-2, err
    assert all(m.product_weight is None for m in model.modules() if isinstance(m, Linear))  # copies dropped
    made = []  # the modules given bf16 copies: the transformer's, not the head's (diffusion_sample reads its own)
    copies = layers._weight_copies
    monkeypatch.setattr(layers, "_weight_copies",
                        lambda name, ms, *a, **kw: made.extend(ms) or copies(name, ms, *a, **kw))
    sample("bf16")
    covered = {id(m) for part in made for m in part.modules()}
    assert id(model.encoder_blocks[0].attn.qkv) in covered
    assert not covered & {id(m) for m in model.diffloss.modules()}

    assert torch.equal(bf16_emulated(monkeypatch, "MAR.sample_tokens", lambda: sample("bf16")[0]), out16)
    sample_cli_warns_before_loading(monkeypatch, mar_sample, "mar")
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        model.sample_tokens(1, num_iter=2, precision="fp16")


def test_sample_tokens_refuses_bad_num_iter_and_labels():
    """num_iter <= 0 once returned all-zero latents; a label past the classes failed inside torch.embedding."""
    model = tiny_mar()
    for num_iter in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match=f"num_iter must be an int >= 1, got {num_iter!r}"):
            model.sample_tokens(2, num_iter=num_iter)
    with pytest.raises(ValueError, match=r"MAR.sample_tokens: labels must be in \[0, 10\) .* got \[3, 10\]"):
        model.sample_tokens(2, num_iter=1, labels=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="one entry per image"):
        model.sample_tokens(2, num_iter=1, labels=torch.tensor([3]))


def test_forward_and_config_refuse_what_they_cannot_train():
    """MAR.forward broadcast one label over a batch and read (2, 16, 2, 8) latents as the 4 x 4 raster; a 100 px
    config sampled 96 px; a width the heads do not divide failed at the first sample."""
    model, latents = tiny_mar(), torch.randn(2, 16, 4, 4)
    with pytest.raises(ValueError, match="one entry per image"):
        model(latents, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"latents_BChw must be \(B >= 1, 16, 4, 4\) .*, got torch.float32 "
                                         r"\(2, 16, 2, 8\)"):
        model(latents.reshape(2, 16, 2, 8), torch.tensor([3, 4]))
    # float64 or integer latents, or a list: once oneDNN's dtype mismatch, an AttributeError on .shape
    for bad, got in [(latents.double(), "torch.float64 \\(2, 16, 4, 4\\)"), (latents.long(), "torch.int64"),
                     (latents.tolist(), "list")]:
        with pytest.raises(ValueError, match=f"latents_BChw .* of the model's torch.float32, got {got}"):
            model(bad, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        model(latents, torch.tensor([3, 10]))
    meta = torch.tensor([3, 4], device="meta")  # another device than the model's: once an error from inside
    with pytest.raises(ValueError, match="MAR.forward: labels are on meta, the model on cpu"):
        model(latents, meta)
    with pytest.raises(ValueError, match="MAR.sample_tokens: labels are on meta, the model on cpu"):
        model.sample_tokens(2, num_iter=1, labels=meta)
    with pytest.raises(ValueError, match="img_size 100 must be a positive multiple of vae_stride 16"):
        mar("base", img_size=100)
    with pytest.raises(ValueError, match="num_heads 4 must divide width 30"):
        mar("base", width=30, num_heads=4)
    with pytest.raises(ValueError, match="num_sampling_steps must be an int >= 1"):
        mar("base", num_sampling_steps=0)
    for kw, match in [(dict(cfg=float("nan")), "cfg must be a finite number"), (dict(temperature=0.0), "temperature"),
                      (dict(bsz=0), "bsz must be an int >= 1")]:
        with pytest.raises(ValueError, match=match):
            model.sample_tokens(**{"bsz": 2, "num_iter": 1, **kw})


def test_sample_tokens_keeps_the_guided_pairs_at_a_cfg_within_rounding_of_1():
    """cfg_iter = 1 + (cfg - 1) x fraction rounded to exactly 1.0 for cfg = 1 + 2^-52: the head then took the
    [cond ; uncond] rows as one batch and the write-back failed on a shape mismatch."""
    model = tiny_mar()
    for cfg in (1 + 2 ** -52, 1 - 2 ** -53):
        out = model.sample_tokens(2, num_iter=2, cfg=cfg, labels=torch.tensor([1, 2]),
                                  generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, 16, 4, 4) and out.isfinite().all()


def test_generator_must_be_a_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got 5"):
        tiny_mar().sample_tokens(1, num_iter=1, generator=5)


def test_sample_cli_names_an_official_vae_ckpt_that_does_not_fit(tmp_path, monkeypatch):
    """--vae-ckpt of another model beside an official MAR checkpoint: once load_state_dict's traceback listing every
    key of the KL VAE (its keys are filtered, as kl16.ckpt carries LPIPS and discriminator weights too)."""
    model = tiny_mar()
    monkeypatch.setattr(mar_sample, "mar", lambda size: tiny_mar())
    monkeypatch.setattr(mar_sample, "AutoencoderKL", lambda: AutoencoderKL(TINY_KL))
    torch.save({"model_ema": model.state_dict()}, tmp_path / "checkpoint-last.pth")
    torch.save({"model": {"encoder.conv_in.weight": torch.zeros(3), "loss.logvar": torch.zeros(())}},
               tmp_path / "other.ckpt")
    with pytest.raises(SystemExit, match=r"^--vae-ckpt .*other.ckpt does not fit the KL-16 VAE: \d+ keys missing "
                                         r"\(e.g. .*\); 1 of other shapes \(e.g. encoder.conv_in.weight: \(3,\)"):
        mar_sample.load(str(tmp_path / "checkpoint-last.pth"), str(tmp_path / "other.ckpt"), "base")
    vae = AutoencoderKL(TINY_KL)
    torch.save({"model": {**vae.state_dict(), "loss.logvar": torch.zeros(())}}, tmp_path / "kl.ckpt")
    loaded = mar_sample.load(str(tmp_path / "checkpoint-last.pth"), str(tmp_path / "kl.ckpt"), "base")[0]
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in loaded.state_dict().items())
