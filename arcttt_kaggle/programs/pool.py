"""A small process pool with a hard per-task time cap, a global deadline and a per-worker memory cap.

Why not ``multiprocessing.Pool``: a stuck task there cannot be killed without losing the whole pool. Here
each worker is one ``spawn``-ed process fed one task at a time over a pipe; a worker that overruns its cap
(or dies: memory limit, crash) is killed and replaced, and its task is reported as failed.

This module imports only the standard library at top level on purpose: a worker sets its limits
(``RLIMIT_AS``, one BLAS thread) *before* importing numpy and the solver, so the cap also covers what those
imports map, and numpy's thread pools never reserve memory the GPU workers need.
"""

from __future__ import annotations

import importlib
import os
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable


def _limit_memory(limit_bytes: int) -> None:
    """Cap this process's address space (``RLIMIT_AS``); a no-op where ``resource`` is unavailable."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def resolve(path: str) -> Callable:
    """``"package.module:function"`` -> the function (an import, not an eval)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(conn: Connection, solver_path: str, limit_bytes: int) -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if limit_bytes > 0:
        _limit_memory(limit_bytes)
    solver = resolve(solver_path)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, args = msg
        try:
            result: Any = ("ok", solver(*args))
        except BaseException as e:  # noqa: BLE001 - report every failure (MemoryError included) to the parent
            result = ("error", f"{type(e).__name__}: {e}")
        try:
            conn.send((key, result))
        except (OSError, EOFError):
            return  # the parent is gone
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result: report it instead of dying
            try:
                conn.send((key, ("error", f"could not send result: {type(e).__name__}: {e}")))
            except Exception:  # noqa: BLE001 - nothing more can be reported
                return


@dataclass
class _Worker:
    process: Any
    conn: Connection
    job: Any = None  # (key, started_at) while busy


@dataclass(frozen=True)
class Outcome:
    """What happened to one job: ``status`` is ``ok`` (``value`` set), ``error``, ``timeout``, ``died`` or ``skipped``."""

    status: str
    value: Any = None
    message: str = ""
    seconds: float = 0.0


def run_jobs(jobs: Iterable[tuple[Any, tuple]], solver_path: str, workers: int, hard_cap_s: float,
             deadline: float | None, memory_limit_bytes: int,
             on_done: Callable[[Any, Outcome], None] | None = None) -> dict[Any, Outcome]:
    """Run ``solver(*args)`` for each ``(key, args)`` job in ``workers`` processes.

    Each job gets at most ``hard_cap_s`` seconds before its worker is killed; nothing starts after
    ``deadline`` and running jobs are abandoned at it. Every key gets an ``Outcome``; this never raises for a
    job's failure.
    """
    ctx = get_context("spawn")
    pending = deque(jobs)
    results: dict[Any, Outcome] = {}
    pool: list[_Worker] = []

    def start() -> _Worker:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, args=(child, solver_path, memory_limit_bytes), daemon=True)
        p.start()
        child.close()
        return _Worker(p, parent)

    def finish(key: Any, outcome: Outcome) -> None:
        results[key] = outcome
        if on_done is not None:
            on_done(key, outcome)

    def kill(w: _Worker) -> None:
        try:
            w.conn.close()
        except OSError:
            pass
        if w.process.is_alive():
            w.process.kill()
        w.process.join(timeout=5)

    try:
        pool = [start() for _ in range(max(1, min(workers, len(pending))))] if pending else []
        while pending or any(w.job for w in pool):
            now = time.time()
            if deadline is not None and now >= deadline:
                break
            for w in pool:
                if w.job is None and pending:
                    key, args = pending.popleft()
                    try:
                        w.conn.send((key, args))
                        w.job = (key, now)
                    except (OSError, ValueError) as e:
                        finish(key, Outcome("error", message=f"could not send job: {e}"))
            busy = [w for w in pool if w.job]
            if not busy:
                continue
            wait_s = min(w.job[1] + hard_cap_s for w in busy) - now
            if deadline is not None:
                wait_s = min(wait_s, deadline - now)
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=max(0.0, wait_s))
            now = time.time()
            for i, w in enumerate(pool):
                if not w.job:
                    continue
                key, started = w.job
                if w.conn in ready or w.process.sentinel in ready:
                    try:
                        _, (status, value) = w.conn.recv()
                        finish(key, Outcome("ok", value, seconds=now - started) if status == "ok"
                               else Outcome("error", message=value, seconds=now - started))
                        w.job = None
                        continue
                    except (EOFError, OSError, ValueError):
                        code = w.process.exitcode
                        finish(key, Outcome("died", message=f"worker exited with code {code}", seconds=now - started))
                elif now - started >= hard_cap_s:
                    finish(key, Outcome("timeout", message=f"killed after {hard_cap_s:.1f}s", seconds=now - started))
                else:
                    continue
                kill(w)
                pool[i] = start() if pending else _Worker(w.process, w.conn)
    finally:
        for w in pool:
            if w.job:
                key, started = w.job
                finish(key, Outcome("timeout", message="global deadline", seconds=time.time() - started))
            try:
                if w.process.is_alive():
                    w.conn.send(None)
            except (OSError, ValueError):
                pass
        grace_end = time.time() + 1.0  # one second in total for idle workers to exit on their own
        for w in pool:
            w.process.join(timeout=max(0.0, grace_end - time.time()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
    for key, _ in pending:
        finish(key, Outcome("skipped", message="global deadline passed before it started"))
    return results
