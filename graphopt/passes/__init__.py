"""graphopt's graph passes: one pass per module, each registered by name.

Every pass has the shape ``(graph, ctx) -> PassResult``; see :mod:`graphopt.passes.infra`.
"""
from graphopt.passes.annotate_costs import annotate_costs
from graphopt.passes.decompose_ops import decompose_ops
from graphopt.passes.eliminate_dead_code import eliminate_dead_code
from graphopt.passes.fuse_ops import fuse_ops
from graphopt.passes.infra import (
                                   PASSES,
                                   DumpInstrument,
                                   Instrument,
                                   LogInstrument,
                                   OptionError,
                                   PassContext,
                                   PassError,
                                   PassInfo,
                                   PassManager,
                                   PassRecord,
                                   PassResult,
                                   TimingInstrument,
                                   check_invariants,
                                   debug_level,
                                   get_pass,
                                   register_pass,
)
from graphopt.passes.outline_groups import outline_groups
from graphopt.passes.partition_graph import partition_graph
from graphopt.passes.plan_memory import plan_memory
from graphopt.passes.rematerialize import rematerialize
from graphopt.passes.split_ops import split_ops

__all__ = ["PASSES", "DumpInstrument", "Instrument", "LogInstrument", "OptionError", "PassContext",
           "PassError", "PassInfo",
           "PassManager", "PassRecord", "PassResult", "TimingInstrument", "check_invariants",
           "debug_level", "get_pass", "register_pass",
           # the passes
           "annotate_costs", "decompose_ops", "eliminate_dead_code", "fuse_ops", "outline_groups",
           "partition_graph", "plan_memory", "rematerialize", "split_ops"]
