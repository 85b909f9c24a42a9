"""The pass interface, its context and instruments, the registry, and the pass manager.

A pass is any callable ``(graph, ctx) -> PassResult``. Passes never print or write files: the
context's instruments do (timing, per-pass dumps), so a pass stays a pure graph transformation
that tests can call directly. The manager checks the graph's invariants after every pass and
names the failing pass, and the passes that ran before it, in any error.

Each pass declares, when it is registered, its options (a dataclass, see
:mod:`graphopt.passes.options`) and what it needs and makes: context artifacts such as
``"fusion"`` (the plan ``fuse_ops`` leaves for ``outline_groups``). Before running a list the
manager checks that every need is met by the context or by an earlier pass of the list, so a
missing step is an error naming the pass that makes what is missing, not a silent no-op.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphopt.errors import GraphoptError
from graphopt.graph import Graph
from graphopt.passes.options import OptionError, build_options, validate_options

if TYPE_CHECKING:
    from graphopt.costmodel import CostModel

__all__ = ["PassResult", "PassContext", "PassRecord", "PassInfo", "Instrument", "TimingInstrument",
           "DumpInstrument", "LogInstrument", "debug_level", "PassManager", "PassError",
           "OptionError", "register_pass", "get_pass", "PASSES", "check_invariants"]


@dataclass
class PassResult:
    """What a pass hands back: the (possibly new) graph, whether it changed, and its numbers."""

    graph: Graph
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassInfo:
    """What a pass declares: its options class, the artifacts it needs and those it makes."""

    name: str
    options: type | None = None
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()


@dataclass
class PassRecord:
    """Provenance of one pass run: kept on the context so reports can show the whole history."""

    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    modified: bool
    stats: dict[str, Any]


class Instrument:
    """Hooks around every pass; subclass and override what you need."""

    def before_pass(self, name: str, graph: Graph, ctx: PassContext) -> None: ...

    def after_pass(self, name: str, result: PassResult, record: PassRecord,
                   ctx: PassContext) -> None: ...


class TimingInstrument(Instrument):
    """Collects seconds per pass name (summed over repeated runs)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def after_pass(self, name, result, record, ctx) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + record.seconds


class DumpInstrument(Instrument):
    """Writes each pass's output graph as ``NN_<pass>.json`` and ``.dot`` into a directory
    (``.py`` with the fx code too at ``GRAPHOPT_DEBUG=3``)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.count = 0

    def before_pass(self, name, graph, ctx) -> None:
        if self.count == 0:
            self._dump("input", graph)

    def after_pass(self, name, result, record, ctx) -> None:
        self._dump(name, result.graph)

    def _dump(self, name: str, graph: Graph) -> None:
        from graphopt.export import to_dot, write_json
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = self.directory / f"{self.count:02d}_{name}"
        write_json(graph, stem.with_suffix(".json"))
        stem.with_suffix(".dot").write_text(to_dot(graph))
        if debug_level() >= 3:
            stem.with_suffix(".py").write_text(graph.gm.code)
        self.count += 1


class LogInstrument(Instrument):
    """Logs each pass (name, seconds, nodes before -> after, stats) to the ``graphopt`` logger."""

    def __init__(self, level: int = logging.INFO) -> None:
        self.level = level
        self.log = logging.getLogger("graphopt.passes")

    def after_pass(self, name, result, record, ctx) -> None:
        self.log.log(self.level, "%-22s %8.2f ms  nodes %d -> %d  %s", name, record.seconds * 1e3,
                     record.nodes_before, record.nodes_after, record.stats)


def debug_level() -> int:
    """``GRAPHOPT_DEBUG``: 0 silent, 1 pass log, 2 plus graph dumps, 3 plus fx code in dumps."""
    try:
        return int(os.environ.get("GRAPHOPT_DEBUG", "0"))
    except ValueError:
        return 0


_dump_ids = itertools.count()


def _debug_log_handler(level: int) -> None:
    """Show the ``graphopt`` logger on stderr, once per process, unless the application has
    configured logging itself (then its handlers get the records); the root logger is left alone."""
    log = logging.getLogger("graphopt")
    log.setLevel(logging.DEBUG if level >= 3 else logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("graphopt: %(message)s"))
        log.addHandler(handler)


def _env_instruments() -> list:
    """The instruments ``GRAPHOPT_DEBUG`` and ``GRAPHOPT_DUMP_DIR`` ask for."""
    level = debug_level()
    out: list[Instrument] = []
    if level >= 1:
        _debug_log_handler(level)
        out.append(LogInstrument())
    dump = os.environ.get("GRAPHOPT_DUMP_DIR") or ("graphopt_dump" if level >= 2 else None)
    if dump:  # one sub-directory per context, so graphs of one run never overwrite another's
        out.append(DumpInstrument(os.path.join(dump, f"{next(_dump_ids):03d}")))
    return out


@dataclass
class PassContext:
    """Everything a pass may consult besides the graph: options, seed, device, instruments.

    ``device`` is what the passes that price nodes (partitioning, remat, fusion) price them for:
    a :class:`graphopt.costmodel.CostModel` value (what the CLI builds from ``--device`` or
    ``--device-spec`` and hands down), or a preset's name (``"h100"``, ``"cpu"``), which those
    passes turn into one.

    ``options`` is one flat dict for every pass of a run; it is validated when the context is
    built (an unknown key or a value of the wrong type raises :class:`OptionError` naming the
    pass and its keys), and a pass reads its own typed view with :meth:`options_for`.

    Example:
        >>> ctx = PassContext(options={"k": 4}, seed=0, instruments=[TimingInstrument()])
        >>> graph = PassManager(["eliminate_dead_code"]).run(graph, ctx)
    """

    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: CostModel | str = "h100"     # a cost model, or a preset's name (see above)
    instruments: list[Instrument] = field(default_factory=_env_instruments)
    disabled: set[str] = field(default_factory=set)
    history: list[PassRecord] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)  # plans passes hand to later stages

    def __post_init__(self) -> None:
        validate_options(self.options)

    def options_for(self, pass_name: str):
        """The options of ``pass_name`` as its dataclass (defaults where a key is absent)."""
        info = get_pass(pass_name).pass_info
        if info.options is None:
            raise PassError(f"pass {pass_name!r} takes no options")
        return build_options(info.options, self.options)

    def option(self, key: str, default=None):
        """One raw option value (prefer :meth:`options_for`, which is typed)."""
        value = self.options.get(key)
        return default if value is None else value

    def set_options(self, **options) -> None:
        """Add options after construction (validated like those given to the constructor)."""
        validate_options(options)
        self.options.update(options)

    def artifact(self, key: str, pass_name: str):
        """The artifact a pass needs; its absence names the pass that makes it."""
        try:
            return self.artifacts[key]
        except KeyError:
            raise PassError(f"pass {pass_name!r} needs the {key!r} artifact, made by "
                            f"{_maker(key)}; run that pass first") from None


class PassError(GraphoptError):
    """A pass failed or broke an invariant; the message names it and the passes before it."""


PASSES: dict[str, Callable[..., PassResult]] = {}


def register_pass(name: str, *, options: type | None = None, needs: tuple[str, ...] = (),
                  makes: tuple[str, ...] = ()):
    """Register a pass under a name the pipeline, CLI and backend select by.

    Args:
        options: the dataclass of option keys the pass reads (see :meth:`PassContext.options_for`).
        needs: context artifacts that must exist before it runs.
        makes: context artifacts it leaves for later passes.
    """
    def deco(fn):
        if name in PASSES and PASSES[name] is not fn:
            raise ValueError(f"pass {name!r} registered twice")
        PASSES[name] = fn
        fn.pass_name = name
        fn.pass_info = PassInfo(name, options, tuple(needs), tuple(makes))
        return fn
    return deco


def _maker(artifact: str) -> str:
    makers = [n for n, fn in sorted(PASSES.items()) if artifact in fn.pass_info.makes]
    return " or ".join(repr(m) for m in makers) or "no registered pass"


def get_pass(name: str):
    import graphopt.passes  # noqa: F401 - importing registers every built-in pass
    try:
        return PASSES[name]
    except KeyError:
        raise PassError(f"unknown pass {name!r}; known: {', '.join(sorted(PASSES))}") from None


def check_invariants(graph: Graph) -> None:
    """Raise AssertionError if the graph is not well formed.

    Checked: fx's own lint (defs before uses, valid targets), one NodeInfo per node and no stale
    ones, and part annotations either all absent or all set on non-parameter nodes.
    """
    graph.gm.graph.lint()
    names = [n.name for n in graph.fx_nodes()]
    missing = [n for n in names if n not in graph.info]
    assert not missing, f"nodes without cost info: {missing[:5]}"
    stale = set(graph.info) - set(names)
    assert not stale, f"cost info for nodes no longer in the graph: {sorted(stale)[:5]}"
    parts = [i.part for i in graph.nodes() if not i.is_param]
    if any(p is not None for p in parts):
        assert all(p is not None and p >= 0 for p in parts), "some nodes have no part"


class PassManager:
    """Runs passes in order, optionally to a fixed point, checking invariants after each.

    Args:
        passes: pass names (looked up in the registry) or callables.
        check: run :func:`check_invariants` after every pass.
        fixed_point: repeat the whole list until no pass reports ``modified`` (at most
            ``max_iterations`` times).
    """

    def __init__(self, passes: list, *, check: bool = True, fixed_point: bool = False,
                 max_iterations: int = 10) -> None:
        self.passes = [(p, get_pass(p)) if isinstance(p, str) else
                       (getattr(p, "pass_name", getattr(p, "__name__", type(p).__name__)), p)
                       for p in passes]
        self.check = check
        self.fixed_point = fixed_point
        self.max_iterations = max_iterations

    def check_needs(self, ctx: PassContext) -> None:
        """Every pass's needs met by the context or an earlier pass of the list, else raise."""
        have = set(ctx.artifacts)
        for i, (name, fn) in enumerate(self.passes):
            if name in ctx.disabled:
                continue
            info = getattr(fn, "pass_info", None)
            if info is None:
                continue
            missing = [a for a in info.needs if a not in have]
            if missing:
                before = [n for n, _ in self.passes[:i]]
                raise PassError(
                    f"pass {name!r} needs the {missing[0]!r} artifact, made by "
                    f"{_maker(missing[0])}, but no earlier step makes it (steps: "
                    f"{', '.join(before) or 'none'}); add it before {name!r}")
            have.update(info.makes)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        ctx = ctx or PassContext()
        self.check_needs(ctx)
        for _ in range(self.max_iterations if self.fixed_point else 1):
            changed = False
            for name, fn in self.passes:
                if name in ctx.disabled:
                    continue
                graph, modified = self._run_one(name, fn, graph, ctx)
                changed |= modified
            if not changed:
                break
        return graph

    def _run_one(self, name, fn, graph: Graph, ctx: PassContext) -> tuple[Graph, bool]:
        before = [r.name for r in ctx.history]
        where = f"pass {name!r}" + (f" (after {', '.join(before)})" if before else "")
        for inst in ctx.instruments:
            inst.before_pass(name, graph, ctx)
        nodes_before = len(graph)
        start = time.perf_counter()
        try:
            result = fn(graph, ctx)
        except GraphoptError:
            raise
        except Exception as exc:
            raise PassError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        if not isinstance(result, PassResult):
            raise PassError(f"{where} returned {type(result).__name__}, not PassResult")
        if self.check:
            try:
                check_invariants(result.graph)
            except AssertionError as exc:
                raise PassError(f"{where} broke a graph invariant: {exc}") from exc
        record = PassRecord(name, seconds, nodes_before, len(result.graph), result.modified,
                            dict(result.stats))
        ctx.history.append(record)
        for inst in ctx.instruments:
            inst.after_pass(name, result, record, ctx)
        return result.graph, result.modified
