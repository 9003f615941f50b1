"""fastar's command line: `python -m fastar {sample,train} MODEL [options]`, `python -m fastar selftest [options]`
(or the `fastar` script).

Each (command, model) or (command,) is a module whose main(argv) parses the rest; `... --help` lists its options.
"""
import importlib
import sys

COMMANDS = {
    ("sample", "var"): "fastar.models.var.sample",
    ("train", "var"): "fastar.models.var.train",
    ("selftest",): "fastar.selftest",
    ("sample", "fractalgen"): "fastar.models.fractalgen.sample",
    ("train", "fractalgen"): "fastar.models.fractalgen.train",
    ("sample", "hit"): "fastar.models.hit.sample",
    ("train", "hit"): "fastar.models.hit.train",
    ("sample", "dalle"): "fastar.models.dalle.sample",
    ("train", "dalle"): "fastar.models.dalle.train",
    ("sample", "mar"): "fastar.models.mar.sample",
    ("train", "mar"): "fastar.models.mar.train",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    key = next((k for k in (tuple(argv[:2]), tuple(argv[:1])) if k in COMMANDS), None)
    if key is None:
        usage = ("usage: python -m fastar COMMAND [MODEL] [options], one of:\n"
                 + "".join(f"  python -m fastar {' '.join(k)} [options]\n" for k in sorted(COMMANDS))
                 + "each with --help for its options")
        if argv[:1] in (["-h"], ["--help"]):
            print(usage)
            return
        raise SystemExit(usage if not argv else f"python -m fastar: no command {' '.join(argv[:2])!r}\n{usage}")
    importlib.import_module(COMMANDS[key]).main(argv[len(key):])


if __name__ == "__main__":
    main()
