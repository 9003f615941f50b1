"""HiT's generator and discriminator: the official configurations' parameter counts, the layout facts the weights
depend on, a training step on fastar's kernels against the float64 reference ops, and the train / sample CLI."""
import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastar
from fastar.models.hit import CONFIGS, TINY, HiTConfig, HiTGenerator, StyleGANDiscriminator
from fastar.models.hit import generator
from fastar.models.hit.generator import BatchNorm, PixelShuffle
from fastar.models.hit import losses
from fastar.models.hit.losses import diff_augment
from fastar.models.hit.train import gan_step
from fastar.models.layers import linear_add
from tests.conftest import backend_device
from tests.test_var_model import assert_finished, run_cli
from tests.tolerance import assert_close


@pytest.mark.parametrize("size, millions", [(128, 32.87), (256, 46.22), (1024, 88.22)])
def test_generator_parameter_count(size, millions):
    """The analytic counts of the official configurations (reference/hit-dalle.md A4)."""
    with torch.device("meta"):
        G = HiTGenerator(CONFIGS[size])
    assert round(sum(p.numel() for p in G.parameters()) / 1e6, 2) == millions


def test_pixel_shuffle_is_tf_depth_to_space():
    """Input channel (dy * 2 + dx) * C' + c lands on pixel (2y + dy, 2x + dx), channel c (NHWC, TF's order)."""
    x = torch.arange(2 * 3 * 4 * 8, dtype=torch.float32).view(2, 3, 4, 8)
    y = PixelShuffle(8, 2)(x)
    dy, dx, c = 1, 0, 1
    assert y[1, 2 * 2 + dy, 2 * 3 + dx, c] == x[1, 2, 3, (dy * 2 + dx) * 2 + c]


def z_share(G, z):
    """The share of the output's variance that varies with the latent (across the batch), BatchNorm on the batch."""
    with torch.no_grad():
        x = G.train()(z)
    return ((x.std(0) ** 2).mean() / x.var()).item()


def test_latent_reaches_the_output_by_both_paths():
    """z enters by the initial 8 x 8 map (dense_layer) and by the 16 latent tokens every stage's cross-attention
    reads. TINY at init, 3 seeds: 0.96-0.97 of the output's variance varies with z, 0.96 by the initial map alone,
    0.64-0.72 by cross-attention alone. The former TINY (128, 64, 32) gave 0.05-0.08 (its PixelShuffle Dense layers
    shrank the map under the z-blind position embeddings) and trained into one image for every z; a generator
    that dropped z (or gave every sample the batch's first latent) gives 0."""
    torch.manual_seed(0)
    G = HiTGenerator(TINY)
    z = torch.randn(8, TINY.latent_dim, generator=torch.Generator().manual_seed(0))
    assert z_share(G, z) > 0.5
    for path in ("dense_layer", "embedding_layer"):
        G_cut = copy.deepcopy(G)
        torch.nn.init.zeros_(getattr(G_cut, path).weight)
        assert z_share(G_cut, z) > 0.3, f"without {path}"


def test_start_at_mean_sets_the_batch_mean_of_the_images():
    """BatchNorm on batch statistics before the RGB Dense: the images' mean over batch and pixels is the RGB bias,
    for TINY (one RGB stage) and a 64 px config with two (their biases add); untouched (zero bias) it is 0."""
    torch.manual_seed(0)
    G = HiTGenerator(TINY)
    z = torch.randn(8, TINY.latent_dim)
    assert abs(G.train()(z).mean().item()) < 1e-5
    G.start_at_mean(-0.39)
    assert abs(G(z).mean().item() + 0.39) < 1e-5
    two_rgb = HiTGenerator(HiTConfig(64, 64, (1, 1, 1, 1), (128, 64, 32, 32), (4, 2, 4, 4), (4, 4, None, None)))
    two_rgb.start_at_mean(-0.5)
    assert abs(two_rgb.train()(torch.randn(2, 64)).mean().item() + 0.5) < 1e-5
    with pytest.raises(TypeError, match="mean must be a finite number"):
        G.start_at_mean(torch.tensor(0.0))


def test_discriminator_shapes():
    D = StyleGANDiscriminator(64, channel_multiplier=2, max_channels=64)
    assert D(torch.randn(3, 3, 64, 64)).shape == (3,)
    assert len(D.blocks) == 4  # 64 -> 32 -> 16 -> 8 -> 4


def test_diff_augment_keeps_shape_and_changes_images():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = diff_augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)


def forward_and_stats(G, z, dtype, grad, backend):
    """G's images and BatchNorm running statistics after one forward of a copy of G in `dtype`."""
    G = copy.deepcopy(G).to(dtype)
    with torch.set_grad_enabled(grad), fastar.use_backend(backend):
        images = G(z.to(dtype))
    stats = [t for m in G.modules() if isinstance(m, BatchNorm) for t in (m.running_mean, m.running_var)]
    assert all(m.num_batches_tracked.item() == G.training for m in G.modules() if isinstance(m, BatchNorm))
    return images.detach(), stats


@pytest.mark.parametrize("library", ["onednn", "mkl"])
@pytest.mark.parametrize("multi_query", [True, False], ids=["multi-query", "multi-head"])
@pytest.mark.parametrize("training", [True, False], ids=["batch statistics", "running statistics"])
def test_forward_without_autograd_matches_the_modules(monkeypatch, multi_query, training, library):
    """Without autograd the generator folds each BatchNorm into the Dense layers that read it (its statistics and
    running update by torch.batch_norm_update_stats), runs the MLPs and the cross-attention blocks in row chunks
    (7 KB here: chunks of 1 to 112 rows that split the images and end short) and writes the MLP residuals in place:
    its images and running statistics on the cpu kernels against the module-by-module formulation (the autograd
    path: BatchNorm, then each Dense) in float64 on the reference ops, within the tolerance rule. A fold that
    dropped the mean, a chunk loop that skipped the last short chunk or an in-place write over a tensor still to
    be read fails it. Both float32 GEMM libraries: on oneDNN the GELU and the residuals ride in the GEMMs'
    epilogues (linear_gelu, linear_add), also chunk by chunk. The MLP blocks up to 128 wide run fastar.ops.mlp
    (one kernel, written over x), the wider ones the chunks; the cross-attention blocks run fastar.ops.mlp with a
    softmax over each head's 16 latent scores (their projections folded with the latents' keys and values)."""
    monkeypatch.setattr(generator, "CHUNK_BYTES", 7 * 1024)
    monkeypatch.setenv("FASTAR_FP32_GEMM", library)
    fused = []
    monkeypatch.setattr(generator, "linear_add", lambda *a: fused.append(1) or linear_add(*a))
    calls, mlp = [], fastar.ops.mlp
    monkeypatch.setattr(fastar.ops, "mlp", lambda x, *a, **k: calls.append((x.shape[-1], k.get("softmax_group", 0)))
                        or mlp(x, *a, **k))
    torch.manual_seed(0)
    G = HiTGenerator(dataclasses.replace(TINY, multi_query=multi_query)).train(training)
    for m in G.modules():
        if isinstance(m, BatchNorm):
            m.running_mean.normal_(0, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    z = torch.randn(3, TINY.latent_dim, generator=torch.Generator().manual_seed(0))
    out, stats = forward_and_stats(G, z, torch.float32, False, "cpu")
    ref64, stats64 = forward_and_stats(G, z, torch.float64, True, "reference")
    ref32, stats32 = forward_and_stats(G, z, torch.float32, True, "reference")
    assert fastar.last_backend("attention") == "reference"
    assert bool(fused) == (library == "onednn" and torch.backends.mkldnn.is_available())
    assert fastar.last_backend("mlp") == "cpu"
    assert {w for w, g in calls if not g} == {16, 64}  # the MLP blocks; the 256-wide one runs the chunks
    assert {w for w, g in calls if g} == {16, 64, 256} and {g for _, g in calls if g} == {16}  # cross-attention
    assert_close("hit_forward", out, ref64, ref32)
    for s, s64, s32 in zip(stats, stats64, stats32, strict=True):
        assert_close("hit_forward", s, s64, s32)
    # The torch backend keeps the official formulation: the MLPs and the cross-attention in row chunks (the path off
    # the CPU backend), the same images.
    calls.clear()
    out_torch, _ = forward_and_stats(G, z, torch.float32, False, "torch")
    assert not calls and fastar.last_backend("attention") == "torch"
    assert_close("hit_forward", out_torch, ref64, ref32)


def tiny_step(backend, dtype):
    """Generator and discriminator gradients of one GAN step (R1 and bCR on) on `backend` in `dtype`."""
    torch.manual_seed(0)
    G, D = HiTGenerator(TINY).to(dtype), StyleGANDiscriminator(32, max_channels=16).to(dtype)
    g = torch.Generator().manual_seed(1)
    real, z = torch.rand(4, 3, 32, 32, generator=g).to(dtype) * 2 - 1, torch.randn(4, TINY.latent_dim, generator=g)
    opt_G, opt_D = (torch.optim.SGD(m.parameters(), lr=0.0) for m in (G, D))  # keeps the gradients, moves nothing
    torch.manual_seed(2)  # the same bCR augmentations
    with fastar.use_backend(backend):
        gan_step(G.to(backend_device(backend)), D.to(backend_device(backend)), real.to(backend_device(backend)),
                 z.to(backend_device(backend), dtype), opt_G, opt_D, r1=10.0, bcr=10.0)
    return {f"G.{n}": p.grad.cpu() for n, p in G.named_parameters()} | \
        {f"D.{n}": p.grad.cpu() for n, p in D.named_parameters()}


@pytest.mark.one_schedule
def test_training_step_matches_reference_ops(backend):
    """One GAN step through the backend's multi_axis and attention kernels, forward and backward: every gradient
    of G and D against the float64 reference ops within the tolerance rule."""
    grads = tiny_step(backend, torch.float32)
    assert fastar.last_backend("multi_axis_attention") == backend and fastar.last_backend("attention") == backend
    ref32, ref64 = tiny_step("reference", torch.float32), tiny_step("reference", torch.float64)
    # Per network, all its gradients at once: a bias before a BatchNorm has a gradient that cancels to 0, so both
    # the floor and the reference error are the network's. D's output bias apart: its gradient is the sum of the
    # loss's derivatives by each logit (the non-saturating loss's: under 1/B a row, real and fake terms of opposite
    # signs, bCR's pairs cancelling): terms up to 1/B = 0.25 summing to ~1e-2, whose float32 rounding is ulps of the
    # terms, not of the result: the float32 reference landed 3.4e-10 from float64, this CPU's fastar 5.9e-8 (AMD
    # Zen 3, models' Linear on MKL), the torch backend 1.3e-8. Its floor is relative to 1, its terms' size.
    out_bias = "D.out.bias"
    for net in "GD":
        names = [n for n in grads if n[0] == net and n != out_bias]
        flat = [torch.cat([d[n].flatten().double() for n in names]) for d in (grads, ref64, ref32)]
        assert_close("hit_grads", *flat)
    assert_close("hit_grads", grads[out_bias], ref64[out_bias], ref32[out_bias], scale=1.0)


DDP_STEP = """
import sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from fastar.models.hit import HiTGenerator, StyleGANDiscriminator
from fastar.models.hit.train import TINY, gan_step
from fastar.models.var.train import end_run
torch.manual_seed(0)
G, D = HiTGenerator(TINY).eval(), StyleGANDiscriminator(32, max_channels=16)  # eval: batch-independent fakes
g = torch.Generator().manual_seed(1)
real, z = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.randn(4, TINY.latent_dim, generator=g)
opts = [torch.optim.SGD(m.parameters(), lr=0.0) for m in (G, D)]
if sys.argv[1] == "ddp":
    dist.init_process_group("gloo")
    rows = slice(2 * dist.get_rank(), 2 * dist.get_rank() + 2)
    gan_step(DDP(G), DDP(D), real[rows], z[rows], *opts, r1=10.0)
else:
    gan_step(G, D, real, z, *opts, r1=10.0)
if sys.argv[1] == "one" or dist.get_rank() == 0:
    torch.save([p.grad for m in (G, D) for p in m.parameters()], sys.argv[2])
end_run(2 if sys.argv[1] == "ddp" else 1)  # under DDP: a barrier, then leave the group
"""


def test_ddp_step_averages_the_one_process_gradients(tmp_path):
    """gan_step under torchrun (2 gloo processes, half the batch each; the fakes' D forward outside DDP, the reals'
    through it) gives one process's gradients of the whole batch (G in eval mode: per-process BatchNorm statistics
    would change the fakes)."""
    script = tmp_path / "step.py"
    script.write_text(DDP_STEP)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for launcher, mode in (([sys.executable], "one"),
                           ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                            "ddp")):
        res = subprocess.run([*launcher, str(script), mode, str(tmp_path / f"{mode}.pt")], capture_output=True,
                             text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    one, ddp = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "ddp.pt")
    assert len(one) == len(ddp) > 100 and [a is None for a in one] == [b is None for b in ddp]
    one, ddp = (torch.cat([g.flatten() for g in grads if g is not None]) for grads in (one, ddp))
    # the floor from the largest gradient: a bias before a BatchNorm has one that cancels to ~1e-18
    torch.testing.assert_close(ddp, one, rtol=1e-4, atol=1e-5 * one.abs().max().item())


@pytest.mark.parametrize("torchrun", [False, True], ids=["1 process", "torchrun DDP 2 processes"])
def test_train_then_sample_cli(tmp_path, torchrun, capsys):
    """Also: an earlier run's step grids in --out are removed (only those: samples_<step>.png), and `sample` warns
    about a checkpoint written mid-run."""
    from fastar.__main__ import main as fastar_main
    (tmp_path / "run").mkdir()
    for name in ("samples_00300.png", "samples_keep.png", "notes.txt"):
        (tmp_path / "run" / name).write_text("an earlier run's")
    out = run_cli(tmp_path, "train", "hit", "--steps", "2", "--bs", "4", "--ckpt-every", "1", "--threads", "1",
                  "--out", "run", torchrun=torchrun)
    assert "d loss" in out and (tmp_path / "run" / "samples.png").exists()
    assert (tmp_path / "run" / "samples_00001.png").exists() and (tmp_path / "run" / "ckpt.pt").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ckpt.pt", "notes.txt", "samples.png",
                                                                   "samples_00001.png", "samples_00002.png",
                                                                   "samples_keep.png"]
    assert_finished(tmp_path / "run" / "ckpt.pt", "hit", 2)
    if not torchrun:
        out = run_cli(tmp_path, "sample", "hit", "--ckpt", "run/ckpt.pt", "--n", "4", "--out", "g.png")
        assert "fastar train hit checkpoint" in out and (tmp_path / "g.png").exists()
        sd = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
        torch.save({**sd, "step": 1, "finished": False}, tmp_path / "mid.pt")
        capsys.readouterr()
        fastar_main(["sample", "hit", "--ckpt", str(tmp_path / "mid.pt"), "--n", "2", "--out", str(tmp_path / "m.png")])
        assert capsys.readouterr().err.startswith(f"warning: --ckpt {tmp_path / 'mid.pt'} was written mid-run "
                                                  "(stage hit, step 1 of 2)")


def test_forward_without_autograd_takes_the_cpu_cache():
    """Sampling on the cpu backend takes its activations of 4 MB and more from the CPU cache (warm blocks from the
    second call on); the torch backend and forwards under autograd keep torch's allocator."""
    G = HiTGenerator(HiTConfig(128, 64, (1,) * 5, (64,) * 5, (4,) * 5, (4, 4, 8, 8, None))).train()  # 16 MB maps
    z = torch.randn(4, 64)
    fastar.empty_cpu_cache()

    def misses_hits(run):  # blocks the call took from the cache: freshly mapped, and warm
        before = fastar.cpu_cache_info()
        run()
        after = fastar.cpu_cache_info()
        return after["misses"] - before["misses"], after["hits"] - before["hits"]

    with fastar.use_backend("torch"), torch.no_grad():
        assert misses_hits(lambda: G(z)) == (0, 0)
    misses_hits(lambda: G(z).sum().backward())
    kernel_outputs = sum(misses_hits(lambda: G(z).sum().backward()))  # under autograd: only the kernels' outputs
    with torch.no_grad():
        assert misses_hits(lambda: G(z))[0] > 0
        misses, hits = misses_hits(lambda: G(z))
    assert misses == 0 and hits > kernel_outputs > 0  # and torch's own activations, warm the second time
    fastar.empty_cpu_cache()


def test_sample_cli_random_weights_follow_the_seed(tmp_path):
    """Without --ckpt the untrained generator is --seed's: two runs write the same grid, another seed another; the
    global generator is left as it was."""
    from fastar.models.hit import sample
    state = torch.get_rng_state()
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, seed in zip(paths, (3, 3, 4)):
        sample.main(["--size", "128", "--n", "2", "--seed", str(seed), "--out", str(path)])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("kw,match", [
    (dict(latent_dim=0), "HiTConfig: latent_dim must be an int >= 1, got 0"),
    (dict(heads=(8, 2, 3)), r"HiTConfig: heads\[2\] = 3 must divide channels\[2\] = 16"),
    (dict(channels=(256, 64)), "one entry per stage"), (dict(num_layers=(1, -1, 1)), r"num_layers\[1\] must be")])
def test_config_refuses_what_no_generator_builds(kw, match):
    """Once taken, then failing inside a layer's constructor or at the first forward (latent_dim 0 built)."""
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **kw)


def test_generator_refuses_bad_latents():
    G = HiTGenerator(TINY)
    d = TINY.latent_dim
    for z in (torch.randn(0, d), torch.randn(2, d + 1), torch.randn(2, d).double(), torch.zeros(2, d).long()):
        with pytest.raises(ValueError, match=r"HiTGenerator: z must be \(B >= 1, latent_dim="):
            G(z)
    with pytest.raises(TypeError, match="batch_stats must be a bool"):
        G.sample(torch.randn(2, TINY.latent_dim), batch_stats="no")


def test_discriminator_and_training_helpers_refuse_bad_arguments():
    """The discriminator at another resolution failed inside oneDNN ('could not create a primitive'); a decay of 2 and
    a NaN mean were taken."""
    D = StyleGANDiscriminator(16)
    assert D(torch.randn(2, 3, 16, 16)).shape == (2,)
    with pytest.raises(ValueError, match=r"x must be floating-point \(B, 3, 16, 16\) images"):
        D(torch.randn(2, 3, 32, 32))
    G = HiTGenerator(TINY)
    with pytest.raises(ValueError, match="decay must be a number in"):
        losses.ema_update(G, G, 2.0)
    with pytest.raises(TypeError, match="mean must be a finite number"):
        G.start_at_mean(float("nan"))
