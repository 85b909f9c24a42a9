"""graphopt's graph passes: one pass per module, each registered by name.

Every pass has the shape ``(graph, ctx) -> PassResult``; see :mod:`graphopt.passes.infra`.
"""
from graphopt.passes.infra import (PASSES, DumpInstrument, Instrument, LogInstrument, PassContext,
                                   PassError, PassManager, PassRecord, PassResult,
                                   TimingInstrument, check_invariants, debug_level, get_pass,
                                   register_pass)
from graphopt.passes.annotate_costs import annotate_costs
from graphopt.passes.eliminate_dead_code import eliminate_dead_code

__all__ = ["PASSES", "DumpInstrument", "Instrument", "LogInstrument", "PassContext", "PassError",
           "PassManager", "PassRecord", "PassResult", "TimingInstrument", "check_invariants",
           "debug_level", "get_pass", "register_pass",
           # the passes
           "annotate_costs", "eliminate_dead_code"]
