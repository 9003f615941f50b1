"""The command lines' input checks: bad counts, output paths and checkpoints are refused before any work, with a
message that names the option (argparse's exit 2, or a SystemExit naming the file)."""
import argparse
import importlib

import pytest
import torch

from fastar.__main__ import COMMANDS, main
from fastar.models.cli import (check_out_dir, check_out_file, load_state, read_checkpoint, run_state, save_checkpoint,
                               warn_unfinished)
from fastar.models.var.sample import IMAGENET_CLASSES, pick_classes
from fastar.models.var.train import batches


def run(argv):
    """SystemExit's code of `python -m fastar argv` (None: it returned)."""
    try:
        main(argv)
    except SystemExit as e:
        return e.code
    return None


def test_help_lists_every_command_and_exits_0(capsys):
    assert run(["--help"]) is None
    out = capsys.readouterr().out
    assert all(f"python -m fastar {' '.join(k)}" in out for k in COMMANDS)
    assert "no command 'nope'" in str(run(["nope"]))


# a count that must be >= 1 (or >= 0) per trainer: argparse refuses it (once, -1 trained forever, 0 divided by zero)
BAD_COUNTS = [("var", "--var-steps", "0"), ("var", "--bs", "-1"), ("var", "--ckpt-every", "0"),
              ("var", "--threads", "0"), ("mar", "--mar-steps", "-1"), ("mar", "--mar-warmup", "-1"),
              ("hit", "--steps", "0"), ("fractalgen", "--steps", "-5"), ("fractalgen", "--warmup", "-1"),
              ("dalle", "--dalle-steps", "0"), ("dalle", "--depth", "0")]


@pytest.mark.parametrize("model,option,value", BAD_COUNTS)
def test_train_refuses_bad_counts(capsys, tmp_path, model, option, value):
    assert run(["train", model, option, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be an int >= " in err and value in err
    assert not any(tmp_path.iterdir()), "nothing written before the refusal"


# numbers the models (or the optimizers) would refuse only later, some after training: argparse or one p.error
# right after parsing refuses them, before any model is built (torch.nn.Module.__init__ raises in the test)
BAD_VALUES = [("sample", "mar", "--num-steps", "1"), ("sample", "mar", "--num-steps", "2000"),
              ("sample", "mar", "--temperature", "0"), ("sample", "mar", "--cfg", "nan"),
              ("sample", "fractalgen", "--num-iter", "0,0"), ("sample", "fractalgen", "--num-iter", "8,x"),
              ("sample", "fractalgen", "--temperature", "-1"), ("sample", "fractalgen", "--filter-threshold", "2"),
              ("sample", "var", "--top-k", "-1"), ("sample", "var", "--top-p", "2"), ("sample", "var", "--cfg", "inf"),
              ("sample", "dalle", "--temperature", "0"), ("sample", "dalle", "--top-k", "-1"),
              ("sample", "dalle", "--top-p", "1.5"), ("sample", "dalle", "--prefix-from", "-1"),
              ("train", "mar", "--num-steps", "1"), ("train", "mar", "--image-size", "15"),
              ("train", "mar", "--width", "100"), ("train", "mar", "--mar-lr", "-1"), ("train", "mar", "--cfg", "nan"),
              ("train", "var", "--var-lr", "-1"), ("train", "var", "--image-size", "16"),
              ("train", "fractalgen", "--num-iter", "0,0"), ("train", "fractalgen", "--num-iter", "4"),
              ("train", "fractalgen", "--widths", "30,32,32"), ("train", "fractalgen", "--temperature", "0"),
              ("train", "hit", "--ema", "1.5"), ("train", "hit", "--r1", "-1"), ("train", "hit", "--lr", "0"),
              ("train", "dalle", "--width", "0"), ("train", "dalle", "--width", "100"),
              ("train", "dalle", "--text-len", "2"), ("train", "dalle", "--text-len", "300"),
              ("train", "dalle", "--top-k", "-1"), ("train", "fractalgen", "--warmup", "800"),
              ("train", "mar", "--mar-warmup", "900"),
              # torch's generators take 64 bits: once an OverflowError traceback, after loading
              ("sample", "hit", "--seed", "99999999999999999999999"), ("sample", "dalle", "--seed", "-1"),
              ("sample", "var", "--seed", "4294967296"), ("train", "hit", "--seed", "99999999999999999999999"),
              ("sample", "dalle", "--prefix-rows", "5")]  # without --prefix-from: once unread


@pytest.mark.parametrize("command,model,option,value", BAD_VALUES)
def test_bad_values_are_refused_before_any_model_is_built(capsys, monkeypatch, tmp_path, command, model, option,
                                                          value):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_model)
    out = ["--out", str(tmp_path if command == "train" else tmp_path / "x.png")]
    assert run([command, model, option, value] + out) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"python -m fastar {command} {model}: error: ") and option in line and value in line, line
    assert not any(tmp_path.iterdir()), "nothing written before the refusal"


def test_help_gives_every_option_a_help_and_its_default(capsys, monkeypatch):
    """Each train / sample parser: HelpFormatter (defaults shown, None left out), a help text on every option."""
    import argparse
    from fastar.models.cli import HelpFormatter
    parsers = []

    def keep(self, *args, **kwargs):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", keep)
    for key in COMMANDS:
        if key[0] in ("train", "sample"):
            assert run(list(key)) == 0
            p = parsers[-1]
            assert p.formatter_class is HelpFormatter, key
            assert not [a.dest for a in p._actions if not a.help], key
            text = p.format_help()
            assert "(default: None)" not in text and "(default: False)" not in text, key
            assert "--bs" not in text or "(default: " in text, key
            clips = key[0] == "train" and key[1] != "hit"  # fit's gradient norm clip; HiT's loop has none
            assert ("clips the gradients' total norm at 2.0" in " ".join(text.split())) == clips, key
    monkeypatch.undo()
    assert run(["sample", "mar", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the checkpoint's: 1000 for a `fastar train mar` ckpt.pt" in text
    assert "100 for MAR-B/L/H" in text


def test_batches_refuse_a_batch_larger_than_a_process_share():
    """`--bs 4000` once looped forever over empty epochs; the share is per process under DDP."""
    assert len(list(batches(10, 5, 4, 0, 0, 1))) == 4
    with pytest.raises(SystemExit, match=r"--bs 11: .* 1 to 10 images"):
        next(batches(10, 11, 4, 0, 0, 1))
    with pytest.raises(SystemExit, match=r"--bs 6: .* 1 to 5 images .* 2 processes"):
        next(batches(10, 6, 4, 0, 1, 2))


def test_batches_give_every_rank_the_same_share():
    """1797 digits over 2 ranks: --bs 899 passed on rank 0 (899 images) and failed on rank 1 (898), whose exit left
    rank 0 in a gloo traceback; with 9 images and --bs 2 rank 0 took 5 and 2 batches an epoch, rank 1 4 and 2, but
    with --bs 5 rank 0 took one batch an epoch and rank 1 none. Now n // world each; one process: the whole order."""
    for rank in (0, 1):
        with pytest.raises(SystemExit, match=r"--bs 899: .* 1 to 898 images"):
            next(batches(1797, 899, 1, 0, rank, 2))
    ranks = [list(batches(9, 2, 6, 0, rank, 2)) for rank in (0, 1)]
    epoch = [torch.randperm(9, generator=torch.Generator().manual_seed(0))[rank::2][:4] for rank in (0, 1)]
    for rank in (0, 1):  # 2 batches an epoch on each, from its first 4 indices
        assert [s for s, _ in ranks[rank]] == list(range(6))
        assert torch.equal(torch.cat([b for _, b in ranks[rank][:2]]), epoch[rank])
    g = torch.Generator().manual_seed(3)
    order = torch.cat([torch.randperm(10, generator=g)[:9] for _ in range(2)])  # one process: 3 batches of 3 an epoch
    assert torch.equal(torch.cat([b for _, b in batches(10, 3, 6, 3, 0, 1)]), order)


def test_train_refuses_an_out_that_is_a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("")
    assert "is a file" in str(run(["train", "hit", "--steps", "1", "--out", str(f)]))


@pytest.mark.parametrize("model", ["var", "mar", "fractalgen", "hit", "dalle"])
def test_train_refuses_an_unusable_out_before_the_process_group(monkeypatch, model):
    """A folder that cannot be made (/proc/x: once os.makedirs' traceback) or written into (/proc; once torch's
    traceback at the first checkpoint, after training): one line naming --out, before torchrun's process group."""
    def no_group(*args, **kwargs):
        raise AssertionError("init_process_group before --out was checked")

    monkeypatch.setattr(torch.distributed, "init_process_group", no_group)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for out in ("/proc/fastar_out", "/proc"):
        msg = str(run(["train", model, "--out", out]))
        assert msg.startswith(f"--out {out}: cannot make or write this folder (") and "\n" not in msg, msg


def test_check_out_dir_makes_and_probes_the_folder(tmp_path, monkeypatch):
    check_out_dir(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir() and not any((tmp_path / "a" / "b").iterdir()), "the probe file is gone"

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.NamedTemporaryFile", read_only)
    with pytest.raises(SystemExit, match=r"^--out .*a/b: cannot make or write this folder \(Permission denied\)$"):
        check_out_dir(str(tmp_path / "a" / "b"))


def test_save_checkpoint_writes_whole_files_and_the_same_bytes(tmp_path, monkeypatch):
    """Written under its own name in a fresh folder, then os.replace'd: the archive inside is named after the file
    (ckpt/...), two saves give the same bytes, nothing is left beside it, and a save that fails midway leaves the
    previous checkpoint as it was."""
    import zipfile
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"w": torch.arange(4.0), **run_state("var", 3, 3)}, str(path))
    first = path.read_bytes()
    save_checkpoint({"w": torch.arange(4.0), **run_state("var", 3, 3)}, str(path))
    assert path.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert all(n.startswith("ckpt/") for n in zipfile.ZipFile(path).namelist())
    real_save = torch.save

    def dies_midway(obj, f):
        real_save(obj, f)
        with open(f, "r+b") as h:
            h.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"w": torch.zeros(4)}, str(path))
    assert path.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_run_state_and_the_unfinished_warning(tmp_path, capsys):
    assert run_state("vae", 100, 150, last_stage=False) == {"stage": "vae", "step": 100, "steps": 150,
                                                            "finished": False}
    assert run_state("vae", 150, 150, last_stage=False)["finished"] is False
    assert run_state("var", 500, 500)["finished"] is True
    warn_unfinished(run_state("var", 500, 500), "c.pt")
    warn_unfinished({}, "c.pt")  # a checkpoint from before run_state: unknown, no warning
    assert capsys.readouterr().err == ""
    warn_unfinished(run_state("var", 100, 500), "c.pt")
    assert capsys.readouterr().err == ("warning: --ckpt c.pt was written mid-run (stage var, step 100 of 500): not the "
                                       "run's final weights\n")


@pytest.mark.parametrize("model", ["var", "mar", "fractalgen", "hit", "dalle"])
def test_sample_refuses_an_unwritable_out_before_sampling(capsys, tmp_path, model):
    assert run(["sample", model, "--out", str(tmp_path / "no_folder" / "x.png")]) == 2
    assert "its folder" in capsys.readouterr().err
    assert run(["sample", model, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert run(["sample", model, "--out", str(tmp_path / "x.notanimage")]) == 2
    assert "not an image format" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["var", "mar", "fractalgen", "hit", "dalle"])
def test_sample_refuses_a_folder_it_cannot_write_into_before_sampling(capsys, monkeypatch, tmp_path, model):
    """/proc: once the whole sampling ran, then PIL's FileNotFoundError traceback; the probe leaves nothing."""
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_model)
    assert run(["sample", model, "--out", "/proc/x.png"]) == 2
    assert "--out /proc/x.png: cannot write into its folder /proc (" in capsys.readouterr().err
    check_out_file(argparse.ArgumentParser(), str(tmp_path / "x.png"))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("model,official", [("var", "var_d*.pth"), ("mar", "checkpoint-last.pth")])
def test_sample_refuses_a_vae_ckpt_it_would_not_read(monkeypatch, tmp_path, model, official):
    """--vae-ckpt without --ckpt, or beside a `fastar train` ckpt.pt (its own VAE): once silently unread."""
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_model)
    path = tmp_path / "ckpt.pt"
    torch.save({f"{model}_cfg": {}, "vae_cfg": {}, "vae": {}, model: {}}, path)
    out = ["--vae-ckpt", "vae.pt", "--out", str(tmp_path / "x.png")]
    assert run(["sample", model, "--ckpt", str(path)] + out) == (
        f"--vae-ckpt vae.pt goes with an official --ckpt ({official}): --ckpt {path} is a `fastar train {model}` "
        "ckpt.pt, which holds its own VAE")
    assert run(["sample", model] + out) == (f"--vae-ckpt vae.pt goes with an official --ckpt ({official}): without "
                                            "--ckpt the weights are random")


def test_sample_refuses_other_files_as_checkpoints(tmp_path):
    """A missing file, a file torch cannot read, and each model's checkpoint given to another model's sampler: one
    line naming the option and the file (once KeyErrors from deep inside, or a dump of every key)."""
    assert run(["sample", "var", "--ckpt", str(tmp_path / "none.pt")]) == f"--ckpt {tmp_path / 'none.pt'}: no such file"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "not a torch checkpoint" in str(run(["sample", "hit", "--ckpt", str(junk)]))
    keys = {"var": ["vae_cfg", "var_cfg"], "hit": ["cfg", "G_ema"], "dalle": ["dvae_cfg", "dalle_cfg", "tokenizer"],
            "mar": ["mar_cfg"], "fractalgen": ["fractalgen_cfg"]}
    for owner, names in keys.items():
        path = tmp_path / f"{owner}.pt"
        torch.save({name: {} for name in names}, path)
        for model in ("var", "hit", "dalle"):  # the samplers that need their own keys before building anything
            if model != owner:
                msg = str(run(["sample", model, "--ckpt", str(path), "--out", str(tmp_path / "x.png")]))
                assert msg.startswith(f"--ckpt {path} is not a `fastar train {model}` ckpt.pt"), msg
                assert names[0] in msg


def test_train_checkpoints_that_do_not_fit_their_model_are_refused_in_one_line(tmp_path):
    """An unknown config field, a refused value or missing weights in a `fastar train` checkpoint: one line naming
    --ckpt (once 13-73 line tracebacks from the config, the model or load_state_dict)."""
    from fastar.models.hit.generator import TINY
    from dataclasses import asdict
    unknown = {"var": {"vae_cfg": {"bogus": 1}, "var_cfg": {}, "vae": {}, "var": {}},
               "mar": {"vae_cfg": {"embed_dim": 4, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1},
                       "mar_cfg": {"width": 64, "num_heads": 3}, "vae": {}, "mar": {}},  # a refused value
               "fractalgen": {"fractalgen_cfg": {"widths": [1]}, "model": {}},
               "hit": {"cfg": {**asdict(TINY), "bogus": 1}, "G_ema": {}},
               "dalle": {"dvae_cfg": {"bogus": 1}, "dalle_cfg": {}, "dvae": {}, "dalle": {}, "tokenizer": ""}}
    for model, sd in unknown.items():
        path = tmp_path / f"{model}.pt"
        torch.save(sd, path)
        msg = str(run(["sample", model, "--ckpt", str(path), "--out", str(tmp_path / "x.png")]))
        assert msg.startswith(f"--ckpt {path}: its config is refused: ") and "\n" not in msg, msg
    path = tmp_path / "hit_weights.pt"
    torch.save({"cfg": asdict(TINY), "G_ema": {}}, path)  # missing weights, and no "step" (once a KeyError)
    msg = str(run(["sample", "hit", "--ckpt", str(path), "--out", str(tmp_path / "x.png")]))
    assert msg.startswith(f"--ckpt {path} does not fit its cfg's HiT generator: ") and "keys missing" in msg, msg
    torch.save({"var_cfg": {}}, path)
    msg = str(run(["sample", "var", "--ckpt", str(path), "--out", str(tmp_path / "x.png")]))
    assert msg.startswith(f"--ckpt {path} is not a whole `fastar train var` ckpt.pt"), msg


def test_read_checkpoint_names_folders_empty_and_truncated_files(tmp_path):
    assert str(run(["sample", "var", "--ckpt", str(tmp_path)])).startswith(f"--ckpt {tmp_path} is a folder: ")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(100)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:300])
    for path in (empty, cut):
        with pytest.raises(SystemExit, match=r"^--ckpt .*: empty or truncated \(not a whole torch file\)$"):
            read_checkpoint(str(path))


def test_read_checkpoint_and_load_state_name_what_does_not_fit(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    sd = read_checkpoint(str(path))
    with pytest.raises(SystemExit, match=r"does not fit a Linear\(3, 5\): 2 of other shapes \(e.g. weight: \(4, 3\), "
                                         r"not \(5, 3\)\)"):
        load_state(torch.nn.Linear(3, 5), sd, str(path), "a Linear(3, 5)")
    with pytest.raises(SystemExit, match=r"1 keys missing \(e.g. 0.bias\); 2 unexpected \(e.g. bias\)"):
        load_state(torch.nn.Sequential(torch.nn.Linear(3, 4)), {**sd, "0.weight": sd["weight"]}, str(path), "it")
    torch.save([1, 2], path)
    with pytest.raises(SystemExit, match="holds a list"):
        read_checkpoint(str(path))


def test_pick_classes(capsys):
    parser = importlib.import_module("argparse").ArgumentParser(prog="p")
    assert pick_classes(parser, None, 1000) == IMAGENET_CLASSES
    assert pick_classes(parser, None, 10) == list(range(10)) and pick_classes(parser, None, 3) == [0, 1, 2]
    assert pick_classes(parser, [2, 9], 10) == [2, 9]
    with pytest.raises(SystemExit):
        pick_classes(parser, [3, 10, -1], 10)
    assert "--classes must be in [0, 10) for this model, got [10, -1]" in capsys.readouterr().err


def test_sample_refuses_a_size_option_its_checkpoint_decides(tmp_path):
    """--depth, --size, --model given beside a --ckpt that holds another value (or a `fastar train` ckpt.pt, which
    holds its own config): refused in one line (they were silently superseded); the same value is accepted."""
    from dataclasses import asdict
    from fastar.models.hit.generator import TINY
    from fastar.models.var import VARConfig, VQVAEConfig
    vae_cfg = VQVAEConfig(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=(1, 2))
    var_cfg = VARConfig(depth=2, patch_nums=(1, 2), vocab_size=16, Cvae=8, num_classes=10)
    ckpts = {"var": {"vae_cfg": asdict(vae_cfg), "var_cfg": asdict(var_cfg), "vae": {}, "var": {}},
             "official_var": {"pos_1LC": torch.zeros(1, 5, 128), "pos_start": torch.zeros(1, 1, 128)},
             "hit": {"cfg": asdict(TINY), "G_ema": {}}, "mar": {"mar_cfg": {}}, "fractalgen": {"fractalgen_cfg": {}}}
    for name, sd in ckpts.items():
        torch.save(sd, tmp_path / f"{name}.pt")
    out = ["--out", str(tmp_path / "x.png")]
    cases = [("var", "var", "--depth", "3", "(2)", "2"), ("var", "official_var", "--depth", "16", "(2)", "2"),
             ("hit", "hit", "--size", "256", f"({TINY.output_size})", None),
             ("mar", "mar", "--size", "base", "(a `fastar train` ckpt.pt: its own config)", None),
             ("fractalgen", "fractalgen", "--model", "fractalmar_in64", "(a `fastar train` ckpt.pt: its own config)",
              None)]
    for model, name, option, value, held, same in cases:
        path = tmp_path / f"{name}.pt"
        assert run(["sample", model, "--ckpt", str(path), option, value] + out) == (
            f"{option} {value} is not what --ckpt {path} holds {held}: the checkpoint decides it; leave {option} out")
        if same is not None:  # the checkpoint's own value passes the check (then fails on what else it lacks)
            msg = str(run(["sample", model, "--ckpt", str(path), option, same] + out))
            assert "the checkpoint decides it" not in msg and msg.startswith(("--ckpt", "an official")), msg


def test_name_overflow_names_the_flags_of_a_sampling_that_overflowed():
    """sample_categorical's RuntimeError on a row with no token (e.g. cfg 1e30 made the logits inf - inf) becomes a
    SystemExit naming the flags; other RuntimeErrors pass unchanged."""
    import fastar
    from fastar.models.cli import name_overflow
    with pytest.raises(SystemExit, match=r"past float32 at --cfg 1e\+30, --top-k 3 \(too large a guidance"):
        with name_overflow(cfg=1e30, top_k=3):
            fastar.ops.sample_categorical(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(RuntimeError, match="other"):
        with name_overflow(cfg=1.0):
            raise RuntimeError("other")
