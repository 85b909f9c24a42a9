"""The ``graphopt`` command line: one subcommand per module ``graphopt/cli/cmd_<name>.py``.

Exit codes: 0 success, 2 bad input (one line on stderr, never a traceback), 1 internal error
(with traceback). Usage errors argparse finds are held to the same one-line shape.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

from graphopt.errors import GraphoptError

__all__ = ["main", "build_parser"]

EPILOG = """model specs:
  path/to/file.py:factory   factory() returns (model, example_inputs)
  package.module:factory    the same, from an importable module
  zoo:NAME                  a shipped model: mlp, cnn, gpt, resmlp
  hf:ClassName              a transformers class from its default config, random weights
                            (e.g. hf:GPT2LMHeadModel --set n_layer=2); needs graphopt[hf]

byte sizes (--memory-cap, --budget, ...):
  4096 is bytes; KB/MB/GB/TB are powers of 10 (2GB = 2000000000), KiB/MiB/GiB/TiB powers of 2
  (2GiB = 2147483648); a decimal needs a unit (1.5GiB), a bare 1.5 is an error

output: every command that writes files takes -o/--out DIR (default out)

exit codes: 0 success, 1 internal error, 2 bad input
"""


def _command_modules():
    import graphopt.cli as pkg
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_"))
    mods = [importlib.import_module(f"graphopt.cli.{n}") for n in names]
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 100))


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error shape: one line on stderr, exit code 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"graphopt: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from graphopt import __version__
    parser = _Parser(
        prog="graphopt", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="A computation-graph optimizer for PyTorch: capture a model as a "
                    "cost-annotated ATen graph, partition it across devices, fuse memory-bound "
                    "ops into Triton kernels, and plan its memory.")
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already reported
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except GraphoptError as exc:
        print(f"graphopt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - the last resort: a bug of ours, shown in full
        traceback.print_exc()
        print("graphopt: internal error (a bug in graphopt; please report it with the traceback "
              "above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
