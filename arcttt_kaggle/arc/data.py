"""ARC tasks in the Kaggle format: one validator, typed tasks, strict and lenient loaders.

Grids are 2-D numpy ``uint8`` arrays everywhere in the API. JSON lists of lists appear only at the file edge
(``Task.from_dict`` / ``Task.to_dict``). Every error names the task id and exactly what is wrong, so a bad
task in a Kaggle input file can be reported and skipped instead of sinking the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

Grid = np.ndarray  # 2-D uint8, 1..30 per side, values 0..9

MAX_SIDE = 30
NUM_COLORS = 10


class TaskError(ValueError):
    """A task failed validation; the message starts with the task id."""

    def __init__(self, task_id: str, problem: str):
        self.task_id = task_id
        self.problem = problem
        super().__init__(f"task {task_id}: {problem}")


def to_grid(value: Any, where: str = "grid") -> Grid:
    """Validate a grid given as a list of lists (or an array) and return it as a uint8 array.

    Raises ``ValueError`` whose message names ``where`` and the problem (row index, bad value, size).
    """
    fast = _to_grid_fast(value)
    return fast if fast is not None else _to_grid_checked(value, where)


def _to_grid_checked(value: Any, where: str = "grid") -> Grid:
    """``to_grid`` cell by cell: decides every input the fast path declines, and words every error."""
    if isinstance(value, np.ndarray):
        rows = value.tolist() if value.ndim == 2 else None
        if rows is None:
            raise ValueError(f"{where}: expected a 2-D grid, got an array of shape {value.shape}")
    else:
        rows = value
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: expected a non-empty list of rows, got {type(rows).__name__}"
                         + (" (empty)" if isinstance(rows, list) else ""))
    if len(rows) > MAX_SIDE:
        raise ValueError(f"{where}: {len(rows)} rows, at most {MAX_SIDE} allowed")
    width = None
    for r, row in enumerate(rows):
        if not isinstance(row, list):
            raise ValueError(f"{where}: row {r} is {type(row).__name__}, expected a list")
        if width is None:
            width = len(row)
            if not 1 <= width <= MAX_SIDE:
                raise ValueError(f"{where}: row {r} has {width} cells, expected 1..{MAX_SIDE}")
        elif len(row) != width:
            raise ValueError(f"{where}: non-rectangular, row {r} has {len(row)} cells, row 0 has {width}")
        for c, v in enumerate(row):
            # bool is an int subclass; reject it and floats explicitly.
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < NUM_COLORS:
                raise ValueError(f"{where}: value {v!r} at row {r} column {c} is not an int 0..9")
    return np.array(rows, dtype=np.uint8)


def _to_grid_fast(value: Any) -> Grid | None:
    """``to_grid``'s result for the common valid input (a plain 2-D integer array, or a plain list of plain lists
    of plain ``int``, rectangular, 1..30 per side, values 0..9) without a Python loop per cell; ``None`` for
    anything else (invalid or unusual), which ``to_grid``'s per-cell checks then decide and word exactly."""
    if type(value) is np.ndarray:
        if (value.ndim == 2 and value.dtype.kind in "iu" and 1 <= value.shape[0] <= MAX_SIDE
                and 1 <= value.shape[1] <= MAX_SIDE and value.min() >= 0 and value.max() < NUM_COLORS):
            return np.array(value, dtype=np.uint8, order="C")
        return None
    if type(value) is not list or not 1 <= len(value) <= MAX_SIDE:
        return None
    first = value[0]
    if type(first) is not list:
        return None
    width = len(first)
    if not 1 <= width <= MAX_SIDE:
        return None
    for row in value:
        if type(row) is not list or len(row) != width:
            return None
    # Exactly ``int`` (not bool, not a float, not a numpy scalar, not a nested list): a set of the cells' types.
    if not {int}.issuperset(map(type, chain.from_iterable(value))):
        return None
    try:
        cells = bytes(chain.from_iterable(value))  # refuses any int outside 0..255
    except (ValueError, OverflowError):
        return None
    if max(cells) >= NUM_COLORS:
        return None
    return np.frombuffer(cells, dtype=np.uint8).reshape(len(value), width).copy()


def grid_to_list(grid: Grid) -> list[list[int]]:
    return [[int(v) for v in row] for row in np.asarray(grid)]


def grid_key(grid: Grid) -> bytes:
    """A hashable exact identity for a grid (shape + cells), for voting and deduplication."""
    g = np.ascontiguousarray(grid, dtype=np.uint8)
    return bytes([g.shape[0], g.shape[1]]) + g.tobytes()


@dataclass(frozen=True)
class Pair:
    """One input grid and, when known, its output grid."""

    input: Grid
    output: Grid | None = None


@dataclass(frozen=True)
class Task:
    """An ARC task: demonstration pairs (``train``) and test inputs (``test``, outputs only when solutions are attached)."""

    id: str
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]

    def __post_init__(self):
        if not self.train:
            raise TaskError(self.id, "no demonstration (train) pairs")
        if not self.test:
            raise TaskError(self.id, "empty test list")
        for i, p in enumerate(self.train):
            if p.output is None:
                raise TaskError(self.id, f"train pair {i} has no output")

    @property
    def test_inputs(self) -> list[Grid]:
        return [p.input for p in self.test]

    @property
    def test_outputs(self) -> list[Grid | None]:
        return [p.output for p in self.test]

    @property
    def num_cells(self) -> int:
        """Cells over all grids (demonstrations, test inputs, known test outputs): the task's size for costing."""
        return sum(g.size for p in self.train + self.test for g in (p.input, p.output) if g is not None)

    def with_solutions(self, outputs: list[Grid]) -> "Task":
        if len(outputs) != len(self.test):
            raise TaskError(self.id, f"{len(outputs)} solution grids for {len(self.test)} test inputs")
        return Task(self.id, self.train, tuple(Pair(p.input, o) for p, o in zip(self.test, outputs)))

    @classmethod
    def from_dict(cls, task_id: str, d: Any) -> "Task":
        if not isinstance(task_id, str) or not task_id:
            raise TaskError(str(task_id), "task id must be a non-empty string")
        if not isinstance(d, dict):
            raise TaskError(task_id, f"expected an object with 'train' and 'test', got {type(d).__name__}")
        if getattr(d, "duplicates", ()):
            raise TaskError(task_id, f"duplicate key {d.duplicates[0]!r} in the task object")
        for key in ("train", "test"):
            if key not in d:
                raise TaskError(task_id, f"missing '{key}' list")
            if not isinstance(d[key], list):
                raise TaskError(task_id, f"'{key}' is {type(d[key]).__name__}, expected a list")
        if not d["train"]:
            raise TaskError(task_id, "empty train list")
        if not d["test"]:
            raise TaskError(task_id, "empty test list")

        def pair(split: str, i: int, p: Any, need_output: bool) -> Pair:
            if not isinstance(p, dict) or "input" not in p:
                raise TaskError(task_id, f"{split} pair {i} has no 'input'")
            if getattr(p, "duplicates", ()):
                raise TaskError(task_id, f"{split} pair {i} has duplicate key {p.duplicates[0]!r}")
            if need_output and "output" not in p:
                raise TaskError(task_id, f"{split} pair {i} has no 'output'")
            try:
                inp = to_grid(p["input"], f"{split} pair {i} input")
                out = to_grid(p["output"], f"{split} pair {i} output") if "output" in p else None
            except ValueError as e:
                raise TaskError(task_id, str(e)) from None
            return Pair(inp, out)

        train = tuple(pair("train", i, p, True) for i, p in enumerate(d["train"]))
        test = tuple(pair("test", i, p, False) for i, p in enumerate(d["test"]))
        return cls(task_id, train, test)

    def to_dict(self, with_test_outputs: bool = False) -> dict:
        def pd(p: Pair, out: bool) -> dict:
            d = {"input": grid_to_list(p.input)}
            if out and p.output is not None:
                d["output"] = grid_to_list(p.output)
            return d

        return {"train": [pd(p, True) for p in self.train],
                "test": [pd(p, with_test_outputs) for p in self.test]}

    def __repr__(self) -> str:
        shapes = lambda ps: ",".join(f"{p.input.shape[0]}x{p.input.shape[1]}" for p in ps)  # noqa: E731
        solved = " solved" if all(p.output is not None for p in self.test) else ""
        return f"Task({self.id!r}, train={len(self.train)} [{shapes(self.train)}], test={len(self.test)} [{shapes(self.test)}]{solved})"


@dataclass(frozen=True)
class Rejected:
    """A task the lenient loader refused, and why."""

    task_id: str
    reason: str


@dataclass
class Loaded:
    """What a loader returns: the good tasks by id (file order) and the rejected ones (empty when strict)."""

    tasks: dict[str, Task]
    rejected: list[Rejected] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    """Parse a JSON file; every object is a ``_JsonObject`` that lists the keys it saw twice.

    Duplicates are recorded where they occur rather than raised, so a duplicated task id (top level) is told
    apart from a duplicated key inside one task (``Task.from_dict`` rejects that task alone).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


class DuplicateKeyError(ValueError):
    pass


class _JsonObject(dict):
    """A parsed JSON object; ``duplicates`` names keys that appeared more than once (the first value is kept)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> "_JsonObject":
        obj = cls()
        dups: list[str] = []
        for k, v in pairs:
            if k in obj:
                if k not in dups:
                    dups.append(k)
            else:
                obj[k] = v
        if dups:
            obj.duplicates = tuple(dups)
        return obj


# Error messages name JSON types by ``type(v).__name__``; a parsed object must still read as a ``dict`` there.
_JsonObject.__name__ = _JsonObject.__qualname__ = "dict"


def parse_challenges(data: Any, *, strict: bool = True, source: str = "challenges") -> Loaded:
    """Turn a parsed challenges object into tasks. ``strict=False`` keeps the good tasks and lists the rest."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected an object of task_id -> task, got {type(data).__name__}")
    out = Loaded({})
    for task_id, d in data.items():
        try:
            out.tasks[task_id] = Task.from_dict(task_id, d)
        except TaskError as e:
            if strict:
                raise
            out.rejected.append(Rejected(task_id, e.problem))
    return out


def load_challenges(path: str | Path, *, strict: bool = True, solutions: str | Path | None = None) -> Loaded:
    """Load a Kaggle ``*_challenges.json``; attach ``*_solutions.json`` outputs when given.

    Strict mode raises ``ValueError``/``TaskError`` on the first problem. Lenient mode (``strict=False``, the
    Kaggle run) keeps every valid task and returns the others in ``rejected`` with their reasons; it still
    raises when the file itself is unreadable, since then there is nothing to keep.
    """
    path = Path(path)
    data = _read_json(path)
    # A duplicated task id is ambiguous: we cannot know which copy is meant, so every copy is rejected.
    duplicated = getattr(data, "duplicates", ())
    if duplicated and strict:
        raise TaskError(duplicated[0], f"duplicate task id in {path}")
    loaded = parse_challenges(data, strict=strict, source=str(path))
    for task_id in duplicated:
        loaded.tasks.pop(task_id, None)
        loaded.rejected.append(Rejected(task_id, f"duplicate task id in {path}"))
    if solutions is not None:
        loaded = _attach(loaded, load_solutions(solutions), strict)
    return loaded


def load_solutions(path: str | Path) -> dict[str, list[Grid]]:
    """Load a Kaggle ``*_solutions.json``: ``{task_id: [output_grid per test input]}``."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of task_id -> list of grids")
    if getattr(data, "duplicates", ()):
        raise TaskError(data.duplicates[0], f"duplicate task id in {path}")
    out = {}
    for task_id, grids in data.items():
        if not isinstance(grids, list) or not grids:
            raise TaskError(task_id, f"solutions must be a non-empty list of grids in {path}")
        try:
            out[task_id] = [to_grid(g, f"solution {i}") for i, g in enumerate(grids)]
        except ValueError as e:
            raise TaskError(task_id, str(e)) from None
    return out


def _attach(loaded: Loaded, solutions: Mapping[str, list[Grid]], strict: bool) -> Loaded:
    for task_id in list(loaded.tasks):
        if task_id not in solutions:
            if strict:
                raise TaskError(task_id, "no solutions for this task")
            continue
        try:
            loaded.tasks[task_id] = loaded.tasks[task_id].with_solutions(solutions[task_id])
        except TaskError as e:
            if strict:
                raise
            loaded.tasks.pop(task_id)
            loaded.rejected.append(Rejected(task_id, e.problem))
    return loaded


def tasks_to_challenges(tasks: Iterable[Task]) -> dict:
    return {t.id: t.to_dict() for t in tasks}


def package_sample_dir() -> Path:
    """The 10-task sample that ships inside the package (ARC-AGI-1 evaluation, Apache-2.0)."""
    return Path(__file__).resolve().parents[1] / "sample_data"


def shared_data_dir() -> Path | None:
    """``../shared/data`` next to the repository, when this checkout has it (tests and benchmarks skip otherwise)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        d = base.parent / "shared" / "data"
        if d.is_dir():
            return d
    return None
