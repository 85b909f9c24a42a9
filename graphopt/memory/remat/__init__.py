"""Rematerialization: the problem (:mod:`.problem`), built from a joint graph (:mod:`.build`),
solved exactly (:mod:`.milp`, HiGHS) or fast (:mod:`.greedy`), written back (:mod:`.rewrite`)."""
