"""FSDP (fastar.models.fsdp): the digits trainers under `torchrun ... --fsdp` end with the weights DDP gives, the
blocks each model shards, the full-size models past 1 B parameters sharded on the meta device over 2 processes, and
the errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastar.models.fsdp import shard, units
from tests.test_var_model import assert_finished, run_cli

# Two steps of each stage; the flags each trainer needs for so short a run, and small samples.png work.
RUNS = {"var": ["--vae-steps", "2", "--var-steps", "2"],
        "dalle": ["--dvae-steps", "2", "--dalle-steps", "2"],
        "mar": ["--vae-steps", "2", "--mar-steps", "2", "--mar-warmup", "1", "--num-steps", "2", "--num-iter", "1"],
        "fractalgen": ["--steps", "2", "--warmup", "1", "--nll-passes", "1", "--num-samples", "2"]}
# What each trainer prints of its loss, and the stage its last checkpoint ends.
LOGS = {"var": ("var loss", "var"), "dalle": ("dalle loss", "dalle"), "mar": ("mar loss", "mar"),
        "fractalgen": ("bits/dim", "fractalgen")}


@pytest.mark.parametrize("model", RUNS)
def test_fsdp_trains_the_weights_ddp_trains(tmp_path, model):
    """The same run under DDP and under FSDP ends with the same weights, model by model in the checkpoint: their
    distance within 1e-4 of the weights' norm. One step of these runs moves the weights by 0.5-4% of their norm;
    what FSDP changes is the rounding (gathered weights, reduce-scatter, the sharded gradient norm), 1e-8 to 2e-5
    in trials, the most in weights whose gradient is only rounding (a convolution's bias before a GroupNorm, the key
    bias of attention): Adam moves them by ~lr whatever the size of their gradient. The DDP run is also the
    trainer's torchrun test (2 gloo processes; the models' test files run the CLI in one process): it logs its loss,
    writes samples.png and a checkpoint of a finished run."""
    for mode in ("ddp", "fsdp"):
        out = run_cli(tmp_path, "train", model, *RUNS[model], "--bs", "8", "--out", mode,
                      *(["--fsdp"] if mode == "fsdp" else []), torchrun=True)
        logged, stage = LOGS[model]
        assert logged in out and (tmp_path / mode / "samples.png").exists(), (mode, out[-2000:])
        assert_finished(tmp_path / mode / "ckpt.pt", stage, 2)
    ddp, fsdp = (torch.load(tmp_path / m / "ckpt.pt", weights_only=True) for m in ("ddp", "fsdp"))
    models = [key for key, value in ddp.items() if isinstance(value, dict) and value
              and all(isinstance(t, torch.Tensor) for t in value.values())]
    assert len(models) == (1 if model == "fractalgen" else 2)
    for key in models:
        assert ddp[key].keys() == fsdp[key].keys(), key
        weights = [name for name, t in ddp[key].items() if t.is_floating_point() and t.isfinite().all()]
        distance = sum((fsdp[key][n].double() - ddp[key][n].double()).square().sum() for n in weights).sqrt()
        norm = sum(ddp[key][n].double().square().sum() for n in weights).sqrt()
        assert distance <= 1e-4 * norm, (key, (distance / norm).item())


def test_units_are_the_blocks():
    from fastar.models.var.build import build_vae_var
    from fastar.models.dalle.dalle import DALLE, DALLEConfig
    from fastar.models.mar.mar import MAR, MARConfig
    with torch.device("meta"):
        vae, var = build_vae_var(depth=3, device="meta")
        dalle = DALLE(DALLEConfig(width=64, depth=4, heads=2, text_vocab=16, text_len=4, image_vocab=16, grid=4))
        mar = MAR(MARConfig(width=64, depth=2, num_heads=2, diffloss_d=3, diffloss_w=64, img_size=16, vae_stride=4,
                            vae_embed_dim=4, buffer_size=4, class_num=10))
    assert units(var) == list(var.blocks) and units(vae) == []
    assert units(dalle) == list(dalle.blocks)
    assert units(mar) == [*mar.encoder_blocks, *mar.decoder_blocks, *mar.diffloss.net.res_blocks]


def test_shard_errors():
    with pytest.raises(TypeError, match="shard: model must be an nn.Module"):
        shard(torch.zeros(3))
    with pytest.raises(RuntimeError, match="shard: no process group"):
        shard(torch.nn.Linear(2, 2))


def test_fsdp_needs_torchrun(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastar", "train", "var", "--fsdp", "--out", "o"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": str(Path(__file__).parents[1])})
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1] == (
        "--fsdp shards over processes: run under torchrun --nproc_per_node N, N >= 2")
    assert not (tmp_path / "o").exists()


SHARD_BIG = """
import torch, torch.distributed as dist
from fastar.models.fsdp import shard
from fastar.models.var.build import build_vae_var
from fastar.models.dalle.dalle import DALLE, DALLE_12B
dist.init_process_group("gloo")
out = open(f"rank{dist.get_rank()}.txt", "w", buffering=1)  # files: stdout once lost its lines
_, var = build_vae_var(depth=30, device="meta")
with torch.device("meta"):
    dalle = DALLE(DALLE_12B)
for name, model in (("var-d30", var), ("dalle-12b", dalle)):
    total = sum(p.numel() for p in model.parameters())
    shard(model)
    local = sum(p.to_local().numel() for p in model.parameters())
    out.write(f"{name} {dist.get_rank()} {total} {local}\\n")

# the README's recipe on a small VAR: built on meta, sharded, materialized, rank 0's weights broadcast into it
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from fastar.models.fsdp import full_state_dict
from fastar.models.var.train import end_run
torch.manual_seed(0)
_, plain = build_vae_var(depth=2, num_classes=10)
_, var = build_vae_var(depth=2, num_classes=10, device="meta")
shard(var)
var.to_empty(device="cpu")
set_model_state_dict(var, plain.state_dict() if dist.get_rank() == 0 else {},
                     options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
labels, x = torch.arange(2), torch.randn(2, plain.L - 1, plain.Cvae, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits, expected = var.eval()(labels, x), plain.eval()(labels, x)
same = all(torch.equal(v, plain.state_dict()[k]) for k, v in full_state_dict(var).items())
out.write(f"recipe {dist.get_rank()} {same} {(logits - expected).abs().max().item()}\\n")
out.close()
end_run(2)  # a barrier, then leave the group, as the trainers do
"""


def test_past_1b_models_shard_on_meta(tmp_path):
    """VAR-d30 (2.0 B) and DALL-E 12 B built on the meta device and sharded over 2 processes: each holds about half
    of every parameter (dim 0 split, the first rank's half rounded up). Then the README's recipe on VAR-d2: on meta,
    sharded, materialized, rank 0's weights broadcast: the same weights and outputs as the plain model."""
    (tmp_path / "shard_big.py").write_text(SHARD_BIG)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "shard_big.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(Path(__file__).parents[1]), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split() for rank in (0, 1) for line in (tmp_path / f"rank{rank}.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == ["var-d30", "dalle-12b", "recipe"] * 2, (rows, res.stdout, res.stderr[-3000:])
    for name in ("var-d30", "dalle-12b"):
        (total0, local0), (total1, local1) = ([int(v) for v in r[2:]] for r in sorted(r for r in rows if r[0] == name))
        assert total0 == total1 > 1e9 and local0 + local1 == total0
        assert 0 <= local0 - local1 < 0.01 * total0
    for rank, same, diff in (r[1:] for r in rows if r[0] == "recipe"):
        assert same == "True" and float(diff) <= 1e-5, (rank, same, diff)  # the same GEMMs, other addresses
