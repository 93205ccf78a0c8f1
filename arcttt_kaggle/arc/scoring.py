"""The ARC Prize metric on a Kaggle-shaped submission, per task and overall.

Each test output scores 1 when ``attempt_1`` or ``attempt_2`` equals it exactly (same shape, same cells),
else 0. Two aggregates are reported because both are in use: ``score``, the mean over all test outputs
(a task with two test inputs weighs twice), and ``task_score``, the mean over tasks of each task's fraction
of correct outputs (every task weighs the same). Sources word the official aggregate both ways; the two
differ only on multi-test tasks (19 of the 400 ARC-AGI-1 evaluation tasks have two test inputs).

Scoring never raises on a malformed attempt: an attempt that is not a valid grid simply does not match.
``submission.validate_submission`` is where malformed submissions are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .data import Grid, grid_to_list, load_solutions, to_grid

ATTEMPTS = ("attempt_1", "attempt_2")


@dataclass(frozen=True)
class TaskScore:
    """One task's row: how many of its test outputs were matched by either attempt."""

    task_id: str
    n_test: int
    n_correct: int
    correct: tuple[bool, ...]  # per test output, in order
    submitted: bool = True  # False: the task was missing from the submission (scores 0)

    @property
    def score(self) -> float:
        return self.n_correct / self.n_test if self.n_test else 0.0


@dataclass(frozen=True)
class ScoreReport:
    """Per-task rows (solutions order) and the aggregates."""

    per_task: tuple[TaskScore, ...]
    unscored: tuple[str, ...] = ()  # submitted task ids with no solutions (ignored by the metric)

    @property
    def correct(self) -> int:
        return sum(r.n_correct for r in self.per_task)

    @property
    def total(self) -> int:
        return sum(r.n_test for r in self.per_task)

    @property
    def score(self) -> float:
        """Mean over test outputs."""
        return self.correct / self.total if self.total else 0.0

    @property
    def task_score(self) -> float:
        """Mean over tasks of each task's fraction of correct test outputs."""
        return sum(r.score for r in self.per_task) / len(self.per_task) if self.per_task else 0.0

    @property
    def solved_tasks(self) -> int:
        return sum(r.n_correct == r.n_test for r in self.per_task)

    def format_table(self, only_correct: bool = False) -> str:
        """A fixed-width table, one row per task (or only the tasks with a correct output), then the totals."""
        lines = [f"{'task':<10} {'tests':>5} {'correct':>7} {'score':>6}", "-" * 31]
        for r in self.per_task:
            if only_correct and not r.n_correct:
                continue
            note = "" if r.submitted else "  (missing)"
            lines.append(f"{r.task_id:<10} {r.n_test:>5} {r.n_correct:>7} {r.score:>6.3f}{note}")
        lines.append("-" * 31)
        lines.append(f"score (mean over {self.total} test outputs): {self.score:.4f} ({self.correct}/{self.total})")
        lines.append(f"task score (mean over {len(self.per_task)} tasks): {self.task_score:.4f} "
                     f"({self.solved_tasks} tasks fully solved)")
        if self.unscored:
            lines.append(f"ignored: {len(self.unscored)} submitted tasks have no solutions")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"score": self.score, "task_score": self.task_score, "correct": self.correct, "total": self.total,
                "per_task": {r.task_id: [bool(c) for c in r.correct] for r in self.per_task},
                "unscored": list(self.unscored)}


def _as_grid(value: Any) -> Grid | None:
    try:
        return to_grid(value)
    except (ValueError, TypeError):
        return None


def _matches(attempt: Any, truth: Grid) -> bool:
    g = _as_grid(attempt)
    return g is not None and g.shape == truth.shape and bool(np.array_equal(g, truth))


def score_task(predictions: Any, solutions: Sequence[Any], task_id: str = "") -> TaskScore:
    """Score one task's list of ``{"attempt_1", "attempt_2"}`` dicts against its solution grids.

    Entries beyond the number of solutions are ignored; missing entries (or non-dict ones) score 0.
    """
    truths = [to_grid(g, f"task {task_id} solution {i}") for i, g in enumerate(solutions)]
    preds = predictions if isinstance(predictions, list) else []
    correct = []
    for i, truth in enumerate(truths):
        entry = preds[i] if i < len(preds) else None
        ok = isinstance(entry, dict) and any(_matches(entry.get(a), truth) for a in ATTEMPTS if a in entry)
        correct.append(ok)
    return TaskScore(task_id, len(truths), sum(correct), tuple(correct), isinstance(predictions, list))


def score_submission(submission: Mapping[str, Any], solutions: Mapping[str, Sequence[Any]]) -> ScoreReport:
    """Score a Kaggle-shaped submission ``{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}``.

    Every task in ``solutions`` is scored (missing from the submission: 0 for each of its test outputs);
    submitted tasks without solutions are listed in ``unscored`` and otherwise ignored.
    """
    if not isinstance(submission, Mapping):
        raise ValueError(f"submission: expected an object of task_id -> list, got {type(submission).__name__}")
    rows = tuple(score_task(submission.get(tid), sols, tid) for tid, sols in solutions.items())
    unscored = tuple(tid for tid in submission if tid not in solutions)
    return ScoreReport(rows, unscored)


def score_submission_files(submission_path: str | Path, solutions_path: str | Path) -> ScoreReport:
    """``score_submission`` on files (a ``submission.json`` and a Kaggle ``*_solutions.json``)."""
    path = Path(submission_path)
    try:
        submission = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return score_submission(submission, load_solutions(solutions_path))


def solutions_as_submission(solutions: Mapping[str, Sequence[Grid]]) -> dict:
    """The perfect submission: each solution grid as both attempts (a metric check: it must score 1.0)."""
    return {tid: [{a: grid_to_list(g) for a in ATTEMPTS} for g in grids] for tid, grids in solutions.items()}


def expert_accuracy(tasks: Mapping[str, Any], candidates: Mapping[str, Sequence[Sequence[Any]]]) -> dict:
    """How a program expert's candidate set scores against solved tasks (``Task`` with test outputs).

    solved: every test output among the first two candidates; verified: some test input has a verified
    answer; verified_wrong: has verified answers but misses some test output (the expert's false positives,
    which the ensemble rule would put first).
    """
    solved, verified, wrong = [], [], []
    for tid, task in tasks.items():
        per_test = list(candidates.get(tid, []))
        outs = task.test_outputs
        if any(o is None for o in outs):
            continue
        hits = [i < len(per_test) and any(_matches(c.grid, o) for c in per_test[i][:2]) for i, o in enumerate(outs)]
        has = any(c.verified for p in per_test for c in p)
        if all(hits):
            solved.append(tid)
        if has:
            verified.append(tid)
            if not all(hits):
                wrong.append(tid)
    n = max(1, len(tasks))
    return {"tasks": len(tasks), "solved": len(solved), "solved_pct": 100.0 * len(solved) / n,
            "verified": len(verified), "verified_wrong": len(wrong), "verified_wrong_pct": 100.0 * len(wrong) / n,
            "solved_ids": solved, "verified_wrong_ids": wrong}
