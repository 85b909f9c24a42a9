"""Start ``world_size`` processes on this host, or join a job ``torchrun`` started, and fail fast.

Needs: a module-level ``worker_fn(rank, world_size, *args)`` (spawned processes import it by
name) whose return value pickles. Guarantees: every rank runs inside an initialized default
process group (gloo on CPU, NCCL with one GPU per rank); :func:`run_workers` returns the ranks'
results in rank order, or raises :class:`WorkerError` with one line naming the rank that failed
first and its error, after every other rank has been stopped. Nothing waits forever: the process
group and the parent's watch both end at ``timeout_s``.

Why the parent watches: a rank that dies leaves its peers blocked in a receive that gloo may
only abandon at the process-group timeout. The parent polls every rank's exit code; on the first
failure it gives the others a moment to report (so the root cause, not a peer's "connection
closed", is named) and then terminates them. A rank killed by a signal is the root cause by
construction (no peer error kills a process by signal); otherwise the earliest error that is not
a communication error wins.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` set) :func:`join_torchrun` runs
the worker in this process and gathers the results on rank 0; a failing rank prints its one line
and exits 1, and torchrun's launcher stops the others.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["run_workers", "join_torchrun", "under_torchrun", "free_port", "WorkerError",
           "default_backend", "rank_threads"]

# Words in the errors a rank raises because a peer went away (not because of its own bug).
_PEER_ERRORS = ("connection closed", "connection reset", "broken pipe", "socket", "timed out",
                "timeout", "gloo", "nccl", "distbackenderror", "peer", "closed by", "aborted",
                "connection refused", "end of file", "eof")
_POLL_S = 0.05
_GRACE_S = 1.0   # how long the other ranks may take to report once one has failed


class WorkerError(RuntimeError):
    """A rank failed (raised, was killed, or the job timed out); the message is one line."""

    def __init__(self, message: str, rank: int | None = None, details: str = ""):
        super().__init__(message)
        self.rank = rank
        self.details = details    # the failing rank's traceback, when it reported one


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_backend(world_size: int) -> str:
    """NCCL when every rank can have its own GPU, else gloo."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def under_torchrun() -> bool:
    """Whether this process is one rank of a job an outside launcher (torchrun) started."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def _one_line(exc: BaseException) -> str:
    """``Type: message``, with the innermost cause appended (the engine wraps errors in
    ``RuntimeError('[Stage 0] failed to run forward ...')``)."""
    def words(e):
        return " ".join(str(e).split()) or type(e).__name__
    text = f"{type(exc).__name__}: {words(exc)[:200]}"
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    if root is not exc:
        text += f" (caused by {type(root).__name__}: {words(root)[:200]})"
    return text


def _init(rank: int, world: int, backend: str, timeout_s: float, init_method: str) -> None:
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank)) % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(local)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))


def _entry(rank: int, world: int, port: int, backend: str, timeout_s: float, threads: int,
           out_dir: str) -> None:
    """One spawned rank: load the work, init, run, write the result (or the error)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, threads))
    out = Path(out_dir)
    try:
        # unpickled here, not by multiprocessing, so a job that fails to load is reported too
        fn, args = torch.load(out / "work.pt", weights_only=False)
        _init(rank, world, backend, timeout_s, f"tcp://127.0.0.1:{port}")
        result = fn(rank, world, *args)
        torch.save(result, out / f"rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent as one line
        record = {"rank": rank, "error": _one_line(exc), "time": time.time(),
                  "traceback": traceback.format_exc()}
        (out / f"rank{rank}.err.tmp").write_text(json.dumps(record))
        os.replace(out / f"rank{rank}.err.tmp", out / f"rank{rank}.err")
        os._exit(1)   # no atexit handlers: a half-dead process group must not hang the exit
    os._exit(0)


def _is_peer_error(message: str) -> bool:
    low = message.lower()
    return any(word in low for word in _PEER_ERRORS)


def _root_cause(failed: dict[int, tuple[int, float]], out: Path) -> tuple[int, str, str]:
    """``(rank, description, traceback)`` of the failure that caused the others."""
    reports = {}
    for rank in failed:
        path = out / f"rank{rank}.err"
        if path.exists():
            try:
                reports[rank] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                pass
    for rank, (code, _) in sorted(failed.items(), key=lambda kv: kv[1][1]):
        if code < 0 and rank not in reports:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return rank, f"rank {rank} was killed by {name}", ""
    if reports:
        own = [r for r in reports.values() if not _is_peer_error(r["error"])]
        pick = min(own or reports.values(), key=lambda r: r["time"])
        return int(pick["rank"]), f"rank {pick['rank']} failed: {pick['error']}", \
            pick.get("traceback", "")
    rank, (code, _) = min(failed.items(), key=lambda kv: kv[1][1])
    return rank, f"rank {rank} exited with code {code} without a report", ""


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)


def rank_threads(world_size: int) -> int:
    """Intra-op threads each of ``world_size`` processes on this host gets by default: the
    cores shared out evenly, at least one (the planner prices a rank with the same number)."""
    return max(1, (os.cpu_count() or 1) // max(world_size, 1))


def run_workers(worker_fn: Callable, world_size: int, args: tuple = (), *, timeout_s: float = 600.0,
                backend: str | None = None, threads: int | None = None) -> list[Any]:
    """Run ``worker_fn(rank, world_size, *args)`` on ``world_size`` new processes of this host.

    Args:
        worker_fn: a module-level function; it runs after ``init_process_group``.
        world_size: number of processes (ranks).
        args: extra arguments, pickled to every rank.
        timeout_s: the whole job's limit, and the process group's.
        backend: ``gloo`` or ``nccl`` (default: :func:`default_backend`).
        threads: intra-op threads per rank (default: the cores shared out evenly).

    Returns:
        ``worker_fn``'s return values, in rank order.

    Raises:
        WorkerError: one line naming the rank that failed first (or that the job timed out).

    Example:
        >>> def hello(rank, world):
        ...     return rank * 10
        >>> run_workers(hello, 2, timeout_s=60)   # hello defined in an importable module
        [0, 10]
    """
    backend = backend or default_backend(world_size)
    threads = threads or rank_threads(world_size)
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="graphopt-ranks-") as tmp:
        out = Path(tmp)
        torch.save((worker_fn, tuple(args)), out / "work.pt")
        procs = [ctx.Process(target=_entry, name=f"graphopt-rank{r}",
                             args=(r, world_size, port, backend, timeout_s, threads, tmp))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        failed: dict[int, tuple[int, float]] = {}
        try:
            while True:
                codes = [p.exitcode for p in procs]
                now = time.monotonic()
                for r, code in enumerate(codes):
                    if code not in (None, 0) and r not in failed:
                        failed[r] = (code, now)
                if failed:
                    _wait_for_reports(procs, failed, out)
                    _stop(procs)
                    rank, text, details = _root_cause(failed, out)
                    raise WorkerError(text, rank, details)
                if all(code == 0 for code in codes):
                    break
                if now > deadline:
                    running = [r for r, code in enumerate(codes) if code is None]
                    _stop(procs)
                    raise WorkerError(f"timed out after {timeout_s:g} s with rank(s) "
                                      f"{', '.join(map(str, running))} still running")
                time.sleep(_POLL_S)
        except BaseException:
            _stop(procs)
            raise
        return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _wait_for_reports(procs, failed: dict, out: Path) -> None:
    """Give the other ranks ``_GRACE_S`` to fail or report, so the cause can be told apart."""
    until = time.monotonic() + _GRACE_S
    while time.monotonic() < until:
        for r, p in enumerate(procs):
            if p.exitcode not in (None, 0) and r not in failed:
                failed[r] = (p.exitcode, time.monotonic())
        if all(p.exitcode is not None for p in procs):
            return
        time.sleep(_POLL_S)


def join_torchrun(worker_fn: Callable, args: tuple = (), *, timeout_s: float = 600.0,
                  backend: str | None = None) -> list[Any] | None:
    """Run ``worker_fn`` as this process's rank of a ``torchrun`` job.

    Returns every rank's result on rank 0 (gathered over the process group) and ``None`` on the
    others. A rank that raises prints ``graphopt: rank R failed: ...`` on stderr and exits 1.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    try:
        _init(rank, world, backend, timeout_s, "env://")
        result = worker_fn(rank, world, *args)
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(result, gathered, dst=0)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001
        print(f"graphopt: rank {rank} failed: {_one_line(exc)}", file=sys.stderr, flush=True)
        os._exit(1)
    return gathered
