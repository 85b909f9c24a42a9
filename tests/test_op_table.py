"""The op table: its entries agree with each other and with torch, and one new entry is all the
cost model, fusion (down to a generated kernel), the row-wise rules and remat need to know an op.
"""
import inspect
import operator
import string

import pytest
import torch
from checks import max_rel_err
from torch import library
from torch.fx.experimental.proxy_tensor import make_fx

from graphopt import op_table
from graphopt.capture import graph_from_fx
from graphopt.cost import FORMULAS, node_flops, op_class
from graphopt.fusion import ops as fusion_ops
from graphopt.fusion.ops import FusionKind, fusion_kind
from graphopt.kernels import bind_kernels
from graphopt.memory.remat.build import is_recomputable
from graphopt.op_table import Effect, Op, OpClass, Pointwise, Reduce, Reindex, rows
from graphopt.partition.rowwise import ROW_RULES, label_region, row_args
from graphopt.pass_lists import FUSION, run_pipeline
from graphopt.passes import PassContext

ENTRIES = op_table.entries()
# Not ATen: Python's operator.getitem, fx's tuple indexing.
PYTHON_LEVEL = {"getitem"}


def _packet(name):
    ns, _, packet = name.rpartition("::")
    return getattr(getattr(torch.ops, ns or "aten"), packet)


def _overloads(op):
    if op.name in PYTHON_LEVEL:
        return []
    p = _packet(op.name)
    return [getattr(p, o) for o in p.overloads()]


def _can_be_captured(overload):
    """Composite-implicit overloads decompose during capture: no graph holds them."""
    return not torch._C._dispatch_has_kernel_for_dispatch_key(overload.name(),
                                                              "CompositeImplicitAutograd")


def test_every_entry_names_a_real_op_and_real_overloads():
    assert len({op.name for op in ENTRIES}) == len(ENTRIES)
    for op in ENTRIES:
        if op.name in PYTHON_LEVEL:
            continue
        known = set(_packet(op.name).overloads())
        assert set(op.fuse) <= known, op.name
        assert set(op.rows) <= known, op.name


def test_classes_formulas_and_weights_agree():
    classes = {v for k, v in vars(OpClass).items() if k.isupper()}
    counted = (OpClass.MATMUL, OpClass.CONV, OpClass.ATTENTION)
    for op in ENTRIES:
        assert op.cls is None or op.cls in classes, op.name
        if op.cls in counted:
            assert isinstance(op.flops, str) and op.flops in FORMULAS, op.name
        elif op.flops is not None:
            assert isinstance(op.flops, int) and op.flops > 0, op.name
            assert op.cls in (None, OpClass.REDUCTION, OpClass.NORM), op.name
    used = {op.flops for op in ENTRIES if isinstance(op.flops, str)}
    assert used == set(FORMULAS), "every formula is used, and only formulas that exist"


def test_effects_agree_with_torch():
    for op in ENTRIES:
        overloads = _overloads(op)
        if op.cls == OpClass.RANDOM:
            assert op.effect == Effect.RANDOM, op.name
        if any(torch.Tag.nondeterministic_seeded in o.tags for o in overloads):
            assert op.effect == Effect.RANDOM, op.name
        if op.effect == Effect.MUTATING:
            assert overloads and all(o._schema.is_mutable for o in overloads), op.name
        if op.effect != Effect.PURE:
            assert not op.fuse, f"{op.name}: a kernel cannot rerun what draws or writes"


def test_pointwise_tagged_ops_are_costed_and_cut_as_pointwise():
    """Torch's pointwise tag and the table agree: arithmetic (or a copy), row-wise as pointwise."""
    checked = 0
    for op in ENTRIES:
        for o in _overloads(op):
            if torch.Tag.pointwise not in o.tags or not _can_be_captured(o):
                continue
            checked += 1
            assert op_class(o) in (OpClass.ELEMENTWISE, OpClass.INJECTIVE), o
            rule = op_table.row_rule(o)
            assert rule is None or rule.kind in ("pointwise", "dropout"), o
    assert checked > 50


def test_fusion_specs_agree_with_the_rest_of_the_entry():
    for op in ENTRIES:
        for overload, spec in op.fuse.items():
            key = f"{op.name}.{overload}"
            target = getattr(_packet(op.name), overload)
            assert op_table.overload_key(target) == key
            if isinstance(spec, Pointwise):
                assert op_table.effect(target) == Effect.PURE and not op.aliases, key
                rule = fusion_ops.POINTWISE[key]
                if spec.expr:
                    fields = {f for _, f, _, _ in string.Formatter().parse(spec.expr) if f}
                    assert fields == {str(i) for i in range(rule.operands)}, key
                assert set(spec.types) <= set("opbr"), key
            elif isinstance(spec, Reindex):
                assert spec.broadcast or op.aliases, key
            elif isinstance(spec, Reduce):
                assert op.cls == OpClass.REDUCTION and spec.combine in ("sum", "max", "min"), key
            else:
                assert op.cls == OpClass.CREATION, key
    specs = [s for op in ENTRIES for s in op.fuse.values() if isinstance(s, Pointwise)]
    assert {s.emitter for s in specs if s.emitter} == set(fusion_ops.EMITTERS)
    assert {s.check for s in specs if s.check} == set(fusion_ops.CHECKS)


def test_row_rules_name_real_kinds_with_the_parameters_they_take():
    used = set()
    for op in ENTRIES:
        for overload, rule in op.rows.items():
            used.add(rule.kind)
            fn = ROW_RULES[rule.kind]
            inspect.signature(fn).bind(None, None, None, 0, **dict(rule.params))
            target = operator.getitem if op.name == "getitem" else \
                getattr(_packet(op.name), overload)
            assert op_class(target) != OpClass.OPAQUE, f"{op.name}.{overload} has no cost class"
    assert used == set(ROW_RULES), "every rule kind is used by some entry"


def test_views_alias_and_nothing_else_does():
    for op in ENTRIES:
        assert op.aliases == (op.cls == OpClass.VIEW)
    assert op_table.aliases(torch.ops.aten.view.default)
    assert op_table.aliases(torch.ops.aten.transpose.int)
    assert not op_table.aliases(torch.ops.aten.clone.default)
    assert not op_table.aliases(torch.ops.aten.lift_fresh_copy.default)


# --------------------------------------------------------------------------------------------
# One new entry, and every consumer knows the op
# --------------------------------------------------------------------------------------------
@library.custom_op("graphopt_table_test::half_square_plus", mutates_args=())
def half_square_plus(x: torch.Tensor) -> torch.Tensor:
    return x * x * 0.5 + x


@half_square_plus.register_fake
def _(x):
    return torch.empty_like(x)


NEW_OP = torch.ops.graphopt_table_test.half_square_plus.default
NEW_ENTRY = Op("graphopt_table_test::half_square_plus", OpClass.ELEMENTWISE, flops=3,
               fuse={"default": Pointwise("o", "({0} * {0} * 0.5 + {0})")},
               rows={"default": rows("pointwise")})


def _uses_new_op(x, w):
    return torch.ops.graphopt_table_test.half_square_plus(torch.relu(x @ w) * 2.0) - x


def _graph():
    examples = (torch.randn(6, 5), torch.randn(5, 5))
    gm = make_fx(_uses_new_op, tracing_mode="fake")(*examples)
    graph = graph_from_fx(gm, name="uses_new_op")
    node = next(n for n in graph.fx_nodes() if n.target is NEW_OP)
    return graph, node


@pytest.fixture
def new_entry():
    op_table.register(NEW_ENTRY)
    yield NEW_ENTRY
    op_table.unregister(NEW_ENTRY.name)


def test_an_op_without_an_entry_is_opaque_everywhere():
    graph, node = _graph()
    assert op_class(NEW_OP) == OpClass.OPAQUE
    assert graph.info[node.name].flops == 0
    assert fusion_kind(node) == FusionKind.OPAQUE
    assert fusion_ops.not_fusible_reason(node) == "no_rule"
    assert row_args(node, 0) is None


def test_one_entry_teaches_cost_fusion_rows_and_remat(new_entry):
    graph, node = _graph()
    out = node.meta["val"]
    assert op_class(NEW_OP) == OpClass.ELEMENTWISE
    assert node_flops(NEW_OP, [out], {}, out) == 3 * out.numel() == graph.info[node.name].flops
    assert fusion_kind(node) == FusionKind.POINTWISE
    assert fusion_ops.not_fusible_reason(node) is None
    assert "graphopt_table_test::half_square_plus.default" in fusion_ops.POINTWISE
    assert row_args(node, 0) == {0: 0} and row_args(node, 1) == {0: 1}
    assert is_recomputable(node)
    # the row-wise labelling runs through it: matmul rows -> relu -> mul -> new op -> sub
    nodes = [n for n in graph.fx_nodes() if n.op == "call_function"]
    region = label_region(nodes, node, 0)
    assert region is not None and all(region.dims[n.name] == 0 for n in nodes)


def test_one_entry_is_enough_for_a_generated_kernel(new_entry, tmp_path, monkeypatch):
    # A fresh kernel cache: a cached kernel's name does not say which expression it was made
    # from, so another run's kernel for this op could be picked up.
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    graph, node = _graph()
    target_of = {n.name: n.target for n in graph.fx_nodes()}
    ctx = PassContext()
    graph = run_pipeline(graph, FUSION, ctx)
    plan = ctx.artifacts["fusion"]
    group = next(g for g in plan.groups if node.name in g.nodes)
    members = {target_of[name] for name in group.nodes}
    aten = torch.ops.aten
    assert members == {aten.relu.default, aten.mul.Tensor, NEW_OP, aten.sub.Tensor}
    bind_kernels(graph, plan, "interpret")
    for _ in range(3):   # fresh random inputs, checked against eager
        x, w = torch.randn(6, 5), torch.randn(5, 5)
        x[0, 0] = float("nan")
        (got,) = graph.run(x, w)
        want = _uses_new_op(x, w)
        assert torch.isnan(got[0, 0]) and max_rel_err(got[1:], want[1:]) < 1e-5
    kernel = getattr(graph.gm, group.name)
    assert any(k is not None for k in kernel._kernels.values()), "ran as a generated kernel"


def test_register_refuses_a_second_entry_silently(new_entry):
    with pytest.raises(ValueError, match="already has an entry"):
        op_table.register(Op(NEW_ENTRY.name, OpClass.OPAQUE))
    op_table.register(NEW_ENTRY, replace=True)


@pytest.mark.parametrize("target", [torch.ops.aten.scaled_dot_product_attention.default,
                                    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default])
@pytest.mark.parametrize("dropout, pure", [(None, True), (0.0, True), (0.1, False)])
def test_attention_without_dropout_is_pure_and_recomputable(target, dropout, pure):
    """Attention draws only through its dropout probability: at 0 (or left at its default) a
    rerun gives the same result, so remat may recompute it (an LM's attention output need not
    be saved)."""
    g = torch.fx.Graph()
    q, k, v = (g.placeholder(n) for n in "qkv")
    kwargs = {} if dropout is None else {"dropout_p": dropout}
    node = g.call_function(target, (q, k, v), kwargs)
    assert op_table.effect(target) == Effect.RANDOM
    assert op_table.node_effect(node) == (Effect.PURE if pure else Effect.RANDOM)
    assert is_recomputable(node) is pure
    positional = g.call_function(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
                                 (q, k, v, 0.0 if pure else 0.1))
    assert is_recomputable(positional) is pure


def test_attention_without_dropout_reruns_bit_for_bit():
    q, k, v = (torch.randn(2, 4, 8, 16) for _ in range(3))
    run = lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(  # noqa: E731
        q, k, v, 0.0, is_causal=True)[0]
    assert torch.equal(run(), run())
