"""What the models' command lines share: argparse types for counts and numbers, a --help formatter that shows
defaults, checks of the output paths made before any work, writing a checkpoint whole, and reading one with errors
that name the option and the file."""
import argparse
import math
import os
import sys
import tempfile
from contextlib import contextmanager

import torch
from PIL import Image


def number(kind, *, low=None, high=None, above=None, name=None):
    """argparse type: a finite `kind` (int or float) with low <= x <= high and x > above, where given; nan and inf
    are refused, as the models refuse them. name: what argparse's "invalid ... value" calls it."""
    what = "an int" if kind is int else "a number"
    bound = (f"in [{low}, {high}]" if low is not None and high is not None else f">= {low}" if low is not None
             else f"<= {high}" if high is not None else f"> {above}" if above is not None else "")

    def parse(text):
        x = kind(text)  # a ValueError: argparse says "invalid <name> value"
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (low is not None and x < low) or (high is not None and x > high) or (above is not None and x <= above):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text}")
        return x
    parse.__name__ = name or f"{what} {bound}"
    return parse


positive_int = number(int, low=1, name="positive_int")  # steps, batch sizes, widths, image counts
nonneg_int = number(int, low=0, name="nonneg_int")  # warmup steps
finite_float = number(float, name="finite_float")  # guidance scales
positive_float = number(float, above=0, name="positive_float")  # temperatures, learning rates
nonneg_float = number(float, low=0, name="nonneg_float")  # loss weights, 0 = off
unit_float = number(float, low=0, high=1, name="unit_float")  # top-p, probability thresholds, EMA decays
# seeds: torch's generators take 64 bits, and the CLIs seed with seed + batch or seed * 1000 + rank (numpy's range)
seed = number(int, low=0, high=2**32 - 1, name="seed")


def int_in(low, high):
    """argparse type: an int in [low, high] (diffusion steps: 2 to the chain's 1000; text positions)."""
    return number(int, low=low, high=high)


def multiple_of(k):
    """argparse type: a positive multiple of k (widths of heads of 32, image sizes of a tokenizer's stride)."""
    def parse(text):
        n = int(text)
        if n < k or n % k:
            raise argparse.ArgumentTypeError(f"must be a positive multiple of {k}, got {n}")
        return n
    parse.__name__ = f"multiple of {k}"
    return parse


def positive_ints(text):
    """argparse type: comma-separated ints >= 1, as a list (steps per level, widths per level)."""
    try:
        ns = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated ints >= 1, got {text!r}") from None
    if any(n < 1 for n in ns):
        raise argparse.ArgumentTypeError(f"must be comma-separated ints >= 1, got {text!r}")
    return ns


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except None (the help says what then applies) and store_true's False."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def check_out_file(p, path, option="--out"):
    """Exits through p.error unless `path` can take an image: its folder exists and can be written into (probed with
    a file), it is no folder itself nor a file it may not write, and PIL knows its extension (checked before
    sampling, not after)."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        p.error(f"{option} {path} is a folder: give an image file, e.g. {os.path.join(path, 'grid.png')}")
    if not os.path.isdir(folder):
        p.error(f"{option} {path}: its folder {folder} does not exist")
    Image.init()
    ext = os.path.splitext(path)[1].lower()
    if ext not in Image.registered_extensions():
        p.error(f"{option} {path}: {ext or 'no extension'} is not an image format PIL writes (e.g. .png)")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as e:
        p.error(f"{option} {path}: cannot write into its folder {folder} ({e.strerror or e})")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        p.error(f"{option} {path}: the file exists and cannot be written")


def check_out_dir(path, option="--out"):
    """Makes the folder `path` for a trainer's outputs, or SystemExit naming the option: a file in the way, a folder
    that cannot be made (/proc/x) or written into (probed with a file), found before any training, not at the first
    checkpoint."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"{option} {path} is a file: give a folder for the checkpoint and samples.png")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise SystemExit(f"{option} {path}: cannot make or write this folder ({e.strerror or e})") from None


def check_warmup(p, warmup, steps, warmup_option="--warmup", steps_option="--steps"):
    """Exits through p.error when the learning-rate warmup takes the whole run (the schedule after it never runs)."""
    if warmup >= steps:
        p.error(f"{warmup_option} {warmup} must be less than {steps_option} {steps}: the learning rate would never "
                f"leave its warmup (give a smaller {warmup_option}, e.g. 0)")


def run_state(stage, step, steps, last_stage=True):
    """The keys a `fastar train` checkpoint records of its run: stage, step (done) of steps, and whether the run had
    finished (the last stage's last step); `sample` warns when it had not (warn_unfinished)."""
    return {"stage": stage, "step": step, "steps": steps, "finished": last_stage and step == steps}


def save_checkpoint(ckpt, path):
    """torch.save(ckpt, path) written whole or not at all: saved under the same name in a fresh folder beside path,
    then os.replace'd over it (a run killed mid-save leaves the previous checkpoint; the archive inside keeps the
    file's name, so a run writes the same bytes every time)."""
    folder = tempfile.mkdtemp(dir=os.path.dirname(path) or ".", prefix=".saving-")
    tmp = os.path.join(folder, os.path.basename(path))
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        os.rmdir(folder)


def read_checkpoint(path, option="--ckpt"):
    """The dict torch.load reads from `path` on the CPU (weights only; argparse.Namespace allowed, which official
    checkpoints pickle as their args), or SystemExit naming the option: no such file, a folder, an empty or
    truncated file, not a torch file, no dict."""
    if os.path.isdir(path):
        raise SystemExit(f"{option} {path} is a folder: give the checkpoint file, e.g. {os.path.join(path, 'ckpt.pt')}")
    if not os.path.isfile(path):
        raise SystemExit(f"{option} {path}: no such file")
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and weights-only refusals alike
        if isinstance(e, EOFError) or "central directory" in str(e):  # no bytes, or a zip cut short
            raise SystemExit(f"{option} {path}: empty or truncated (not a whole torch file)") from None
        raise SystemExit(f"{option} {path}: not a torch checkpoint ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    if not isinstance(sd, dict):
        raise SystemExit(f"{option} {path}: holds a {type(sd).__name__}, not a checkpoint's dict")
    return sd


def wrong_checkpoint(path, expected, sd, option="--ckpt"):
    """The SystemExit (to raise) for a checkpoint dict that is not `expected`, with the first of its keys."""
    keys = [str(k) for k in sd][:6]
    more = ", ..." if len(sd) > 6 else ""
    return SystemExit(f"{option} {path} is not {expected} (its keys: {', '.join(keys)}{more})")


def load_state(model, state, path, what, option="--ckpt"):
    """model.load_state_dict(state), strict, or SystemExit saying how the checkpoint at `path` does not fit `what`
    (keys missing, unexpected, or of other shapes: a checkpoint of another size), not torch's list of every key."""
    try:
        model.load_state_dict(state)
    except RuntimeError:
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shaped = [k for k in own if k in state and getattr(state[k], "shape", None) not in (None, own[k].shape)]
        why = [f"{len(missing)} keys missing (e.g. {missing[0]})" if missing else "",
               f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
               f"{len(shaped)} of other shapes (e.g. {shaped[0]}: {tuple(state[shaped[0]].shape)}, "
               f"not {tuple(own[shaped[0]].shape)})" if shaped else ""]
        raise SystemExit(f"{option} {path} does not fit {what}: {'; '.join(w for w in why if w)}") from None


def refuse_vae_ckpt(vae_ckpt, ckpt, model, official):
    """SystemExit when --vae-ckpt is given where it would go unread: without --ckpt (random weights) or beside a
    `fastar train` checkpoint (which holds its own VAE); it belongs to an `official` checkpoint."""
    if vae_ckpt is not None:
        raise SystemExit(f"--vae-ckpt {vae_ckpt} goes with an official --ckpt ({official}): " + (
            "without --ckpt the weights are random" if ckpt is None else
            f"--ckpt {ckpt} is a `fastar train {model}` ckpt.pt, which holds its own VAE"))


def refuse_superseded(option, given, held, ckpt):
    """SystemExit when an option given on the command line (`given`, None when left out) is one the checkpoint
    decides and it holds another value (`held`; None: a `fastar train` ckpt.pt, whose own config decides it)."""
    if given is not None and given != held:
        raise SystemExit(f"{option} {given} is not what --ckpt {ckpt} holds " + (
            "(a `fastar train` ckpt.pt: its own config)" if held is None else f"({held})") +
            f": the checkpoint decides it; leave {option} out")


@contextmanager
def name_overflow(**flags):
    """Around a sample CLI's sampling: sample_categorical's RuntimeError on a row with no token to draw (logits
    with NaN or +inf) becomes one SystemExit naming the flags that scale the logits, {name: value}."""
    try:
        yield
    except RuntimeError as e:
        if "no token to draw" not in str(e):
            raise
        shown = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in flags.items())
        raise SystemExit(f"sampling stopped: the logits hold NaN or inf, past float32 at {shown} (too large a "
                         "guidance, too small a temperature), or from a checkpoint's NaN weights") from None


@contextmanager
def checkpoint_config(path, option="--ckpt"):
    """Around building models from a checkpoint's configs: their TypeError (an unknown or missing field) or
    ValueError (a refused value) becomes one SystemExit naming the option and the file."""
    try:
        yield
    except (TypeError, ValueError) as e:
        raise SystemExit(f"{option} {path}: its config is refused: {e}") from None


def warn_unfinished(sd, path, option="--ckpt"):
    """One line on stderr when a `fastar train` checkpoint was written before its run finished (run_state's keys;
    checkpoints from before them say nothing)."""
    if sd.get("finished") is False:
        print(f"warning: {option} {path} was written mid-run (stage {sd.get('stage')}, step {sd.get('step')} of "
              f"{sd.get('steps')}): not the run's final weights", file=sys.stderr)
