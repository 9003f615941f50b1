"""The command lines' input checks: bad counts, output paths and checkpoints are refused before any work, with a
message that names the option (argparse's exit 2, or a SystemExit naming the file)."""
import importlib

import pytest
import torch

from fastar.__main__ import COMMANDS, main
from fastar.models.cli import load_state, read_checkpoint
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
              ("train", "dalle", "--top-k", "-1")]


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


def test_train_refuses_an_out_that_is_a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("")
    assert "is a file" in str(run(["train", "hit", "--steps", "1", "--out", str(f)]))


@pytest.mark.parametrize("model", ["var", "mar", "fractalgen", "hit", "dalle"])
def test_sample_refuses_an_unwritable_out_before_sampling(capsys, tmp_path, model):
    assert run(["sample", model, "--out", str(tmp_path / "no_folder" / "x.png")]) == 2
    assert "its folder" in capsys.readouterr().err
    assert run(["sample", model, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert run(["sample", model, "--out", str(tmp_path / "x.notanimage")]) == 2
    assert "not an image format" in capsys.readouterr().err


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
