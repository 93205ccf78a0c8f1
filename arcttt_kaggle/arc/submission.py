"""The Kaggle ``submission.json``: build it (with a fallback for every gap), write it atomically, validate it.

Kaggle scores a submission only if it has every task id of the challenges file, one
``{"attempt_1": grid, "attempt_2": grid}`` per test input in order, and valid grids. A single missing task
or a ragged grid costs the whole run, so the builder fills every gap (a task the pipeline never reached, a
test input without answers, a model grid that is not a valid grid) with the cheap fallback below, and
``validate_submission`` lists every violation before the file is handed in.

Fallback (``fallback_attempts``), per test input:

* ``attempt_1`` is the test input itself. It is not expected to score: an ARC test output almost never
  equals its input exactly (0 of 419 ARC-AGI-1 evaluation outputs do). It is chosen because it is always a
  valid grid, costs nothing, and is the right *shape* for the most common task kind (same-shape
  transformations), which matters to anyone reading a failed run's file. Its real job is keeping the
  submission valid.
* ``attempt_2`` is the one cheap guess that does score on real tasks: when every demonstration output has
  its input's shape, the demonstrations' majority cell-wise color mapping applied to the test input (exact
  for pure recoloring tasks); otherwise, or when that mapping changes nothing, the most common demonstration
  output shape filled with the most common output color (exact for the constant-output tasks).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .candidates import atomic_write_text
from .data import NUM_COLORS, Grid, Task, grid_to_list, to_grid
from .scoring import ATTEMPTS

AttemptPair = tuple[Grid, Grid]
Fallback = Callable[[Task], list[AttemptPair]]

PLACEHOLDER: Grid = np.zeros((1, 1), dtype=np.uint8)  # for tasks that could not even be loaded


# -- fallback ---------------------------------------------------------------------------------------------------
def majority_color_map(task: Task) -> np.ndarray | None:
    """``map[c]``: the output color most often at cells where the input has color ``c`` (``c`` itself when
    ``c`` never occurs), over demonstrations whose output has the input's shape; ``None`` if any does not."""
    counts = np.zeros((NUM_COLORS, NUM_COLORS), dtype=np.int64)
    for p in task.train:
        if p.output.shape != p.input.shape:
            return None
        np.add.at(counts, (p.input.ravel(), p.output.ravel()), 1)
    mapping = np.arange(NUM_COLORS, dtype=np.uint8)
    seen = counts.sum(axis=1) > 0
    mapping[seen] = counts[seen].argmax(axis=1)  # ties: the lowest color, deterministically
    return mapping


def constant_guess(task: Task) -> Grid:
    """The most common demonstration output shape, filled with the most common output color."""
    shapes = Counter(p.output.shape for p in task.train)
    shape = shapes.most_common(1)[0][0]
    colors = np.bincount(np.concatenate([p.output.ravel() for p in task.train]), minlength=NUM_COLORS)
    return np.full(shape, int(colors.argmax()), dtype=np.uint8)


def fallback_attempts(task: Task) -> list[AttemptPair]:
    """(attempt_1, attempt_2) per test input; see the module docstring for why these two."""
    mapping = majority_color_map(task)
    filled = constant_guess(task)
    out = []
    for p in task.test:
        first = np.array(p.input, dtype=np.uint8)
        second = mapping[first] if mapping is not None else filled
        if np.array_equal(second, first):
            second = filled
        out.append((first, second))
    return out


# -- building ---------------------------------------------------------------------------------------------------
def _valid(grid: Any) -> Grid | None:
    if grid is None:
        return None
    try:
        return to_grid(grid)
    except (ValueError, TypeError):
        return None


def _entry(answer: Any, fallback_pair: AttemptPair) -> dict:
    """One ``{"attempt_1", "attempt_2"}``; invalid or missing attempts are replaced from the fallback pair
    (``attempt_2`` takes the fallback's second grid when its first already fills ``attempt_1``)."""
    first = second = None
    if isinstance(answer, (tuple, list)) and len(answer) == 2:
        first, second = _valid(answer[0]), _valid(answer[1])
    elif isinstance(answer, Mapping):
        first, second = _valid(answer.get(ATTEMPTS[0])), _valid(answer.get(ATTEMPTS[1]))
    spare = list(fallback_pair)
    if first is None:
        first = spare.pop(0)
    if second is None:
        second = spare[0] if not np.array_equal(spare[0], first) or len(spare) == 1 else spare[1]
    return {ATTEMPTS[0]: grid_to_list(first), ATTEMPTS[1]: grid_to_list(second)}


def build_submission(tasks: Mapping[str, Task] | Iterable[Task],
                     answers: Mapping[str, Sequence[Any]] | None = None, *,
                     fallback: Fallback = fallback_attempts,
                     placeholders: Mapping[str, int] | None = None) -> dict:
    """The submission dict: every task id (input order), one entry per test input, in test order.

    ``answers[task_id][i]`` is an ``(attempt_1, attempt_2)`` pair (or a dict with those keys) for test input
    ``i``; a missing task, a short list, a ``None`` entry or attempt, or an invalid grid is filled from
    ``fallback(task)``. Answers for ids not in ``tasks`` are dropped (Kaggle rejects extra tasks).
    ``placeholders`` maps ids of tasks that failed to load to their number of test inputs: they get
    ``[[0]]`` twice, since a submission without them would not be scored at all.
    """
    answers = answers or {}
    items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    sub: dict[str, list[dict]] = {}
    for task in items:
        given = answers.get(task.id) or []
        fb = fallback(task)
        if len(fb) != len(task.test):
            raise ValueError(f"task {task.id}: fallback gave {len(fb)} pairs for {len(task.test)} test inputs")
        sub[task.id] = [_entry(given[i] if i < len(given) else None, fb[i]) for i in range(len(task.test))]
    for task_id, n in (placeholders or {}).items():
        if task_id not in sub:
            sub[task_id] = [_entry(None, (PLACEHOLDER, PLACEHOLDER)) for _ in range(max(1, n))]
    return sub


def count_test_inputs(challenges: Mapping[str, Any]) -> dict[str, int]:
    """Test inputs per task of a raw challenges dict (or Tasks), best effort for malformed tasks (then 1).

    This is the shape Kaggle checks a submission against, whether or not our loader accepted the task.
    """
    out = {}
    for tid, t in challenges.items():
        if isinstance(t, Task):
            out[tid] = len(t.test)
        elif isinstance(t, Mapping) and isinstance(t.get("test"), list) and t["test"]:
            out[tid] = len(t["test"])
        else:
            out[tid] = 1
    return out


def write_submission(path: str | Path, submission: Mapping[str, Any]) -> None:
    """Serialize, then write atomically: a failure (even mid-serialization) leaves any old file intact."""
    atomic_write_text(path, json.dumps(submission, separators=(",", ":")))


# -- validation -------------------------------------------------------------------------------------------------
def validate_submission(submission: Any, challenges: Mapping[str, Any]) -> list[str]:
    """Every way ``submission`` breaks the Kaggle format for ``challenges`` (raw JSON dict or Tasks).

    Returns one message per violation, each naming the task, test index and attempt; empty means valid.
    """
    if not isinstance(submission, dict):
        return [f"submission: expected an object of task_id -> list of attempt objects, "
                f"got {type(submission).__name__}"]
    expected = count_test_inputs(challenges)
    errors = [f"task {tid}: missing from submission" for tid in expected if tid not in submission]
    errors += [f"task {tid}: not in the challenges (extra task)" for tid in submission if tid not in expected]
    for tid, n in expected.items():
        if tid not in submission:
            continue
        preds = submission[tid]
        if not isinstance(preds, list):
            errors.append(f"task {tid}: expected a list of {n} attempt objects, got {type(preds).__name__}")
            continue
        if len(preds) != n:
            errors.append(f"task {tid}: {len(preds)} attempt objects for {n} test inputs")
        for i, entry in enumerate(preds):
            where = f"task {tid} test {i}"
            if not isinstance(entry, dict):
                errors.append(f"{where}: expected an object with {' and '.join(ATTEMPTS)}, "
                              f"got {type(entry).__name__}")
                continue
            for key in entry:
                if key not in ATTEMPTS:
                    errors.append(f"{where}: unexpected key {key!r}")
            for a in ATTEMPTS:
                if a not in entry:
                    errors.append(f"{where}: missing {a}")
                    continue
                try:
                    to_grid(entry[a], f"{where} {a}")
                except ValueError as e:
                    errors.append(str(e))
    return errors


def _read_json_file(path: Path, what: str) -> tuple[Any, str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path}: cannot read {what}: {e}"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"


def validate_submission_file(submission_path: str | Path, challenges_path: str | Path) -> list[str]:
    """``validate_submission`` on files; an unreadable or unparsable file is reported with its line."""
    submission, err = _read_json_file(Path(submission_path), "submission")
    challenges, err2 = _read_json_file(Path(challenges_path), "challenges")
    errors = [e for e in (err, err2) if e]
    if errors:
        return errors
    if not isinstance(challenges, dict):
        return [f"{challenges_path}: expected an object of task_id -> task, got {type(challenges).__name__}"]
    return validate_submission(submission, challenges)
