"""The op table: everything graphopt knows about one ATen op, in one entry.

The cost model, fusion, the row-wise rules of the partitioner, rematerialization and liveness all
ask questions about ops: what family is it, how many FLOPs, may a fused kernel compute it and
how, which dimension of its arguments carries its output rows, may it be rerun, does its result
alias its input. The answers live here, one :class:`Op` per overload packet (``"mm"``,
``"add"``, ``"_softmax"``), so teaching graphopt a new op is one entry in
:mod:`graphopt.op_entries`. Consumers keep their own logic (the FLOP formulas in
:mod:`graphopt.cost`, the Triton emitters in :mod:`graphopt.fusion.ops`, the row rules in
:mod:`graphopt.partition.rowwise`) and read the entry to pick it.

Two kinds of lookup, because the consumers have always differed:

* :func:`lookup` (cost facts: class, FLOPs, effect, aliasing) follows the name: an op of another
  namespace without an entry of its own is costed like the ATen op of the same name
  (``mylib::mm`` is a matmul).
* fusion and row rules (:func:`fusion_spec`, :func:`row_rule`) need the exact op and overload:
  ``aten.sum.dim_IntList`` fuses, ``aten.sum.dim_DimnameList`` does not.

Ops without an entry fall back on torch's tags (``torch.Tag.pointwise``,
``torch.Tag.nondeterministic_seeded``) where the consumers did before.

Example:
    >>> lookup(torch.ops.aten.gelu.default).flops
    8
    >>> fusion_spec("add.Tensor").expr
    '({0} + {1})'
    >>> row_rule(torch.ops.aten.layer_norm.default)
    Rows(kind='leading', params=(('trailing_shape_arg', 1),))
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch

__all__ = ["OpClass", "FusionKind", "Effect", "Op", "Pointwise", "Reduce", "Constant", "Reindex",
           "Rows", "rows", "op_name", "overload_key", "lookup", "fusion_spec", "fusion_keys",
           "row_rule", "effect", "node_effect", "aliases", "register", "unregister", "entries"]


class OpClass:
    """Coarse families the passes reason about (fusion legality, recompute cost, views)."""

    PLACEHOLDER = "placeholder"
    PARAM = "param"
    ELEMENTWISE = "elementwise"
    REDUCTION = "reduction"
    INJECTIVE = "injective"   # views, reshapes, permutes, slicing, cat, gathers
    VIEW = "view"              # aliasing: no new memory
    MATMUL = "matmul"
    CONV = "conv"
    ATTENTION = "attention"
    NORM = "norm"              # composite normalisations (reduction + pointwise)
    RANDOM = "random"
    CREATION = "creation"      # arange, zeros, full: no tensor inputs
    OPAQUE = "opaque"          # anything else: stays in ATen, costed by bytes only


class FusionKind:
    """What fusion may do with an op (see :mod:`graphopt.fusion.ops`)."""

    POINTWISE = "pointwise"
    VIEW = "view"
    BROADCAST = "broadcast"
    REDUCTION = "reduction"
    INJECTIVE = "injective"
    OPAQUE = "opaque"
    INPUT = "input"  # placeholders and parameters


class Effect:
    """Whether rerunning an op gives the same result and leaves the world as it was."""

    PURE = "pure"
    RANDOM = "random"      # draws random numbers: a rerun draws different ones
    MUTATING = "mutating"  # writes one of its inputs


# --------------------------------------------------------------------------------------------
# How a fused kernel computes an op (one of these per fusible overload)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pointwise:
    """A pointwise overload as a Triton expression (read by :mod:`graphopt.fusion.ops`).

    Attributes:
        types: one letter per value operand (the leading positional arguments) saying what it
            is cast to first: ``o`` the output's compute type, ``p`` the type both operands
            promote to (comparisons), ``b`` bool, ``r`` left as it is.
        expr: the expression, ``{0}``, ``{1}``... standing for the operands.
        emitter: instead of ``expr``, the name of an emitter in ``graphopt.fusion.ops`` for
            expressions that depend on an attribute's value (``pow``'s exponent, ``clamp``).
        alpha: the operand the ``alpha`` keyword multiplies (``add``, ``sub``, ``rsub``).
        attrs: names of the positional attributes after the operands, in order.
        calls: module-level jit functions of the kernel source the expression calls
            (``_tanh``).
        check: name of an extra legality test in ``graphopt.fusion.ops`` (a cast must not
            change device, ``floor`` only on floats).
    """

    types: str
    expr: str = ""
    emitter: str = ""
    alpha: int | None = None
    attrs: tuple = ()
    calls: tuple = ()
    check: str = ""
    kind = FusionKind.POINTWISE


@dataclass(frozen=True)
class Reduce:
    """A reduction overload: which Triton combine it is and where its dims are."""

    combine: str               # "sum" | "max" | "min"
    dims_arg: int | None       # positional index of the dim list (None: all dims)
    keepdim_arg: int | None
    kind = FusionKind.REDUCTION


@dataclass(frozen=True)
class Constant:
    """A creation op filling a tensor with one Python scalar: inside a kernel, a literal."""

    value_arg: int             # positional index of the value (else the ``fill_value`` keyword)
    kind = FusionKind.POINTWISE


@dataclass(frozen=True)
class Reindex:
    """Computes nothing inside a kernel, only changes which element an index reads: a reshape
    that keeps row-major order, or (``broadcast``) a read of one element at many indices."""

    broadcast: bool = False

    @property
    def kind(self) -> str:
        return FusionKind.BROADCAST if self.broadcast else FusionKind.VIEW


# --------------------------------------------------------------------------------------------
# Row-wise rules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """A row-wise rule: a rule kind of :mod:`graphopt.partition.rowwise` and its parameters
    (argument positions, mostly). Build it with :func:`rows`."""

    kind: str
    params: tuple = ()

    def get(self, name: str, default=None):
        return dict(self.params).get(name, default)


def rows(kind: str, **params) -> Rows:
    """``rows("reduce", dims_arg=1, keepdim_arg=2)``."""
    return Rows(kind, tuple(sorted(params.items())))


# --------------------------------------------------------------------------------------------
# The entry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """Everything graphopt knows about one op (an overload packet).

    Attributes:
        name: the packet name (``"mm"``); ops outside ATen are ``"namespace::name"``.
        cls: its :class:`OpClass`; ``None`` leaves it to torch's tags, overload by overload
            (ELEMENTWISE where tagged pointwise, else OPAQUE: ``add.Tensor`` is arithmetic, the
            symbolic ``add.int`` is not).
        flops: an int is the FLOPs per element (of the output for ELEMENTWISE, of the input for
            REDUCTION and NORM; defaults 1, 1 and 8); a str names a formula of
            :mod:`graphopt.cost` (matmul, convolution and attention shapes).
        effect: an :class:`Effect`. Mutation is also read off the schema for ops without one.
        fuse: overload name -> how a fused kernel computes it (:class:`Pointwise`,
            :class:`Reduce`, :class:`Constant`, :class:`Reindex`). Overloads left out stay in
            ATen.
        rows: overload name -> its row-wise :class:`Rows` rule. Overloads left out are row-wise
            only if torch tags them pointwise.
        draws_with: for an op that draws only with a probability argument (attention's
            ``dropout_p``), that argument's name: a call with it 0 draws nothing, so
            :func:`node_effect` calls it pure (recomputable).
        backward: its backward's cost over its forward's (time and FLOPs) when its output
            needs a gradient; ``None`` takes its class's :data:`BACKWARD_FACTOR`.
    """

    name: str
    cls: str | None = None
    flops: int | str | None = None
    effect: str = Effect.PURE
    fuse: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    draws_with: str | None = None
    backward: float | None = None

    @property
    def aliases(self) -> bool:
        """Its result shares storage with its first input (a view)."""
        return self.cls == OpClass.VIEW


#: Backward cost over forward cost per op class, for a node whose output needs a gradient
#: (an entry's ``backward`` overrides it). Matmul and convolution are ``None``: one matmul of
#: the same size per operand that needs a gradient (dX, dW), counted on the node
#: (:func:`graphopt.costmodel.backward.backward_factors`). Attention: four matmuls for two
#: forward ones plus the softmax again; normalisation: the mean and variance terms of the input
#: gradient and the affine ones; pointwise, reductions, gathers: one pass of the same size;
#: views, creation, constants: nothing to differentiate.
BACKWARD_FACTOR = {OpClass.ATTENTION: 2.5, OpClass.NORM: 2.0, OpClass.ELEMENTWISE: 1.0,
                   OpClass.REDUCTION: 1.0, OpClass.INJECTIVE: 1.0, OpClass.RANDOM: 1.0,
                   OpClass.OPAQUE: 1.0, OpClass.MATMUL: None, OpClass.CONV: None}


def backward_factor(target, cls: str) -> float | None:
    """The backward factor of an op of class ``cls``: its entry's, else its class's (None for
    matmul and convolution, whose factor is their differentiable operands; 0 for classes with
    no backward)."""
    entry = lookup(target) if not isinstance(target, str) else _entries().get(target)
    if entry is not None and entry.backward is not None:
        return entry.backward
    return BACKWARD_FACTOR.get(cls, 0.0)


_table: dict[str, Op] | None = None


def _entries() -> dict[str, Op]:
    # Built on first use: the data module imports the vocabulary above.
    global _table
    if _table is None:
        from graphopt.op_entries import ENTRIES
        table: dict[str, Op] = {}
        for op in ENTRIES:
            if op.name in table:
                raise ValueError(f"op table: two entries for {op.name!r}")
            table[op.name] = op
        _table = table
    return _table


def entries() -> list[Op]:
    """Every entry, in the order they were written."""
    return list(_entries().values())


def register(op: Op, *, replace: bool = False) -> Op:
    """Add an entry (for a custom op registered with torch, say); returns it."""
    table = _entries()
    if op.name in table and not replace:
        raise ValueError(f"op table: {op.name!r} already has an entry; pass replace=True")
    table[op.name] = op
    _found.clear()
    return op


def unregister(name: str) -> Op | None:
    """Remove an entry added by :func:`register`; returns it (None if there was none)."""
    _found.clear()
    return _entries().pop(name, None)


# --------------------------------------------------------------------------------------------
# Lookups
# --------------------------------------------------------------------------------------------
def op_name(target) -> str:
    """The overload packet name of an ATen target (``aten.add.Tensor`` -> ``add``)."""
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__
    return getattr(target, "__name__", str(target))


def _namespace(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return target.namespace
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::", 1)[0]
    return ""


def _exact_name(target) -> str:
    ns, name = _namespace(target), op_name(target)
    return name if ns in ("aten", "") else f"{ns}::{name}"


def overload_key(target) -> str:
    """``aten.add.Tensor`` -> ``"add.Tensor"``; other namespaces keep theirs
    (``"mylib::scale.default"``); targets that are not ops give ``""``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{_exact_name(target)}.{target._overloadname}"
    return ""


# Answers already worked out, by target (or overload key): every pass asks about every node,
# often more than once. Cleared whenever the table changes.
_found: dict = {}


def _remember(kind: str, target, compute):
    try:
        return _found[kind, target]
    except KeyError:
        value = _found[kind, target] = compute(target)
        return value
    except TypeError:  # an unhashable target
        return compute(target)


def _lookup(target) -> Op | None:
    table = _entries()
    entry = table.get(_exact_name(target))
    return entry if entry is not None else table.get(op_name(target))


def lookup(target) -> Op | None:
    """The entry that holds the cost facts of ``target`` (an op, packet or callable): its own,
    else its ATen namesake's."""
    return _remember("lookup", target, _lookup)


def _split_key(key: str) -> tuple[Op | None, str]:
    name, _, overload = key.rpartition(".")
    return (_entries().get(name) if name else None), overload


def _exact(target_or_key) -> tuple[Op | None, str]:
    key = target_or_key if isinstance(target_or_key, str) else overload_key(target_or_key)
    return _split_key(key)


def fusion_spec(target_or_key):
    """How a fused kernel computes this exact overload (an op or an :func:`overload_key`),
    or None when it stays in ATen."""
    entry, overload = _remember("exact", target_or_key, _exact)
    return entry.fuse.get(overload) if entry is not None else None


def fusion_keys() -> list[str]:
    """The :func:`overload_key` of every fusible overload in the table."""
    return [f"{op.name}.{o}" for op in _entries().values() for o in op.fuse]


def row_rule(target) -> Rows | None:
    """The row-wise rule the table gives this exact overload (tags are the caller's fallback)."""
    if target is operator.getitem:      # fx's tuple indexing: its entry's one rule
        entry = lookup(target)
        return entry.rows.get("default") if entry is not None else None
    if not isinstance(target, torch._ops.OpOverload):
        return None
    entry, overload = _remember("exact", target, _exact)
    return entry.rows.get(overload) if entry is not None else None


def effect(target) -> str:
    """:class:`Effect` of a target: the table's, else RANDOM where torch tags it
    ``nondeterministic_seeded``, else MUTATING where its schema writes an input.

    Randomness comes first: an op that draws must never be rerun or cut into blocks, whatever
    else it does (``bernoulli_`` both draws and writes)."""
    entry = lookup(target)
    if entry is not None and entry.effect != Effect.PURE:
        return entry.effect
    if isinstance(target, torch._ops.OpOverload):
        if torch.Tag.nondeterministic_seeded in target.tags:
            return Effect.RANDOM
        if target._schema.is_mutable:
            return Effect.MUTATING
    return Effect.PURE


def node_effect(node) -> str:
    """:func:`effect` of one call: an op that draws only with a probability argument
    (:attr:`Op.draws_with`) is pure where the call passes 0 for it (attention without dropout,
    as every evaluation and most training configs of today's LMs run it)."""
    target = node.target
    found = effect(target)
    entry = lookup(target)
    if found != Effect.RANDOM or entry is None or entry.draws_with is None or \
            not isinstance(target, torch._ops.OpOverload):
        return found
    names = [a.name for a in target._schema.arguments]
    if entry.draws_with not in names:
        return found
    i = names.index(entry.draws_with)
    if entry.draws_with in node.kwargs:
        value = node.kwargs[entry.draws_with]
    elif i < len(node.args):
        value = node.args[i]
    else:
        value = target._schema.arguments[i].default_value
    return Effect.PURE if isinstance(value, (int, float)) and value == 0 else found


def aliases(target) -> bool:
    """True if the target's result is a view of its input (``getitem`` of a tuple counts)."""
    entry = lookup(target)
    return entry is not None and entry.aliases
