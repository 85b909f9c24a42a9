"""Arguments every command shares (the model spec and how to build it) and loading with progress."""
from __future__ import annotations

import argparse

from graphopt.capture import MODES, capture
from graphopt.graph import Graph
from graphopt.progress import Progress
from graphopt.specs import LoadedModel, load_spec, parse_overrides

__all__ = ["add_model_args", "load_and_capture", "progress_from", "print_json"]


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model spec: file.py:factory, module:factory, "
                   "zoo:NAME or hf:ClassName")
    g = p.add_argument_group("model building")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a transformers config field (repeatable), e.g. --set n_layer=2")
    g.add_argument("--batch", type=int, default=1, help="batch size of synthesized hf inputs "
                   "(default 1)")
    g.add_argument("--seq", type=int, default=128, help="sequence length of synthesized hf "
                   "token inputs (default 128)")
    g.add_argument("--image-size", type=int, default=None, help="image side of synthesized hf "
                   "pixel inputs (default: the config's, else 224)")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, inputs and any "
                   "randomized algorithm (default 0)")
    g.add_argument("--capture", choices=MODES, default="auto", help="capture mode (default auto: "
                   "torch.export, then TorchDynamo, then symbolic_trace)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    g.add_argument("--progress", action="store_true", help="progress lines on stderr even when "
                   "it is not a terminal")


def progress_from(args) -> Progress:
    return Progress(False if args.quiet else (True if args.progress else None))


def load_and_capture(args, progress: Progress | None = None) -> tuple[LoadedModel, Graph]:
    progress = progress or progress_from(args)
    with progress.step(f"loading {args.model}"):
        loaded = load_spec(args.model, overrides=parse_overrides(args.overrides), batch=args.batch,
                           seq=args.seq, image_size=args.image_size, seed=args.seed)
    with progress.step(f"capturing {args.model}"):
        graph = capture(loaded.model, loaded.inputs, loaded.kwargs or None, mode=args.capture,
                        name=args.model)
    return loaded, graph


def print_json(data) -> None:
    """``--format json``: the report on stdout, one JSON document, for scripts."""
    import json
    import sys
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")
