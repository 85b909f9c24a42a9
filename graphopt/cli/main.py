"""The ``graphopt`` command line: one subcommand per module ``graphopt/cli/cmd_<name>.py``.

Exit codes: 0 success, 2 bad input (one line on stderr, never a traceback), 1 internal error
(with traceback). Usage errors argparse finds are held to the same one-line shape.

Start-up is kept light: this module and :mod:`graphopt.cli.common` import nothing heavy (no
torch, numpy, networkx or transformers), the commands are known here by name, and only the
module of the command being run is imported. ``graphopt --help`` and ``--version`` import no
command module; ``graphopt CMD ...`` imports ``cmd_CMD``, whose top defines the arguments and
whose ``run`` imports the library, so argument errors and the checks that need no model come
before torch is imported.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from graphopt.errors import GraphoptError

__all__ = ["main", "build_parser", "COMMANDS"]

# name -> (module under graphopt.cli, the line `graphopt --help` shows), in the order it lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("cmd_inspect", "nodes, FLOPs, parameter and activation bytes, op mix"),
    "partition": ("cmd_partition", "split the graph across K devices (METIS + acyclic DP)"),
    "pipeline": ("cmd_pipeline", "run the pipeline plan on K processes (torch.distributed)"),
    "train": ("cmd_train", "train the pipeline plan on P x D processes "
              "(torch.distributed.pipelining + DDP/FSDP2)"),
    "plan": ("cmd_plan", "rank every data/pipeline-parallel configuration of N devices that "
             "fits (writes parallel.json)"),
    "fuse": ("cmd_fuse", "fuse memory-bound ops into Triton kernels; write the plan and the "
             "kernel sources"),
    "remat": ("cmd_remat", "memory plan: liveness, arena, remat under a budget"),
    "calibrate": ("cmd_calibrate", "measure this machine (compute, bandwidth, overhead, links) "
                  "into device.json"),
}

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


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error shape: one line on stderr, exit code 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"graphopt: error: {message} (see '{self.prog} --help')\n")


class _Commands:
    """The subparsers as a command module's ``register`` sees them: the summary is COMMANDS'."""

    def __init__(self, action):
        self._action = action

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs["help"] = COMMANDS[name][1]
        return self._action.add_parser(name, **kwargs)


def build_parser(only: str | None = "*") -> argparse.ArgumentParser:
    """The argument parser; ``only`` names the one command whose module is imported.

    ``"*"`` (the default) imports every command module (tests walk the whole tree); ``None``
    imports none, which is enough for ``--help``, ``--version`` and an unknown command.
    """
    from graphopt import __version__
    parser = _Parser(
        prog="graphopt", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="A computation-graph optimizer for PyTorch: capture a model as a "
                    "cost-annotated ATen graph, partition it across devices, fuse memory-bound "
                    "ops into Triton kernels, and plan its memory.")
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = _Commands(sub)
    for name, (module, summary) in COMMANDS.items():
        if only in ("*", name):
            importlib.import_module(f"graphopt.cli.{module}").register(commands)
        else:  # listed by --help; its module is imported only when it runs
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command ``argv`` runs: its first word that is not an option (the top level takes
    only --help and --version, neither with a value); None when there is none or it is unknown."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser(only=_command_of(argv))
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
