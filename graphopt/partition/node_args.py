"""Reading and writing an fx node's arguments, as the row-wise rules and the cut rewrite need.

An argument is addressed by its index, or by ``(argument, position)`` for an element of a list
argument (``cat``'s tensors); :data:`SHAPE_ARG` holds the overloads whose argument 1 is the
output shape (read live from the op table's row rules).
"""
from __future__ import annotations

from collections.abc import Set

import torch
import torch.fx

from graphopt import op_table

__all__ = ["SHAPE_ARG", "get_arg", "set_arg", "node_value", "tensor_args", "rows_shape"]


class _ShapeArgOps(Set):
    """Overloads whose argument 1 names the output shape (their row rule says
    ``out_shape_arg=1``): a block rewrites its row entry. Read from the op table live."""

    def __contains__(self, target):
        rule = op_table.row_rule(target)
        return rule is not None and rule.get("out_shape_arg") == 1

    def __iter__(self):
        for op in op_table.entries():
            for overload, rule in op.rows.items():
                target = _resolve(op.name, overload)
                if rule.get("out_shape_arg") == 1 and target is not None:
                    yield target

    def __len__(self):
        return sum(1 for _ in self)


def _resolve(name: str, overload: str):
    ns, _, packet = name.rpartition("::")
    try:
        return getattr(getattr(getattr(torch.ops, ns or "aten"), packet), overload)
    except (AttributeError, RuntimeError):
        return None


SHAPE_ARG = _ShapeArgOps()


def node_value(a):
    return a.meta.get("val") if isinstance(a, torch.fx.Node) else None


def tensor_args(node: torch.fx.Node) -> list[tuple[int | tuple[int, int], torch.fx.Node]]:
    """``(index, node)`` of each tensor argument; an element of a list argument (``cat``'s
    tensors) is indexed ``(argument, position)``."""
    out = []
    for i, a in enumerate(node.args):
        if isinstance(a, (list, tuple)):
            out += [((i, k), x) for k, x in enumerate(a)
                    if isinstance(x, torch.fx.Node) and isinstance(node_value(x), torch.Tensor)]
        elif isinstance(a, torch.fx.Node) and rows_shape(node_value(a)) is not None:
            out.append((i, a))
    return out


def rows_shape(v) -> torch.Size | None:
    """The shape a value's rows are read from: a tensor's, or the common rank of a tuple of
    tensors (``split``'s pieces, which share every dim but the split one)."""
    if isinstance(v, torch.Tensor):
        return v.shape
    if isinstance(v, (list, tuple)) and v and all(isinstance(t, torch.Tensor) for t in v) and \
            len({t.dim() for t in v}) == 1:
        return v[0].shape
    return None


def get_arg(args, i):
    """Argument ``i`` of ``args``: an index, or ``(argument, position)`` inside a list."""
    return args[i[0]][i[1]] if isinstance(i, tuple) else args[i]


def set_arg(args: list, i, value) -> None:
    """Set argument ``i`` (as :func:`get_arg` reads it) in a mutable ``args`` list."""
    if isinstance(i, tuple):
        seq = list(args[i[0]])
        seq[i[1]] = value
        args[i[0]] = seq
    else:
        args[i] = value
