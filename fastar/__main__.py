"""fastar's command line: `python -m fastar {sample,train} MODEL [options]` (or the `fastar` script).

Each (command, model) is a module whose main(argv) parses the rest; `... --help` lists its options.
"""
import importlib
import sys

COMMANDS = {
    ("sample", "var"): "fastar.models.var.sample",
    ("train", "var"): "fastar.models.var.train",
    ("sample", "mar"): "fastar.models.mar.sample",
    ("train", "mar"): "fastar.models.mar.train",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    module = COMMANDS.get(tuple(argv[:2]))
    if module is None:
        choices = ", ".join(" ".join(k) for k in COMMANDS)
        raise SystemExit(f"usage: python -m fastar COMMAND MODEL [options]; one of: {choices}")
    importlib.import_module(module).main(argv[2:])


if __name__ == "__main__":
    main()
