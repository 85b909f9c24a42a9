"""Typed pass options: each pass declares a dataclass of the keys it reads, checked up front.

A :class:`~graphopt.passes.infra.PassContext` takes one flat ``options`` dict (what the CLI and
the backend build), so a concept shared by passes (``k`` for both ``partition_graph`` and
``split_ops``) is one key. When the context is built every key is checked against the option
classes of the registered passes: a key no pass declares, or a value of the wrong type, is a
:class:`OptionError` that names the pass and its known keys, instead of being silently ignored
deep inside a run. A pass then reads ``ctx.options_for("name")``: an instance of its class.

Types understood: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``Literal[...]``,
``tuple[...]``/``list[...]`` (of the element type), ``X | None``, unions, and ``Any``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from graphopt.errors import GraphoptError

__all__ = ["OptionError", "check_value", "describe_type", "options_classes", "validate_options",
           "build_options"]


class OptionError(GraphoptError):
    """A pass option that no pass declares, or one of the wrong type."""


def _hints(cls) -> dict[str, Any]:
    cached = cls.__dict__.get("__graphopt_hints__")
    if cached is None:
        cached = typing.get_type_hints(cls)
        cls.__graphopt_hints__ = cached
    return cached


def describe_type(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args)
    if origin in (tuple, list):
        return f"a sequence of {describe_type(args[0])}" if args else "a sequence"
    return getattr(tp, "__name__", str(tp))


def check_value(value, tp) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the subset of typing options use)."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(check_value(value, a) for a in args)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        elem = args[0] if args else Any
        return all(check_value(v, elem) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def options_classes() -> dict[str, type]:
    """Pass name -> its options dataclass, for every registered pass that has options."""
    from graphopt.passes.infra import PASSES, get_pass
    get_pass("annotate_costs")  # importing graphopt.passes registers the built-in passes
    return {name: fn.pass_info.options for name, fn in sorted(PASSES.items())
            if getattr(fn, "pass_info", None) is not None and fn.pass_info.options is not None}


def _known(classes: dict[str, type]) -> str:
    return "; ".join(f"{name}: {', '.join(f.name for f in dataclasses.fields(cls))}"
                     for name, cls in classes.items())


def validate_options(options: dict[str, Any]) -> None:
    """Raise :class:`OptionError` for a key no pass declares or a value of the wrong type."""
    classes = options_classes()
    for key, value in options.items():
        owners = [(name, cls) for name, cls in classes.items()
                  if key in {f.name for f in dataclasses.fields(cls)}]
        if not owners:
            raise OptionError(f"unknown pass option {key!r}; known options by pass: "
                              f"{_known(classes)}")
        if value is None:
            continue   # None always means "the pass's default"
        for name, cls in owners:
            tp = _hints(cls)[key]
            if not check_value(value, tp):
                raise OptionError(f"pass {name!r}: option {key!r} must be {describe_type(tp)}, "
                                  f"got {type(value).__name__} {value!r}")


def build_options(cls: type, options: dict[str, Any]):
    """An instance of ``cls`` from the keys of ``options`` it declares (None = default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})
