"""Held-out by content: pairs compared up to the dihedral group and a colour relabelling, and the three task sets
of ARC-AGI-1 evaluation with one use each.

Why "up to": the augmentations every training run applies (rotations, flips, colour permutations) turn one pair
into its whole orbit, so a training pair that equals an evaluation pair after a rotation and a recolouring is
that evaluation pair, trained on. Training task caa06a1f and evaluation task 50a16a69 share a pair that way.
``canonical_pair_key`` maps a pair to one key per orbit: the smallest, over the 8 dihedral transforms applied to
input and output together, of the grids with colours renamed in order of first appearance (input first, then
output, row by row). Two pairs have the same key exactly when one is a dihedral transform and a colour bijection
of the other.

The three sets (``held_out_sets``), disjoint from each other by that key:

- **sample**: the 10 tasks the dry run demonstrates on (``sample_data/``, ARC-AGI-1 evaluation ids);
- **validation**: where every setting is chosen (TTT steps and rate, the joint stage's length, selection knobs);
- **reporting**: where the ablation's figures come from, and nothing is chosen.

Validation and reporting are drawn from ARC-AGI-1 evaluation tasks whose every test prompt plus true output fits
``fit`` tokens of the kit layout, in the order of a SHA-256 of the id (neither alphabetical nor hand-picked), a
task sharing a canonical pair with the sample or an earlier-chosen task skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .augment import DIHEDRAL_NAMES, dihedral
from .data import Grid, Task

CanonicalKey = bytes


def _relabelled(a: Grid, b: Grid) -> bytes:
    flat = np.concatenate([a.ravel(), b.ravel()]).astype(np.int64)
    _, first = np.unique(flat, return_index=True)
    order = np.unique(flat)[np.argsort(first)]  # colours by first appearance
    rename = np.zeros(10, dtype=np.uint8)
    rename[order] = np.arange(len(order), dtype=np.uint8)
    head = np.array([*a.shape, *b.shape], dtype=np.uint8).tobytes()
    return head + rename[flat].tobytes()


def canonical_pair_key(inp: Grid, out: Grid) -> CanonicalKey:
    """One key per orbit of (input, output) under the dihedral group (applied to both) and colour bijections."""
    inp, out = np.asarray(inp, dtype=np.uint8), np.asarray(out, dtype=np.uint8)
    return min(_relabelled(dihedral(d, inp), dihedral(d, out)) for d in DIHEDRAL_NAMES)


def canonical_pair_keys(task: Task) -> set[CanonicalKey]:
    """The canonical keys of every known pair of ``task``: demonstrations and test pairs with outputs."""
    return {canonical_pair_key(p.input, p.output) for p in (*task.train, *task.test) if p.output is not None}


def shared_content(tasks: Iterable[Task], against: Iterable[Task]) -> list[str]:
    """Ids of ``tasks`` that share a canonical pair with a task of ``against``."""
    keys: set[CanonicalKey] = set()
    for t in against:
        keys |= canonical_pair_keys(t)
    return [t.id for t in tasks if canonical_pair_keys(t) & keys]


def id_order(task_id: str) -> bytes:
    """The draw order of the sets: a SHA-256 of the id (stable across machines and Python versions)."""
    return hashlib.sha256(f"arcttt-heldout\x00{task_id}".encode()).digest()


@dataclass(frozen=True)
class HeldOutSets:
    sample: tuple[str, ...]
    validation: tuple[str, ...]
    reporting: tuple[str, ...]

    def named(self, name: str) -> tuple[str, ...]:
        if name not in ("sample", "validation", "reporting"):
            raise ValueError(f"unknown task set {name!r}: sample, validation or reporting")
        return getattr(self, name)


def held_out_sets(evaluation: Mapping[str, Task], sample: Sequence[Task], *, validation: int = 24,
                  reporting: int = 60, fits=lambda task: True) -> HeldOutSets:
    """The sample, validation and reporting sets (see the module docstring). ``evaluation``: ARC-AGI-1 evaluation
    with test outputs; ``fits(task)``: whether the task is small enough for the benchmarks."""
    taken: set[CanonicalKey] = set()
    for t in sample:
        taken |= canonical_pair_keys(t)
    sample_ids = {t.id for t in sample}
    chosen: list[str] = []
    for tid in sorted(evaluation, key=id_order):
        task = evaluation[tid]
        if tid in sample_ids or not fits(task):
            continue
        keys = canonical_pair_keys(task)
        if keys & taken:
            continue
        taken |= keys
        chosen.append(tid)
        if len(chosen) == validation + reporting:
            break
    if len(chosen) < validation + reporting:
        raise ValueError(f"held-out sets: only {len(chosen)} tasks qualify, {validation + reporting} asked")
    return HeldOutSets(tuple(t.id for t in sample), tuple(chosen[:validation]), tuple(chosen[validation:]))
