"""Which candidate grids the demonstrations rule out: three checks a test output has never failed.

A weak model puts much of its probability on grids of one colour, often the background: they are cheap to
predict token by token, they survive every colour-fixing-0 augmentation, and so they win votes and the product
of experts alike (the starter model's 60-task ablation: 44 of 65 first attempts were single-colour, the truth
never was). The demonstrations say when such an answer cannot be right. A candidate is *inconsistent* with a
task when

1. ``single_colour``: it has one colour, and no demonstration output has one colour;
2. ``new_colour``: it uses a colour that is in neither any demonstration output nor the test input;
3. ``shape``: every demonstration's output has its input's shape, and the candidate's shape differs from the test
   input's.

Each rule is a statement about ARC tasks, measured rather than assumed: ``benchmarks/consistency_rules.py``
counts, per ARC file, the test outputs a rule applies to and those it would wrongly rule out. On the 1,492 test
outputs of ARC-AGI-1 and ARC-AGI-2 training, where the rules were chosen, none of the three rules out a true
output (3,922 applications); a fourth candidate, "every demonstration output has one shape", breaks 29 of 691
and is not used.

The selection *demotes* inconsistent grids (they follow every consistent grid, in their own order) and never
drops them: when every candidate is inconsistent the order is unchanged, and a rule that is wrong on some task
costs at most the rank of its answer, never the answer. Pure functions on numpy grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np

from arcttt_kaggle.arc.data import Grid, Task

RULES = ("single_colour", "new_colour", "shape")
T = TypeVar("T")


@dataclass(frozen=True)
class Evidence:
    """What one test input's demonstrations allow: computed once per test input, checked per candidate."""

    allow_single_colour: bool
    colours: frozenset[int]
    shape: tuple[int, int] | None  # the test input's shape where every demonstration keeps its input's shape

    @classmethod
    def of(cls, task: Task, test_index: int) -> "Evidence":
        """The evidence of ``task``'s demonstrations for its test input ``test_index``."""
        outs = [np.asarray(p.output) for p in task.train]
        test_in = np.asarray(task.test[test_index].input)
        colours = set(np.unique(test_in).tolist())
        for o in outs:
            colours.update(np.unique(o).tolist())
        keeps_shape = all(np.shape(p.output) == np.shape(p.input) for p in task.train)
        return cls(allow_single_colour=any(np.unique(o).size == 1 for o in outs), colours=frozenset(colours),
                   shape=tuple(test_in.shape) if keeps_shape else None)

    def violations(self, grid: Grid) -> tuple[str, ...]:
        """The rules of ``RULES`` that ``grid`` breaks (empty: consistent)."""
        g = np.asarray(grid)
        used = np.unique(g)
        out = []
        if used.size == 1 and not self.allow_single_colour:
            out.append("single_colour")
        if not set(used.tolist()) <= self.colours:
            out.append("new_colour")
        if self.shape is not None and tuple(g.shape) != self.shape:
            out.append("shape")
        return tuple(out)


def demote_inconsistent(items: Sequence[T], grids: Sequence[Grid], evidence: Evidence) -> tuple[list[T], int]:
    """``items`` with those whose grid breaks a rule moved after the rest, both parts in their order, and how many
    moved. When every grid breaks a rule nothing moves (there is nothing better to put first)."""
    bad = [bool(evidence.violations(g)) for g in grids]
    if all(bad) or not any(bad):
        return list(items), 0
    good = [it for it, b in zip(items, bad) if not b]
    return good + [it for it, b in zip(items, bad) if b], sum(bad)


def rule_counts(tasks: Sequence[Task]) -> dict[str, tuple[int, int]]:
    """Per rule of ``RULES``: (test outputs it applies to, true test outputs it would rule out), over ``tasks``
    with solutions attached. A rule applies where it could rule something out (``new_colour`` everywhere)."""
    counts = {r: [0, 0] for r in RULES}
    for task in tasks:
        for i, pair in enumerate(task.test):
            if pair.output is None:
                raise ValueError(f"task {task.id}: test {i} has no solution attached")
            ev = Evidence.of(task, i)
            applies = {"single_colour": not ev.allow_single_colour, "new_colour": True, "shape": ev.shape is not None}
            broken = ev.violations(pair.output)
            for r in RULES:
                counts[r][0] += applies[r]
                counts[r][1] += r in broken
    return {r: (a, v) for r, (a, v) in counts.items()}
