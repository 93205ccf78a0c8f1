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
``self_tile``      a 3x3 grid placed at its own non-background cells                                 007bbfb7
``halves``         two halves (with or without a divider) combined cell-wise: and/or/xor/nor          0520fde7
``gravity``        every coloured cell falls to one side                                             3906de3d-like
``crop``           the bounding box of the one object on an empty background                          1cf80156
=================  ================================================================================  =============

Every family generalises ARC-AGI-1 *training* tasks only (``TRAINING_IDS``: the training tasks that are exact
instances of it, found by ``is_instance``; a test checks they are training ids and instances). No rule comes
from an evaluation task: an earlier ``self_tile`` variant (the inverse block) was the rule of evaluation task
0692e18c alone, and is gone. Some evaluation tasks are instances of these families all the same (``tile``,
``upscale``, ``self_tile`` and ``halves`` each have some): ``is_instance`` finds them, so the ablation reports its
rows split by "rule family in the curriculum" and "not".

Held-out safety: a synthetic task is dropped when any of its (input, output) pairs shares a canonical key
(``arc.heldout.canonical_pair_key``: up to rotations, flips and a colour relabelling) with a pair of an excluded
task (``Exclusion.pairs``), the same content check the real corpus gets.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from arcttt_kaggle.arc.augment import DIHEDRAL_NAMES, dihedral
from arcttt_kaggle.arc.data import Grid, Pair, Task, grid_key
from arcttt_kaggle.arc.heldout import canonical_pair_keys

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


def self_tile(g: Grid) -> Grid:
    """The grid placed at each of its own non-background cells (007bbfb7)."""
    h, w = g.shape
    out = np.zeros((h * h, w * w), dtype=np.uint8)
    for i in range(h):
        for j in range(w):
            if g[i, j]:
                out[i * h:(i + 1) * h, j * w:(j + 1) * w] = g
    return out


def fam_self_tile(rng):
    colors = rng.choice(np.arange(1, 10), size=1)
    return self_tile, (lambda r: random_grid(r, 3, 3, colors, float(r.uniform(0.3, 0.7))))


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


def gravity(g: Grid, k: int) -> Grid:
    """Every coloured cell falls to one side (the grid turned k quarter turns so the fall is "down", then back)."""
    t = np.rot90(g, k)
    out = np.zeros_like(t)
    for j in range(t.shape[1]):
        col = t[:, j][t[:, j] > 0]
        if col.size:
            out[-col.size:, j] = col
    return np.ascontiguousarray(np.rot90(out, -k))


def fam_gravity(rng):
    k = int(rng.integers(4))
    return (lambda g: gravity(g, k)), _sampler(rng, 3, 10)


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

    return crop, sample


def crop(g: Grid) -> Grid:
    """The bounding box of the non-background cells."""
    ys, xs = np.nonzero(g)
    return np.ascontiguousarray(g[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


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
    a task sharing a canonical pair key (``arc.heldout.canonical_pair_key``) with ``excluded_pairs`` is dropped."""
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
        if excluded_pairs and canonical_pair_keys(task) & excluded_pairs:
            continue
        tasks.append(task)
    return tasks


# -- which tasks a family generalises ---------------------------------------------------------------------------
# The ARC-AGI-1 training tasks that are exact instances of each family (``is_instance`` over every known pair,
# demonstrations and test; listed by running it on the training file, which a test repeats). The curriculum's
# rules come from these tasks and no others.
TRAINING_IDS: dict[str, tuple[str, ...]] = {
    "dihedral": ("3c9b0459", "6150a2bd", "67a3c6ac", "68b16354", "74dd1130", "9dfd6313", "ed36ccf7"),
    "color_map": ("0d3d703e", "b1948b0a", "c8f0f002", "d511f180"),
    "upscale": ("9172f3a0", "c59eb873"),
    "tile": ("3af2c5a8", "4c4377d9", "62c24649", "67e8384a", "6d0aefbc", "6fa7a44f", "8be77c9e", "8d5021e8",
             "a416b8f3", "c9e6f938"),
    "self_tile": ("007bbfb7",),
    "halves": ("0520fde7", "1b2d62fb", "3428a4f5", "6430c8c4", "94f9d214", "99b1bc43", "ce4f8723", "dae9d2b5",
               "f2829549", "fafffa47"),
    "gravity": ("1e0a9b12", "3906de3d"),
    "crop": ("1cf80156",),
}


def _same(a: Grid, b: Grid) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _all(pairs: list[Pair], rule: Rule) -> bool:
    return all(_same(np.asarray(rule(p.input)), p.output) for p in pairs)


def _tile_factors(pairs: list[Pair]) -> tuple[int, int] | None:
    """(ky, kx) when every output is the input's size times the same integer factors, not both 1."""
    first = pairs[0]
    (h, w), (oh, ow) = first.input.shape, first.output.shape
    if oh % h or ow % w or (oh == h and ow == w):
        return None
    ky, kx = oh // h, ow // w
    return (ky, kx) if all(p.output.shape == (p.input.shape[0] * ky, p.input.shape[1] * kx) for p in pairs) else None


def _is_dihedral(pairs):
    return any(_all(pairs, lambda g, n=n: dihedral(n, g)) for n in DIHEDRAL_NAMES[1:])


def _is_color_map(pairs):
    m: dict[int, int] = {}
    for p in pairs:
        if p.input.shape != p.output.shape:
            return False
        for a, b in zip(p.input.ravel().tolist(), p.output.ravel().tolist()):
            if m.setdefault(a, b) != b:
                return False
    return any(a != b for a, b in m.items())


def _is_upscale(pairs):
    k = _tile_factors(pairs)
    return k is not None and _all(pairs, lambda g: np.kron(g, np.ones(k, dtype=np.uint8)))


def _is_tile(pairs):
    k = _tile_factors(pairs)
    if k is None:
        return False
    for p in pairs:
        h, w = p.input.shape
        for a in range(k[0]):
            for b in range(k[1]):
                block = p.output[a * h:(a + 1) * h, b * w:(b + 1) * w]
                if not any(_same(block, dihedral(f, p.input)) for f in ("id", "flipud", "fliplr", "rot180")):
                    return False
    return True


def _is_self_tile(pairs):
    return all(p.input.shape[0] * p.input.shape[1] <= 100 for p in pairs) and _all(pairs, self_tile)


def _is_halves(pairs):
    for vertical in (True, False):
        for divider in (0, 1):
            def split(p: Pair):
                h, w = p.output.shape
                want = (h, 2 * w + divider) if vertical else (2 * h + divider, w)
                if p.input.shape != want:
                    return None
                return (p.input[:, :w], p.input[:, -w:]) if vertical else (p.input[:h], p.input[-h:])
            halves = [split(p) for p in pairs]
            if any(x is None for x in halves):
                continue
            for op in OPS.values():
                masks = [op(a > 0, b > 0) for a, b in halves]
                if all(np.array_equal(p.output > 0, m) for p, m in zip(pairs, masks)) and \
                        len({int(c) for p, m in zip(pairs, masks) for c in p.output[m]}) <= 1:
                    return True
    return False


def _is_gravity(pairs):
    return any(_all(pairs, lambda g, k=k: gravity(g, k)) for k in range(4))


def _is_crop(pairs):
    return all(p.input.any() for p in pairs) and _all(pairs, crop)


DETECTORS: dict[str, Callable[[list[Pair]], bool]] = {
    "dihedral": _is_dihedral, "color_map": _is_color_map, "upscale": _is_upscale, "tile": _is_tile,
    "self_tile": _is_self_tile, "halves": _is_halves, "gravity": _is_gravity, "crop": _is_crop,
}


def is_instance(task: Task, family: str) -> bool:
    """Whether every known pair of ``task`` (demonstrations, solved test pairs) follows ``family``'s rule."""
    pairs = [p for p in (*task.train, *task.test) if p.output is not None]
    return bool(pairs) and DETECTORS[family](pairs)


def curriculum_families(task: Task) -> list[str]:
    """The curriculum families ``task`` is an exact instance of (empty: its rule is not in the curriculum)."""
    return [f for f in FAMILIES if is_instance(task, f)]
