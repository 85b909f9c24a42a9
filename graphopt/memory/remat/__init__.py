"""Rematerialization: the problem (:mod:`.problem`), built from a joint graph (:mod:`.build`),
started from the free pointwise recomputations (:mod:`.baseline`), solved exactly (:mod:`.milp`,
HiGHS) or fast (:mod:`.greedy`) with the policy for budgets below the minimum (:mod:`.solve`),
written back (:mod:`.rewrite`)."""
