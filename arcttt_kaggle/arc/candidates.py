"""Candidate answers and the candidate-file format every expert speaks.

A *candidate* is one proposed output grid for one test input of one task, in the task's original frame, with
where it came from: the TTT model under some augmented view (with its cumulative log-probability), a program
expert (with the program's description), or the fallback. Decoding, program search and selection exchange
candidates in memory as ``CandidateSet`` and on disk as a JSON *candidate file*, so any external solver can
plug into selection by writing the same file:

```json
{"format": "arcttt-candidates/1", "source": "programs", "meta": {...},
 "tasks": {"<task_id>": [ [ {"grid": [[0,1],[1,0]], "source": "program", "program": "rot90",
                            "logprob": 0.0, "view": "", "verified": true}, ... ],   # test input 0
                          [ ... ] ]}}                                                # test input 1
```

``grid`` is ``null`` for an unparsable model output (kept so failures can be counted).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Grid, grid_key, grid_to_list, to_grid

FORMAT = "arcttt-candidates/1"

# task_id -> one list of candidates per test input, in test order.
CandidateSet = dict[str, list[list["Candidate"]]]


@dataclass(frozen=True)
class Candidate:
    """One proposed output grid (original frame) for one test input."""

    grid: Grid | None  # None: the model's text did not parse into a valid grid
    source: str = "ttt"  # "ttt" | "program" | "fallback" | any external solver's name
    view: str = ""  # Augmentation.to_string() of the view that produced it ("" for programs)
    logprob: float = 0.0  # cumulative log-probability of the generated tokens under that view
    program: str = ""  # description of the program that produced it (program experts)
    verified: bool = False  # program experts: reproduces every demonstration exactly
    extra: dict = field(default_factory=dict, compare=False)  # free-form (e.g. tokens, sample index)

    @property
    def key(self) -> bytes | None:
        return None if self.grid is None else grid_key(self.grid)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"grid": None if self.grid is None else grid_to_list(self.grid), "source": self.source}
        if self.view:
            d["view"] = self.view
        if self.logprob:
            d["logprob"] = float(self.logprob)
        if self.program:
            d["program"] = self.program
        if self.verified:
            d["verified"] = True
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "candidate") -> "Candidate":
        grid = None if d.get("grid") is None else to_grid(d["grid"], where)
        return cls(grid=grid, source=str(d.get("source", "ttt")), view=str(d.get("view", "")),
                   logprob=float(d.get("logprob", 0.0)), program=str(d.get("program", "")),
                   verified=bool(d.get("verified", False)), extra=dict(d.get("extra", {})))


def write_candidate_file(path: str | Path, candidates: CandidateSet, source: str, meta: dict | None = None) -> None:
    """Write a candidate file atomically (temp file + rename: a crash never leaves a truncated file)."""
    doc = {"format": FORMAT, "source": source, "meta": meta or {},
           "tasks": {tid: [[c.to_dict() for c in per_test] for per_test in tests] for tid, tests in candidates.items()}}
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")))


def read_candidate_file(path: str | Path) -> tuple[CandidateSet, dict]:
    """Read a candidate file; returns (candidates, header without 'tasks'). Raises ValueError naming the task."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("tasks"), dict):
        raise ValueError(f"{path}: not a candidate file (expected format {FORMAT!r} and a 'tasks' object)")
    out: CandidateSet = {}
    for tid, tests in doc["tasks"].items():
        if not isinstance(tests, list):
            raise ValueError(f"{path}: task {tid}: expected a list per test input")
        try:
            out[tid] = [[Candidate.from_dict(c, f"test {i} candidate {j}") for j, c in enumerate(per_test)]
                        for i, per_test in enumerate(tests)]
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: task {tid}: {e}") from None
    header = {k: v for k, v in doc.items() if k != "tasks"}
    return out, header


def merge_candidate_sets(*sets: CandidateSet) -> CandidateSet:
    """Concatenate candidates per task and test input (tasks missing from a set contribute nothing)."""
    out: CandidateSet = {}
    for s in sets:
        for tid, tests in s.items():
            cur = out.setdefault(tid, [[] for _ in tests])
            while len(cur) < len(tests):
                cur.append([])
            for i, per_test in enumerate(tests):
                cur[i].extend(per_test)
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def same_grid(a: Grid | None, b: Grid | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))
