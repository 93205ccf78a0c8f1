"""Synthetic ARC tasks for pretraining: random instances of common ARC-AGI-1 *training* rule families.

A model of a few million parameters that sees the 632 public training tasks once or twice learns the grid
grammar (sizes, rows, colours) but not to copy or move cells: every rule of ARC rests on those. The re-arc
approach (Hodel, 2024) is to generate many fresh instances of known rules; this module does the same for a
handful of generic families, each a pure function of a seeded generator, so a small model sees tens of
thousands of distinct tasks whose rules are exact:

=================  ================================================================================  =============
family             rule (fixed per task; inputs random per pair)                                      ARC-AGI-1
                                                                                                      training e.g.
=================  ================================================================================  =============
``dihedral``       one of the 7 non-identity rotations / flips / transposes                          3c9b0459
``color_map``      a permutation of the colours present                                             0d3d703e
``upscale``        every cell becomes a ky x kx block                                                c59eb873
``tile``           the grid tiled r x c, each tile under its own flip                               3af2c5a8
``self_tile``      a 3x3 grid placed at its own non-background cells (or the inverse)                007bbfb7
``halves``         two halves (with or without a divider) combined cell-wise: and/or/xor/nor          0520fde7
``gravity``        every coloured cell falls to one side                                             3906de3d-like
``crop``           the bounding box of the one object on an empty background                          1cf80156
=================  ================================================================================  =============

Held-out safety: a synthetic task is dropped when any of its (input, output) pairs equals a pair of an excluded
task (``Exclusion.pairs``), the same content check the real corpus gets. Note for whoever reads accuracy
figures: ``tile``, ``self_tile`` and ``halves`` are also the families of several tasks of the kit's 10-task
sample (ARC-AGI-1 evaluation); their instances are random, never those tasks' grids.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from arcttt_kaggle.arc.augment import DIHEDRAL_NAMES, dihedral
from arcttt_kaggle.arc.data import Grid, Pair, Task, grid_key

Rule = Callable[[Grid], Grid]
Sampler = Callable[[np.random.Generator], Grid]
FamilyMaker = Callable[[np.random.Generator], tuple[Rule, Sampler]]

MAX_SIDE = 30  # ARC's grid limit


def random_grid(rng: np.random.Generator, h: int, w: int, colors: np.ndarray, density: float) -> Grid:
    """An h x w grid, background 0, each cell coloured with probability ``density`` from ``colors``."""
    g = rng.choice(colors, size=(h, w)).astype(np.uint8)
    g[rng.random((h, w)) >= density] = 0
    return g


def _sampler(rng: np.random.Generator, lo: int, hi: int, square: bool = False, dense: bool = False) -> Sampler:
    """A per-task input distribution: sides in [lo, hi], 1-4 colours, one density."""
    colors = rng.choice(np.arange(1, 10), size=int(rng.integers(1, 5)), replace=False)
    density = float(rng.uniform(0.5, 1.0) if dense else rng.uniform(0.15, 0.6))

    def sample(r: np.random.Generator) -> Grid:
        h = int(r.integers(lo, hi + 1))
        w = h if square else int(r.integers(lo, hi + 1))
        return random_grid(r, h, w, colors, density)

    return sample


def fam_dihedral(rng):
    name = str(rng.choice(DIHEDRAL_NAMES[1:]))
    return (lambda g: dihedral(name, g)), _sampler(rng, 2, 10)


def fam_color_map(rng):
    perm = np.arange(10, dtype=np.uint8)
    moved = rng.choice(np.arange(1, 10), size=int(rng.integers(2, 6)), replace=False)
    perm[moved] = rng.permutation(moved)
    if bool(rng.integers(2)):  # background recoloured too, sometimes
        perm[[0, moved[0]]] = perm[[moved[0], 0]]
    density = float(rng.uniform(0.5, 1.0))
    # inputs drawn from the moved colours, so every pair shows the mapping
    return (lambda g: perm[g]), (lambda r: random_grid(r, int(r.integers(2, 11)), int(r.integers(2, 11)), moved,
                                                      density))


def fam_upscale(rng):
    ky, kx = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    if ky == kx == 1:
        ky = kx = 2
    return (lambda g: np.kron(g, np.ones((ky, kx), dtype=np.uint8))), _sampler(rng, 2, 6)


def fam_tile(rng):
    r, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    if r == c == 1:
        c = 2
    flips = rng.choice(["id", "flipud", "fliplr", "rot180"], size=(r, c))
    if bool(rng.integers(2)):  # a mirror pattern that alternates, the common ARC case
        a, b = rng.choice(["id", "flipud", "fliplr", "rot180"], size=2)
        flips = np.array([[a if (i + j) % 2 == 0 else b for j in range(c)] for i in range(r)])
    return (lambda g: np.block([[dihedral(str(f), g) for f in row] for row in flips])), _sampler(rng, 2, 5)


def fam_self_tile(rng):
    invert = bool(rng.integers(2))

    def rule(g: Grid) -> Grid:
        h, w = g.shape
        out = np.zeros((h * h, w * w), dtype=np.uint8)
        block = np.where(g > 0, 0, g.max()).astype(np.uint8) if invert else g
        for i in range(h):
            for j in range(w):
                if g[i, j]:
                    out[i * h:(i + 1) * h, j * w:(j + 1) * w] = block
        return out

    colors = rng.choice(np.arange(1, 10), size=1)
    return rule, (lambda r: random_grid(r, 3, 3, colors, float(r.uniform(0.3, 0.7))))


OPS = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor,
       "nor": lambda a, b: ~(a | b), "a_not_b": lambda a, b: a & ~b}


def fam_halves(rng):
    op = OPS[str(rng.choice(list(OPS)))]
    vertical = bool(rng.integers(2))  # halves side by side (True) or stacked
    divider = int(rng.integers(0, 10)) if bool(rng.integers(2)) else None
    ca, cb, cout = (int(v) for v in rng.choice(np.arange(1, 10), size=3))
    h, w = int(rng.integers(3, 6)), int(rng.integers(3, 6))

    def sample(r: np.random.Generator) -> Grid:
        a = r.random((h, w)) < 0.5
        b = r.random((h, w)) < 0.5
        parts = [np.where(a, ca, 0).astype(np.uint8), np.where(b, cb, 0).astype(np.uint8)]
        if divider is not None:
            line = np.full((h, 1) if vertical else (1, w), divider, dtype=np.uint8)
            parts.insert(1, line)
        return np.concatenate(parts, axis=1 if vertical else 0)

    def rule(g: Grid) -> Grid:
        a = g[:, :w] if vertical else g[:h]
        b = g[:, -w:] if vertical else g[-h:]
        return np.where(op(a > 0, b > 0), cout, 0).astype(np.uint8)

    return rule, sample


def fam_gravity(rng):
    k = int(rng.integers(4))  # rotate so the fall is always "down", then back

    def rule(g: Grid) -> Grid:
        t = np.rot90(g, k)
        out = np.zeros_like(t)
        for j in range(t.shape[1]):
            col = t[:, j][t[:, j] > 0]
            if col.size:
                out[-col.size:, j] = col
        return np.ascontiguousarray(np.rot90(out, -k))

    return rule, _sampler(rng, 3, 10)


def fam_crop(rng):
    colors = rng.choice(np.arange(1, 10), size=int(rng.integers(1, 4)), replace=False)

    def sample(r: np.random.Generator) -> Grid:
        h, w = int(r.integers(5, 13)), int(r.integers(5, 13))
        oh, ow = int(r.integers(2, min(h, 6) + 1)), int(r.integers(2, min(w, 6) + 1))
        obj = random_grid(r, oh, ow, colors, float(r.uniform(0.5, 0.9)))
        obj[0, r.integers(ow)] = obj[-1, r.integers(ow)] = colors[0]  # the object spans its box
        obj[r.integers(oh), 0] = obj[r.integers(oh), -1] = colors[0]
        g = np.zeros((h, w), dtype=np.uint8)
        y, x = int(r.integers(h - oh + 1)), int(r.integers(w - ow + 1))
        g[y:y + oh, x:x + ow] = obj
        return g

    def rule(g: Grid) -> Grid:
        ys, xs = np.nonzero(g)
        return np.ascontiguousarray(g[ys.min():ys.max() + 1, xs.min():xs.max() + 1])

    return rule, sample


FAMILIES: dict[str, FamilyMaker] = {
    "dihedral": fam_dihedral, "color_map": fam_color_map, "upscale": fam_upscale, "tile": fam_tile,
    "self_tile": fam_self_tile, "halves": fam_halves, "gravity": fam_gravity, "crop": fam_crop,
}


def synthetic_task(family: str, rng: np.random.Generator, task_id: str, pairs: int = 4) -> Task | None:
    """One task of ``family``: ``pairs - 1`` demonstrations and one solved test pair, distinct inputs, every
    output within ARC's 30 x 30 and not all equal to their inputs; None when the draw cannot give that."""
    rule, sample = FAMILIES[family](rng)
    seen: set[bytes] = set()
    out: list[Pair] = []
    for _ in range(4 * pairs):
        g = sample(rng)
        if not g.any() or grid_key(g) in seen:
            continue
        y = np.ascontiguousarray(rule(g), dtype=np.uint8)
        if y.size == 0 or max(y.shape) > MAX_SIDE:
            continue
        seen.add(grid_key(g))
        out.append(Pair(g, y))
        if len(out) == pairs:
            break
    if len(out) < pairs or all(p.input.shape == p.output.shape and np.array_equal(p.input, p.output) for p in out):
        return None
    return Task(task_id, tuple(out[:-1]), (out[-1],))


def synthetic_tasks(n: int, seed: int, excluded_pairs: frozenset = frozenset(),
                    families: tuple[str, ...] = tuple(FAMILIES)) -> list[Task]:
    """``n`` tasks (fewer only when draws fail), families in turn, 3-5 pairs each, deterministic from ``seed``;
    a task sharing any (input, output) pair with ``excluded_pairs`` is dropped."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"synthetic: unknown families {sorted(unknown)}; choose from {sorted(FAMILIES)}")
    rng = np.random.default_rng([seed, 0x5A17])
    tasks = []
    for i in range(n):
        fam = families[i % len(families)]
        task = synthetic_task(fam, rng, f"syn-{seed}-{i}-{fam}", pairs=int(rng.integers(3, 6)))
        if task is None:
            continue
        if excluded_pairs and any((grid_key(p.input), grid_key(p.output)) in excluded_pairs
                                  for p in (*task.train, *task.test)):
            continue
        tasks.append(task)
    return tasks
