"""The program-search expert: public configuration, one-task solver, and the multi-process runner.

``solve_task`` searches one task in-process; ``run_expert`` runs many in worker processes with a per-task
cap and a global deadline, and writes a candidate file (source ``"programs"``). Candidates are the test
outputs of *verified* programs only (programs that reproduce every demonstration exactly), simplest program
first; a task without one gets an empty list per test input. Failures of any kind (timeout, a primitive
raising, memory exhaustion, a worker crash) end as empty lists, never as exceptions.

Memory: each worker process caps its address space with ``RLIMIT_AS`` at ``memory_limit_gib`` (default
2 GiB, set before numpy is imported), so the CPU search can never take memory the GPU workers need.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from arcttt_kaggle.arc.candidates import Candidate, CandidateSet, write_candidate_file
from arcttt_kaggle.arc.data import Task, grid_key
from . import pool
from .ops import Op, build_ops
from .search import search


@dataclass(frozen=True)
class ProgramsConfig:
    """Settings of the program-search expert (all validated on construction)."""

    seconds_per_task: float = field(default=10.0, metadata={
        "help": "search time cap per task in seconds (the search stops cooperatively; a worker is killed "
                "after this plus `kill_grace_seconds`)"})
    max_depth: int = field(default=2, metadata={
        "help": "most library operations composed before the inferred finishing step (0 = finishers only); "
                "3 rarely adds a correct answer and mostly adds wrong ones"})
    workers: int = field(default=1, metadata={"help": "worker processes for run_expert (one task each at a time)"})
    memory_limit_gib: float = field(default=2.0, metadata={
        "help": "address-space cap (RLIMIT_AS) of each worker process, in GiB; 0 disables the cap"})
    max_answers: int = field(default=2, metadata={"help": "verified answers kept per test input, simplest first"})
    max_programs: int = field(default=200, metadata={
        "help": "stop a task's search after this many verified programs (enough to rank answers)"})
    kill_grace_seconds: float = field(default=5.0, metadata={
        "help": "extra seconds a worker gets past `seconds_per_task` before it is killed"})

    def __post_init__(self):
        if not self.seconds_per_task > 0:
            raise ValueError(f"seconds_per_task must be > 0, got {self.seconds_per_task}")
        if not 0 <= self.max_depth <= 5:
            raise ValueError(f"max_depth must be 0..5, got {self.max_depth}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.memory_limit_gib < 0 or (0 < self.memory_limit_gib < 0.25):
            raise ValueError(f"memory_limit_gib must be 0 (no cap) or >= 0.25, got {self.memory_limit_gib}")
        if self.max_answers < 1:
            raise ValueError(f"max_answers must be >= 1, got {self.max_answers}")
        if self.max_programs < 1:
            raise ValueError(f"max_programs must be >= 1, got {self.max_programs}")
        if self.kill_grace_seconds < 0:
            raise ValueError(f"kill_grace_seconds must be >= 0, got {self.kill_grace_seconds}")


@dataclass(frozen=True)
class ProgramResult:
    """What the expert found for one task."""

    task_id: str
    candidates: list[list[Candidate]]  # per test input, ranked (simplest program first), at most max_answers
    num_verified_programs: int = 0
    distinct_answers: list[int] = field(default_factory=list)  # per test input, over all verified programs
    seconds: float = 0.0
    error: str = ""  # "" on success; "timeout", "deadline", or the failure's description
    nodes: int = 0  # search nodes explored

    @classmethod
    def empty(cls, task: Task, seconds: float = 0.0, error: str = "") -> "ProgramResult":
        return cls(task.id, [[] for _ in task.test], 0, [0] * len(task.test), seconds, error)


def solve_task(task: Task, config: ProgramsConfig, deadline: float | None = None, *,
               ops: list[Op] | None = None) -> ProgramResult:
    """Search verified programs for one task, in this process; pure apart from reading the clock.

    Stops at ``min(now + seconds_per_task, deadline)``; a search cut short keeps the verified programs it
    found before the cap (``error`` is ``"timeout"`` only when it found none). ``ops`` replaces the
    operation library (tests). Never raises for a failure inside the search: the result then has empty
    candidates and ``error`` set.
    """
    start = time.time()
    stop = start + config.seconds_per_task
    if deadline is not None:
        stop = min(stop, deadline)
    if time.time() >= stop:
        return ProgramResult.empty(task, 0.0, "deadline")
    train_in = [p.input for p in task.train]
    train_out = [p.output for p in task.train]
    test_in = [p.input for p in task.test]
    try:
        library = build_ops(train_in, test_in, train_out) if ops is None else ops
        found, stats = search(train_in, train_out, test_in, library, config.max_depth, stop, config.max_programs)
    except Exception as e:  # noqa: BLE001 - contract: a task's failure is reported, never raised
        return ProgramResult.empty(task, time.time() - start, f"{type(e).__name__}: {e}")
    candidates, distinct = [], []
    for i in range(len(task.test)):
        # Rank answers by their simplest program; among equally simple ones, by how many programs agree.
        best: dict[bytes, list] = {}  # answer -> [cost of simplest program, -votes, order, program, grid]
        for order, f in enumerate(found):  # sorted simplest first
            k = grid_key(f.test_outputs[i])
            if k in best:
                best[k][1] -= 1
            else:
                best[k] = [f.cost, -1, order, f.program, f.test_outputs[i]]
        ranked = sorted(best.values(), key=lambda e: (round(e[0], 6), e[1], e[2]))
        distinct.append(len(ranked))
        candidates.append([Candidate(np.array(e[4], dtype=np.uint8), source="program", program=e[3], verified=True)
                           for e in ranked[:config.max_answers]])
    error = "timeout" if stats.timed_out and not found else ""
    return ProgramResult(task.id, candidates, len(found), distinct, time.time() - start, error, stats.nodes)


def run_expert(tasks: list[Task], config: ProgramsConfig, deadline: float | None = None,
               out_path: Path | None = None, progress: bool = False) -> tuple[CandidateSet, dict]:
    """Run the expert on many tasks in ``config.workers`` spawned processes.

    Returns ``(candidates, stats)``: every task gets one (possibly empty) candidate list per test input,
    including tasks that timed out, failed, or never started before ``deadline`` (a ``time.time()`` value).
    Writes the candidate file to ``out_path`` when given.
    """
    start = time.time()
    by_id = {t.id: t for t in tasks}
    candidates: CandidateSet = {t.id: [[] for _ in t.test] for t in tasks}
    results: dict[str, ProgramResult] = {}

    def on_done(task_id: str, outcome: pool.Outcome) -> None:
        if outcome.status == "ok":
            results[task_id] = outcome.value
        else:
            results[task_id] = ProgramResult.empty(by_id[task_id], outcome.seconds, f"{outcome.status}: {outcome.message}")
        if progress:
            r = results[task_id]
            n = sum(bool(c) for c in r.candidates)
            print(f"[programs] {len(results)}/{len(tasks)} {task_id}: {r.num_verified_programs} verified, "
                  f"{n}/{len(r.candidates)} answered, {r.seconds:.1f}s {r.error}", file=sys.stderr, flush=True)

    jobs = [(t.id, (t, config, deadline)) for t in tasks]
    pool_error = ""
    try:
        pool.run_jobs(jobs, "arcttt_kaggle.programs.expert:solve_task", config.workers,
                      config.seconds_per_task + config.kill_grace_seconds, deadline,
                      int(config.memory_limit_gib * 2**30), on_done)
    except Exception as e:  # noqa: BLE001 - the pool itself failed (no processes?): keep what finished
        pool_error = f"{type(e).__name__}: {e}"
    for tid, r in results.items():
        if len(r.candidates) == len(by_id[tid].test):
            candidates[tid] = r.candidates
    stats = summarize(tasks, results, time.time() - start)
    if pool_error:
        stats["pool_error"] = pool_error
    if out_path is not None:
        write_candidate_file(out_path, candidates, "programs", {"config": asdict(config), "stats": stats})
    return candidates, stats


def summarize(tasks: list[Task], results: dict[str, ProgramResult], seconds: float) -> dict:
    """Counts over a run: tasks with a verified program, timeouts, errors, not run, and time."""
    done = [results[t.id] for t in tasks if t.id in results]
    return {
        "tasks": len(tasks),
        "tasks_with_verified_program": sum(r.num_verified_programs > 0 for r in done),
        "tasks_timed_out": sorted(r.task_id for r in done if "timeout" in r.error or r.error == "deadline"),
        "tasks_errored": sorted(r.task_id for r in done if r.error and "timeout" not in r.error
                                and r.error != "deadline" and not r.error.startswith("skipped")),
        "tasks_not_run": sorted(t.id for t in tasks if t.id not in results or results[t.id].error.startswith("skipped")),
        "seconds": round(seconds, 2),
        "task_seconds": round(sum(r.seconds for r in done), 2),
    }
