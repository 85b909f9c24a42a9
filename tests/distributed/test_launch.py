"""The launcher: results in rank order, and a failing rank stops every other one, named."""
import os
import time

import pytest
from train_models import job_for, prepared

from graphopt.distributed.trainer import run_job
from graphopt.launch import WorkerError, run_workers

pytestmark = pytest.mark.slow


def _fail_on_one(rank, world):
    import torch
    import torch.distributed as dist
    if rank == 1:
        raise ValueError("bad shard 7")
    dist.recv(torch.zeros(1), src=1)      # would wait forever for the failed rank


def test_a_raising_rank_is_named_and_the_others_stop():
    """Rank 0 waits on a receive from rank 1, which raises instead of sending. (That results
    come back in rank order, every training test checks.)"""
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_workers(_fail_on_one, 2, timeout_s=120)
    assert str(info.value) == "rank 1 failed: ValueError: bad shard 7"
    assert info.value.rank == 1 and "bad shard 7" in info.value.details
    assert time.monotonic() - start < 60


def test_a_rank_killed_mid_step_stops_the_job():
    """Rank 1 kills itself (SIGKILL) in the forward of micro-batch 1 of step 1."""
    job, _, _ = job_for(prepared("resmlp"), config={"pp": 2, "schedule": "1f1b",
                                                    "microbatches": 4, "timeout_s": 120})
    job.fault = (1, 1, "kill")
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        run_job(job)
    assert str(info.value) == "rank 1 was killed by SIGKILL"
    assert time.monotonic() - start < 90
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_rank(p)]


def _is_rank(pid: str) -> bool:
    """Whether a rank this test spawned is still alive (a child of ours started by spawn)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False
    return int(fields["PPid"]) == os.getpid() and "spawn_main" in cmd and \
        not fields["State"].strip().startswith("Z")
