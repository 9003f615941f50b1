"""VAR models (issue 6): official checkpoint keys and parameter counts, teacher-forced training, KV-cache inference,
and the fastar-ops path against the reference-ops path."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastar
from fastar.models.var import PATCH_NUMS, VQVAEConfig, build_vae_var
from tests.conftest import backend_device
from tests.tolerance import assert_close

DATA = Path(__file__).parent / "data"
TINY_PN = (1, 2, 3, 4)
TINY_VAE = VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, v_patch_nums=TINY_PN)
# The kernels under the models are order-checked (ScheduleCheck) by their own tests; here each call runs once.
pytestmark = pytest.mark.one_schedule


def official_keys(name, section=0):
    """{key: (shape, kind)} from a key list in tests/data (copied from shared/reference): 'key [shape] P|B'."""
    text = (DATA / name).read_text().split("\n---")[section]
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", " ")) and "[" in line:
            key, rest = line.split(" ", 1)
            shape, kind = rest.rsplit(" ", 1)
            out[key] = (list(eval(shape)), kind)
    return out


def kinds(module):
    params = dict(module.named_parameters())
    return {k: ([*v.shape], "P" if k in params else "B(int64)" if v.dtype == torch.int64 else "B")
            for k, v in module.state_dict().items()}


@pytest.mark.parametrize("shared_aln", [False, True], ids=["d16-30 style", "d36-s style"])
def test_var_state_dict_matches_official_keys(shared_aln):
    vae, var = build_vae_var(depth=2, patch_nums=PATCH_NUMS[512 if shared_aln else 256], shared_aln=shared_aln,
                             device="meta")
    assert kinds(var) == official_keys("var-state-dict-keys.txt", section=int(shared_aln))


def test_vqvae_state_dict_matches_official_keys():
    vae, _ = build_vae_var(depth=2, device="meta")
    expected = official_keys("vqvae-state-dict-keys.txt")
    assert len(expected) == 324
    assert kinds(vae) == expected
    assert sum(p.numel() for p in vae.parameters()) == 108_948_355


@pytest.mark.parametrize("depth,count", [(16, 310_283_520), (20, 600_917_136), (24, 1_033_399_360),
                                         (30, 2_010_020_356)])
def test_var_parameter_count(depth, count):
    _, var = build_vae_var(depth=depth, device="meta")
    assert sum(p.numel() for p in var.parameters()) == count


def test_build_vae_var_takes_the_official_call():
    """FoundationVision/VAR's call, every keyword of its build_vae_var: the released d16 model, the kernel flags
    said once and ignored; the VQVAE sized by V/Cvae/ch/share_quant_resi; init_std used as given."""
    with pytest.warns(UserWarning, match="flash_if_available, fused_if_available .* ignored"):
        vae, var = build_vae_var(
            device="meta", patch_nums=PATCH_NUMS[256], V=4096, Cvae=32, ch=160, share_quant_resi=4,
            num_classes=1000, depth=16, shared_aln=False, attn_l2_norm=True, flash_if_available=True,
            fused_if_available=True, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    assert sum(p.numel() for p in var.parameters()) == 310_283_520
    assert sum(p.numel() for p in vae.parameters()) == 108_948_355
    vae, var = build_vae_var(None, TINY_PN, V=64, Cvae=8, ch=32, share_quant_resi=2, num_classes=10, depth=2,
                             init_std=0.5, init_head=1.0)
    assert (vae.vocab_size, vae.Cvae, vae.cfg.ch, vae.cfg.share_quant_resi) == (64, 8, 32, 2)
    assert var.class_emb.weight.shape == (11, 128) and 0.4 < var.class_emb.weight.std() < 0.6  # trunc-normal 0.5


@pytest.mark.parametrize("kwargs,match", [
    ({"attn_l2_norm": False}, "attn_l2_norm=False is not supported"),
    ({"V": 64, "vae_cfg": TINY_VAE}, r"either as vae_cfg or as V/Cvae/ch/share_quant_resi.*\['vocab_size'\]"),
    # once taken: a 0-side scale, scales past the latent's side, no null-class-only model
    ({"patch_nums": (1, 2, 0)}, r"patch_nums must be a non-empty tuple of positive ints, none above the last"),
    ({"patch_nums": (2, 1)}, r"none above the last \(the VQVAE latent's side\), got \(2, 1\)"),
    ({"num_classes": 0}, "VARConfig: num_classes must be an int >= 1, got 0"),
])
def test_build_vae_var_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_vae_var(device="meta", depth=2, **kwargs)


def test_strict_load_of_official_shapes():
    """State dicts made from the official key lists (random values) load with strict=True; the VQVAE's on meta."""
    _, var = build_vae_var(depth=2)
    sd = {k: torch.zeros(s, dtype=torch.int64) if kind == "B(int64)" else torch.randn(s)
          for k, (s, kind) in official_keys("var-state-dict-keys.txt").items()}
    var.load_state_dict(sd, strict=True)
    assert torch.equal(var.head.weight, sd["head.weight"])
    vae, _ = build_vae_var(depth=2, device="meta")
    sd = {k: torch.empty(s, device="meta") for k, (s, _) in official_keys("vqvae-state-dict-keys.txt").items()}
    vae.load_state_dict(sd, strict=True, assign=True)


def tiny(depth=2, seed=0):
    torch.manual_seed(seed)
    vae, var = build_vae_var(depth=depth, patch_nums=TINY_PN, vae_cfg=TINY_VAE, init_adaln_gamma=0.1, num_classes=10)
    return vae, var.eval()


def teacher_inputs(vae, B=3, seed=1):
    """Labels, token maps and the teacher-forcing input of B random images, on the VQVAE's device."""
    dev = next(vae.parameters()).device
    g = torch.Generator().manual_seed(seed)
    img = (torch.rand(B, 3, 16, 16, generator=g) * 2 - 1).to(dev)
    ms_idx_Bl = vae.img_to_idxBl(img)
    return torch.arange(B, device=dev) % 10, ms_idx_Bl, vae.quantize.idxBl_to_var_input(ms_idx_Bl)


def sampled_tokens(vae, var, **kw):
    """(images, the token maps autoregressive_infer_cfg drew), read off the codebook lookups."""
    tokens = []
    hook = vae.quantize.embedding.register_forward_hook(lambda m, args, out: tokens.append(args[0].clone()))
    try:
        img = var.autoregressive_infer_cfg(**kw)
    finally:
        hook.remove()
    return img, tokens


def test_training_step_reaches_every_parameter():
    vae, var = tiny()
    label_B, ms_idx_Bl, x_BLCv = teacher_inputs(vae)
    var.train()
    logits = var(label_B, x_BLCv)
    assert logits.shape == (3, sum(p * p for p in TINY_PN), 64)
    F.cross_entropy(logits.flatten(0, 1), torch.cat(ms_idx_Bl, 1).flatten()).backward()
    assert [n for n, p in var.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_fused_qk_normalization_gradients():
    """The training path's _UnitQKV (q, k normalized, gradients written into qkv's): gradcheck in float64, and its
    values and gradients equal to the official formulation's (F.normalize(q) * scale, F.normalize(k), v)."""
    from fastar.models.var.basic_var import _UnitQKV
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 5, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(1, 3, 1, 1, generator=g, dtype=torch.float64) * 3 + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(_UnitQKV.apply, (qkv, scale))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    official = (F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1), v)
    fused = _UnitQKV.apply(qkv, scale)
    cot = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in official]
    for a, b in zip(fused, official):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(fused, (qkv, scale), cot), torch.autograd.grad(official, (qkv, scale), cot)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_vqvae_training_forward():
    vae, _ = tiny()
    vae.train().requires_grad_(True)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    rec, usages, vq_loss = vae(img)
    assert rec.shape == img.shape and len(usages) == len(TINY_PN)
    (F.mse_loss(rec, img) + vq_loss).backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0  # the straight-through estimator reaches the encoder


def test_kv_cache_inference_matches_teacher_forcing():
    """Greedy tokens from the KV-cache loop (cfg 0) are the argmax of the teacher-forced logits on those tokens."""
    vae, var = tiny()
    img, tokens = sampled_tokens(vae, var, B=2, label_B=torch.tensor([3, 7]), g_seed=0, cfg=0.0, top_k=1)
    assert img.shape == (2, 3, 16, 16) and 0 <= img.min() and img.max() <= 1
    logits = var(torch.tensor([3, 7]), vae.quantize.idxBl_to_var_input(tokens))
    assert torch.equal(logits.argmax(-1), torch.cat(tokens, 1))


@pytest.mark.parametrize("more_smooth", [False, True])
def test_sampling_is_seeded(more_smooth):
    vae, var = tiny()
    kw = dict(B=2, label_B=None, g_seed=5, cfg=1.5, top_k=20, top_p=0.9, more_smooth=more_smooth)
    a, b = var.autoregressive_infer_cfg(**kw), var.autoregressive_infer_cfg(**kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, var.autoregressive_infer_cfg(**{**kw, "g_seed": 6}))


def test_fastar_ops_match_reference_ops(backend):
    """Same weights, every backend's kernels (simt: the CUDA kernels under the emulator): logits within the
    tolerance rule, the same sampled tokens for a fixed seed, and the VQVAE's decoded images."""
    dev = backend_device(backend)
    vae, var = (m.to(dev) for m in tiny())
    label_B, _, x_BLCv = teacher_inputs(vae)
    logits = var(label_B, x_BLCv)
    assert fastar.last_backend("attention") == backend
    with fastar.use_backend("reference"):
        ref32 = var(label_B, x_BLCv)
        ref64 = var.double()(label_B, x_BLCv.double())
    var.float()
    assert_close("var_logits", logits.cpu(), ref64.cpu(), ref32.cpu())
    kw = dict(B=3, label_B=torch.tensor([1, 2, 3], device=dev), g_seed=0, cfg=2.0, top_k=30, top_p=0.95)
    img, tokens = sampled_tokens(vae, var, **kw)
    assert fastar.last_backend("attention_decode") == backend
    with fastar.use_backend("reference"):
        ref_img, ref_tokens = sampled_tokens(vae, var, **kw)
    assert all(torch.equal(a, b) for a, b in zip(tokens, ref_tokens))
    torch.testing.assert_close(img, ref_img)


def test_training_step_matches_reference_ops(backend):
    """One teacher-forced training step through the backend's attention forward and backward kernels: every
    parameter gradient against the float64 reference ops within the tolerance rule (var_grads)."""
    dev = backend_device(backend)
    vae, var = (m.to(dev) for m in tiny())
    var.train()

    def ran_the_backend():
        assert fastar.last_backend("attention") == backend
    step_against_reference(var, backend, *teacher_inputs(vae), ran_the_backend)


def step_against_reference(var, backend, label_B, ms_idx_Bl, x_BLCv, after_backend):
    """One seeded training step of var on `backend` in float32, then on the reference ops in float32 and float64
    (the same label dropout and stochastic-depth masks); after_backend() runs right after the backend's step.
    Asserts every parameter gradient against the float64 reference within the tolerance rule (var_grads); returns
    the losses, keyed (backend name, dtype)."""
    dev = next(var.parameters()).device
    grads, losses = {}, {}
    for name, dtype in ((backend, torch.float32), ("reference", torch.float32), ("reference", torch.float64)):
        with fastar.use_backend(name):
            var.to(dtype).zero_grad(set_to_none=True)
            torch.manual_seed(0)
            logits = var(label_B.to(dev), x_BLCv.to(dev, dtype))
            loss = F.cross_entropy(logits.flatten(0, 1), torch.cat(ms_idx_Bl, 1).flatten().to(dev))
            loss.backward()
            grads[name, dtype] = {n: p.grad.cpu() for n, p in var.named_parameters()}
            losses[name, dtype] = loss.item()
        if name == backend:
            after_backend()
    var.float()
    for n, g in grads[backend, torch.float32].items():
        assert_close("var_grads", g, grads["reference", torch.float64][n], grads["reference", torch.float32][n])
    return losses


def test_stochastic_depth_runs_a_branch_on_its_kept_samples_only(backend, monkeypatch):
    """A branch stochastic depth drops for some samples runs on the others alone on fastar's backends: the
    attention kernel sees fewer batch rows, and the step's gradients equal the float64 reference ops' (which run
    every sample and multiply the dropped ones by 0) within the tolerance rule, with the same masks drawn."""
    from fastar.models.var import basic_var
    dev = backend_device(backend)
    torch.manual_seed(0)
    vae, var = build_vae_var(depth=3, patch_nums=TINY_PN, vae_cfg=TINY_VAE, init_adaln_gamma=0.1, num_classes=10,
                             drop_path_rate=0.5)  # blocks' rates 0, 0.25, 0.5
    vae, var = vae.to(dev), var.to(dev).train()
    rows, attention = [], basic_var.attention
    monkeypatch.setattr(basic_var, "attention", lambda q, *a, **kw: rows.append(q.shape[0]) or attention(q, *a, **kw))

    def ran_kept_rows():
        assert rows == [4, 2, 3], rows  # the seed keeps 2 of 4 samples in block 1's branch, 3 in block 2's
    losses = step_against_reference(var, backend, *teacher_inputs(vae, B=4), ran_kept_rows)
    assert losses[backend, torch.float32] == pytest.approx(losses["reference", torch.float64], rel=1e-5)


def run_cli(tmp_path, *args, torchrun=False):
    # --standalone: a free port for the rendezvous, not torchrun's fixed 29500 (another job may hold it)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
                if torchrun else [sys.executable, "-m"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    res = subprocess.run([*launcher, "fastar", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def assert_finished(path, stage, steps):
    """The last checkpoint of a `fastar train` run records its run as finished (cli.run_state)."""
    sd = torch.load(path, weights_only=True)
    assert (sd["stage"], sd["step"], sd["steps"], sd["finished"]) == (stage, steps, steps, True)


def test_train_then_sample_cli(tmp_path):
    out = run_cli(tmp_path, "train", "var", "--vae-steps", "3", "--var-steps", "3", "--bs", "8", "--out", "run")
    assert "var loss" in out and (tmp_path / "run" / "samples.png").exists()
    assert_finished(tmp_path / "run" / "ckpt.pt", "var", 3)
    out = run_cli(tmp_path, "sample", "var", "--ckpt", "run/ckpt.pt", "--classes", "0", "1", "2", "--out", "g.png")
    assert "fastar train var checkpoint" in out and (tmp_path / "g.png").exists()
    assert "cfg 2.0, top-k 50, top-p 0.95" in out  # the checkpoint's samples.png settings: the CLI's defaults


def test_save_grid_enlarges_small_images_pixel_for_pixel(tmp_path):
    import numpy as np
    from PIL import Image

    from fastar.models.var.sample import save_grid
    img = torch.rand(3, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    save_grid(img, tmp_path / "g.png", nrow=2, pad=2, min_cell=20)  # 8 -> 24 rows (factor 3), 6 -> 18 columns
    grid = torch.from_numpy(np.array(Image.open(tmp_path / "g.png"))).permute(2, 0, 1).float() / 255
    assert grid.shape == (3, 2 * (24 + 2) + 2, 2 * (18 + 2) + 2)
    for i in range(3):
        r, c = divmod(i, 2)
        cell = grid[:, 2 + r * 26:2 + r * 26 + 24, 2 + c * 20:2 + c * 20 + 18]
        assert (cell[:, ::3, ::3] - img[i]).abs().max() <= 0.5 / 255 + 1e-6  # each pixel a 3 x 3 square
        assert torch.equal(cell, cell[:, ::3, ::3].repeat_interleave(3, 1).repeat_interleave(3, 2))
    assert (grid[:, :, :2] == 1).all() and (grid[:, 28:, 22:] == 1).all()  # padding and the empty fourth cell
    save_grid(img, tmp_path / "big.png", min_cell=8)  # already 8 tall: unchanged
    assert Image.open(tmp_path / "big.png").size == (3 * (6 + 2) + 2, 8 + 4)
    # NaN (MAR at --cfg 1e300 or --temperature 1e308): once written as black pixels with numpy's cast warning
    nan = img.clone()
    nan[1, 0, 2, 3] = float("nan")
    for bad, match in [(img[0], "img_B3HW"), (img[:0], "img_B3HW"), (img[:, :1], "img_B3HW"),
                       (nan, r"images \[1\] of 3 hold NaN or inf .*x.png not written")]:
        with pytest.raises(ValueError, match=match):
            save_grid(bad, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _fit_rank(rank, folder):
    """One process of the ddp_runs fixture (module level: spawned by pickle): fit on a toy model, and a training
    forward of VAR's quantizer on this rank's own latents."""
    import argparse

    import torch.distributed as dist

    from fastar.models.var.quant import VectorQuantizer2
    from fastar.models.var.train import end_run, fit
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(0)  # as start_run: the same weights, and until fit the same generator state, everywhere
    model, x = torch.nn.Linear(4, 1), torch.randn(16, 4)
    start = [p.detach().clone() for p in model.parameters()]
    args = argparse.Namespace(toy_steps=3, toy_lr=0.1, bs=4, seed=0, ckpt_every=100)
    draws, losses = [], []

    def loss_fn(m, idx):
        draws.append(torch.rand(()))  # what a trainer's masks, noise and label drops draw from
        losses.append(m(x[idx] * (1 + draws[-1])).square().mean())
        return losses[-1]

    first_last = fit("toy", model, loss_fn, len(x), args, rank, 2, lambda state: None)
    quant = VectorQuantizer2(8, 4, (1, 2)).train()
    f_BChw = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(rank))
    own_hits = fastar.ops.msq_forward(f_BChw, *quant._args(), beta=quant.beta, resi_ratio=quant.resi_ratio)[1]
    quant(f_BChw)
    torch.save({"draws": torch.stack(draws), "start": start, "end": [p.detach() for p in model.parameters()],
                "losses": torch.stack(losses).detach(), "first_last": first_last, "own_hits": own_hits,
                "ema_hits": quant.ema_vocab_hit_SV}, f"{folder}/rank{rank}.pt")
    end_run(2)  # a barrier first: a rank that tore its group down while the other ran aborted it once (stop 47)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """What _fit_rank saved on each of 2 gloo processes (one spawn for the tests below)."""
    import torch.multiprocessing as mp
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_fit_rank, args=(str(folder),), nprocs=2)
    return [torch.load(folder / f"rank{r}.pt") for r in (0, 1)]


def test_fit_under_ddp_draws_apart_and_stays_in_sync(ddp_runs):
    """Under DDP each process draws its own random numbers in training (the official trainers seed seed + rank),
    while the weights stay equal across processes and move."""
    r0, r1 = ddp_runs
    assert len(r0["draws"]) == 3 and not torch.equal(r0["draws"], r1["draws"])
    for a, b, s in zip(r0["end"], r1["end"], r0["start"]):
        assert torch.equal(a, b) and not torch.equal(a, s)


def test_fit_reports_its_first_and_last_steps_averaged_over_the_processes(ddp_runs):
    """3 steps: the first and the last step's loss (k = 3 // 2, where k = min(20, 3) once averaged all three into
    both), the mean of the two processes' (once rank 0's alone)."""
    r0, r1 = ddp_runs
    want = [(r0["losses"][i] + r1["losses"][i]).item() / 2 for i in (0, -1)]
    assert r0["first_last"] == r1["first_last"] and r0["first_last"] == pytest.approx(want, rel=1e-6)
    assert r0["losses"][0] != r1["losses"][0]


def test_quantizer_codebook_hits_are_every_process_under_ddp(ddp_runs):
    """ema_vocab_hit_SV counts the hits of every process, as VAR all-reduces them (once each rank its own)."""
    r0, r1 = ddp_runs
    assert not torch.equal(r0["own_hits"], r1["own_hits"])
    for r in (r0, r1):
        assert torch.equal(r["ema_hits"], 0.01 * (r0["own_hits"] + r1["own_hits"]))


def test_autoregressive_infer_cfg_refuses_labels_past_the_null_class():
    """Labels in [0, num_classes] (num_classes: the null class); past it, an error naming the range, not torch's
    index error from inside the class embedding."""
    _, var = tiny()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 11\) .* null class\), got \[0, 207\]"):
        var.autoregressive_infer_cfg(2, torch.tensor([0, 207]))
    with pytest.raises(TypeError, match="labels must be a 1-D int64 tensor, got torch.float32"):
        var.autoregressive_infer_cfg(2, torch.tensor([0.0, 1.0]))


def test_sampling_progress_bar_counts_the_scales(capsys):
    _, var = tiny()
    var.autoregressive_infer_cfg(1, 3, g_seed=0, progress=True)
    err = capsys.readouterr().err
    assert "VAR scales" in err and f"0/{len(TINY_PN)}" in err  # the bar with its total (cleared when done)


def test_float64_model_samples():
    """A .double() VAR samples (its logits drawn from as float32): sample_categorical refused float64 logits."""
    vae, var = tiny()
    with fastar.use_backend("reference"):
        want = var.autoregressive_infer_cfg(2, torch.tensor([1, 2]), g_seed=0, cfg=1.5, top_k=5)
        vae.double(), var.double()
        got = var.autoregressive_infer_cfg(2, torch.tensor([1, 2]), g_seed=0, cfg=1.5, top_k=5)
    assert got.dtype == torch.float64 and (got.float() - want).abs().max() < 1e-4


def test_forward_and_sampling_refuse_bad_arguments():
    """VAR.forward checked nothing (IndexError, torch.cat or oneDNN errors); a NaN top_p turned the filter off and a
    NaN cfg drew -1 tokens into an embedding; the builder took a VQVAE of other scales."""
    vae, var = tiny()
    labels, _, x = teacher_inputs(vae, B=2)
    assert var(labels, x).shape == (2, var.L, var.head.out_features)
    with pytest.raises(ValueError, match="one entry per image"):
        var(labels[:1], x)
    meta = labels.to("meta")  # another device than the model's: sampling once failed in sample_categorical
    with pytest.raises(ValueError, match="VAR.forward: labels are on meta, the model on cpu"):
        var(meta, x)
    with pytest.raises(ValueError, match="VAR.autoregressive_infer_cfg: labels are on meta, the model on cpu"):
        var.autoregressive_infer_cfg(2, meta)
    with pytest.raises(ValueError, match=r"x_BLCv_wo_first_l must be \(B, L - 1, Cvae\)"):
        var(labels, x[:, 1:])
    # a float64 x or a list: once oneDNN's "mat1 and mat2 must have the same dtype", an AttributeError on .shape
    with pytest.raises(ValueError, match=r"x_BLCv_wo_first_l .* of the model's torch.float32, got torch.float64 \("):
        var(labels, x.double())
    with pytest.raises(ValueError, match=r"x_BLCv_wo_first_l .* of the model's torch.float32, got list$"):
        var(labels, x.tolist())
    with pytest.raises(TypeError, match="labels must be a 1-D int64 tensor"):
        var(labels.float(), x)
    for kw, match in [(dict(top_p=float("nan")), "top_p must be a finite number"),
                      (dict(top_p=-0.5), "top_p must be >= 0.0"), (dict(cfg=float("nan")), "cfg must be a finite"),
                      (dict(top_k=-1), "top_k must be an int >= 0"), (dict(B=-1), "B must be an int >= 0"),
                      # once torch's "manual_seed expected a long" or "Overflow when unpacking long long"
                      (dict(g_seed=1.5), r"g_seed must be None or an int in \[-2\*\*63, 2\*\*64\), got 1.5"),
                      (dict(g_seed="7"), "g_seed must be None or an int"), (dict(g_seed=2**64), "g_seed")]:
        with pytest.raises(ValueError, match=match):
            var.autoregressive_infer_cfg(**{"B": 1, "label_B": 1, **kw})
    with pytest.raises(ValueError, match="must be patch_nums"):
        build_vae_var(depth=2, patch_nums=TINY_PN[:-1], vae_cfg=TINY_VAE)
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        build_vae_var(depth=0, patch_nums=TINY_PN, vae_cfg=TINY_VAE)
