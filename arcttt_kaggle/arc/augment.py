"""Invertible task augmentations: the 8 dihedral transforms, color permutations, demonstration order.

Each dihedral transform is a small function with its inverse in an explicit registry. An ``Augmentation``
composes one dihedral element, one color permutation and one demonstration order; it applies to a single grid
or to a whole task, has an exact ``inverse()``, composes with ``then()``, and serializes to a short string
(``"rot90.c0213456789.o2,0,1"``) that parses back without ``eval``. Everything is deterministic from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .data import NUM_COLORS, Grid, Pair, Task

# name -> (forward, name of its inverse). Order fixes the dihedral index used in serialized strings.
DIHEDRAL: dict[str, tuple[Callable[[Grid], Grid], str]] = {
    "id": (lambda g: g, "id"),
    "rot90": (lambda g: np.rot90(g, 1), "rot270"),
    "rot180": (lambda g: np.rot90(g, 2), "rot180"),
    "rot270": (lambda g: np.rot90(g, 3), "rot90"),
    "flipud": (lambda g: g[::-1, :], "flipud"),
    "fliplr": (lambda g: g[:, ::-1], "fliplr"),
    "transpose": (lambda g: g.T, "transpose"),
    "antitranspose": (lambda g: np.rot90(g, 2).T, "antitranspose"),
}
DIHEDRAL_NAMES: tuple[str, ...] = tuple(DIHEDRAL)
IDENTITY_COLORS: tuple[int, ...] = tuple(range(NUM_COLORS))


def dihedral(name: str, grid: Grid) -> Grid:
    return np.ascontiguousarray(DIHEDRAL[name][0](grid))


def dihedral_inverse(name: str) -> str:
    return DIHEDRAL[name][1]


def _dihedral_product(first: str, second: str) -> str:
    """The single dihedral element equal to applying ``first`` then ``second`` (found on a generic grid)."""
    probe = np.arange(6).reshape(2, 3)
    target = dihedral(second, dihedral(first, probe))
    for name in DIHEDRAL_NAMES:
        out = dihedral(name, probe)
        if out.shape == target.shape and np.array_equal(out, target):
            return name
    raise AssertionError("the dihedral group is closed")  # unreachable


def _check_perm(p: Sequence[int], n: int, what: str) -> tuple[int, ...]:
    p = tuple(int(v) for v in p)
    if sorted(p) != list(range(n)):
        raise ValueError(f"{what} must be a permutation of 0..{n - 1}, got {p}")
    return p


def _invert_perm(p: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(p)
    for i, v in enumerate(p):
        inv[v] = i
    return tuple(inv)


@dataclass(frozen=True)
class Augmentation:
    """One invertible view of a task.

    ``dihedral``: a name from ``DIHEDRAL``. ``colors``: ``colors[c]`` is the new color of color ``c``.
    ``order``: demonstration order, new train pair ``i`` is old pair ``order[i]``; ``None`` keeps the order
    (and fits tasks of any size). Grids are transformed geometry first, then colors.
    """

    dihedral: str = "id"
    colors: tuple[int, ...] = IDENTITY_COLORS
    order: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.dihedral not in DIHEDRAL:
            raise ValueError(f"unknown dihedral transform {self.dihedral!r}; known: {', '.join(DIHEDRAL_NAMES)}")
        object.__setattr__(self, "colors", _check_perm(self.colors, NUM_COLORS, "colors"))
        if self.order is not None:
            object.__setattr__(self, "order", _check_perm(self.order, len(self.order), "order"))

    # -- applying -------------------------------------------------------------------------------------------
    def apply_grid(self, grid: Grid) -> Grid:
        g = dihedral(self.dihedral, np.asarray(grid, dtype=np.uint8))
        if self.colors != IDENTITY_COLORS:
            g = np.asarray(self.colors, dtype=np.uint8)[g]
        return g

    def apply_pair(self, pair: Pair) -> Pair:
        return Pair(self.apply_grid(pair.input), None if pair.output is None else self.apply_grid(pair.output))

    def invert_grid(self, grid: Grid) -> Grid:
        return self.inverse().apply_grid(grid)

    def reorder(self, items: Sequence) -> list:
        if self.order is None:
            return list(items)
        if len(self.order) != len(items):
            raise ValueError(f"order {self.order} is for {len(self.order)} demonstrations, task has {len(items)}")
        return [items[i] for i in self.order]

    def apply_task(self, task: Task) -> Task:
        return Task(task.id, tuple(self.apply_pair(p) for p in self.reorder(task.train)),
                    tuple(self.apply_pair(p) for p in task.test))

    # -- group structure ------------------------------------------------------------------------------------
    def inverse(self) -> "Augmentation":
        return Augmentation(dihedral_inverse(self.dihedral), _invert_perm(self.colors),
                            None if self.order is None else _invert_perm(self.order))

    def then(self, other: "Augmentation") -> "Augmentation":
        """The augmentation equal to applying ``self`` first, then ``other``."""
        colors = tuple(other.colors[c] for c in self.colors)
        if self.order is None or other.order is None:
            order = self.order if other.order is None else other.order
        else:
            if len(self.order) != len(other.order):
                raise ValueError("cannot compose demonstration orders of different lengths")
            order = tuple(self.order[i] for i in other.order)
        return Augmentation(_dihedral_product(self.dihedral, other.dihedral), colors, order)

    @property
    def is_identity(self) -> bool:
        return (self.dihedral == "id" and self.colors == IDENTITY_COLORS
                and (self.order is None or self.order == tuple(range(len(self.order)))))

    # -- serialization --------------------------------------------------------------------------------------
    def to_string(self) -> str:
        parts = [self.dihedral, "c" + "".join(str(c) for c in self.colors)]
        if self.order is not None:
            parts.append("o" + ",".join(str(i) for i in self.order))
        return ".".join(parts)

    @classmethod
    def from_string(cls, s: str) -> "Augmentation":
        parts = s.split(".")
        if not 2 <= len(parts) <= 3 or not parts[1].startswith("c") or len(parts[1]) != NUM_COLORS + 1:
            raise ValueError(f"not an augmentation string: {s!r} (expected 'dihedral.cPERM[.oORDER]')")
        try:
            colors = tuple(int(ch) for ch in parts[1][1:])
            order = None
            if len(parts) == 3:
                if not parts[2].startswith("o"):
                    raise ValueError("order part must start with 'o'")
                # "o" alone is the empty order (a view of a task with no demonstrations).
                order = tuple(int(v) for v in parts[2][1:].split(",")) if parts[2][1:] else ()
        except ValueError as e:
            raise ValueError(f"not an augmentation string: {s!r} ({e})") from None
        return cls(parts[0], colors, order)

    def __str__(self) -> str:
        return self.to_string()

    @property
    def family(self) -> str:
        """The transformation family used by two-level voting: the geometric part of the view."""
        return self.dihedral

    # -- sampling -------------------------------------------------------------------------------------------
    @classmethod
    def random(cls, rng: np.random.Generator, num_train: int | None = None, *, geometry: bool = True,
               colors: bool = True, keep_background: bool = True, order: bool = True) -> "Augmentation":
        """A random view. ``keep_background`` keeps color 0 fixed (black is background in most ARC tasks)."""
        d = DIHEDRAL_NAMES[int(rng.integers(len(DIHEDRAL_NAMES)))] if geometry else "id"
        perm = list(range(NUM_COLORS))
        if colors:
            movable = perm[1:] if keep_background else perm
            shuffled = [int(v) for v in rng.permutation(movable)]
            perm = ([0] + shuffled) if keep_background else shuffled
        o = tuple(int(v) for v in rng.permutation(num_train)) if order and num_train else None
        return cls(d, tuple(perm), o)


def sample_augmentations(n: int, seed: int, num_train: int | None = None, *, include_identity: bool = True,
                         geometry: bool = True, colors: bool = True, keep_background: bool = True,
                         order: bool = True, max_tries: int = 50) -> list[Augmentation]:
    """``n`` distinct augmentations, deterministic from ``seed``; the first is the identity when asked.

    The 8 dihedral elements are cycled first so small ``n`` covers geometry evenly (rather than drawing the
    same rotation twice), each paired with a random color permutation and demonstration order.
    """
    rng = np.random.default_rng(seed)
    out: list[Augmentation] = []
    seen: set[str] = set()
    if include_identity and n > 0:
        ident = Augmentation(order=tuple(range(num_train)) if order and num_train else None)
        out.append(ident)
        seen.add(ident.to_string())
    geoms = [d for d in DIHEDRAL_NAMES if d != "id"] + ["id"] if geometry else ["id"]
    tries = 0
    while len(out) < n and tries < n * max_tries:
        tries += 1
        base = Augmentation.random(rng, num_train, geometry=False, colors=colors,
                                   keep_background=keep_background, order=order)
        aug = Augmentation(geoms[(len(out) - int(include_identity)) % len(geoms)], base.colors, base.order)
        key = aug.to_string()
        if key not in seen:
            seen.add(key)
            out.append(aug)
    return out
