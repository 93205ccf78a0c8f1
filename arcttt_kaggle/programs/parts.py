"""Composition of parts: splitting a grid by separator lines or into equal blocks, and combining the parts.

Many ARC tasks show two or more panels side by side (often divided by a line of one color) and ask for
their intersection, union, difference, or an overlay; others show a board of cells and ask for one cell,
or for each cell summarised as a pixel. These functions do the splitting and combining; which combination
and which output colors apply is inferred from the demonstrations in ``fitters.py``.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .primitives import Grid, background_color

Parts = list[list[Grid]]  # rows of parts, each row left to right


def _runs(is_sep: np.ndarray) -> list[tuple[int, int]]:
    """Maximal half-open runs of False (non-separator) positions."""
    runs, start = [], None
    for i, s in enumerate(is_sep.tolist() + [True]):
        if not s and start is None:
            start = i
        elif s and start is not None:
            runs.append((start, i))
            start = None
    return runs


def separator_lines(g: Grid) -> tuple[int, np.ndarray, np.ndarray] | None:
    """Find separator lines: full rows/columns of one color that split the grid into at least two parts.

    Returns ``(color, row_is_sep, col_is_sep)``. Preferred: a color that appears *only* on its full lines
    (a pure divider), then other non-background colors, then the background.
    """
    bg = background_color(g)
    found = []
    for c in np.unique(g).tolist():
        rows = np.all(g == c, axis=1)
        cols = np.all(g == c, axis=0)
        if not rows.any() and not cols.any():
            continue
        if len(_runs(rows)) * len(_runs(cols)) < 2:
            continue
        pure = not np.any((g == c) & ~rows[:, None] & ~cols[None, :])
        found.append(((not pure, c == bg, c), (c, rows, cols)))
    return min(found, key=lambda f: f[0])[1] if found else None


def split_by_separators(g: Grid) -> Parts | None:
    """Parts between separator lines (``None`` without separators)."""
    found = separator_lines(g)
    if found is None:
        return None
    _, rows, cols = found
    return [[g[r0:r1, c0:c1].copy() for c0, c1 in _runs(cols)] for r0, r1 in _runs(rows)]


def split_equal(g: Grid, ny: int, nx: int, gap: int = 0) -> Parts | None:
    """Split into ``ny`` x ``nx`` equal blocks, with ``gap`` cells (separator lines) between blocks."""
    h, w = g.shape
    bh, bw = (h - gap * (ny - 1)), (w - gap * (nx - 1))
    if ny < 1 or nx < 1 or bh <= 0 or bw <= 0 or bh % ny or bw % nx:
        return None
    bh, bw = bh // ny, bw // nx
    return [[g[i * (bh + gap):i * (bh + gap) + bh, j * (bw + gap):j * (bw + gap) + bw].copy() for j in range(nx)]
            for i in range(ny)]


def flat(parts: Parts) -> list[Grid]:
    return [p for row in parts for p in row]


def same_shapes(parts: Sequence[Grid]) -> bool:
    return len(parts) >= 2 and all(p.shape == parts[0].shape for p in parts)


BOOL_OPS: tuple[str, ...] = ("and", "or", "xor", "nor", "nand", "a_not_b", "b_not_a", "one")


def combine_masks(masks: Sequence[np.ndarray], op: str) -> np.ndarray:
    """Combine boolean masks cell-wise. ``a_not_b``/``b_not_a`` use the first and last mask; ``one`` = exactly one."""
    stack = np.stack(masks)
    if op == "and":
        return stack.all(axis=0)
    if op == "or":
        return stack.any(axis=0)
    if op == "xor":
        return (stack.sum(axis=0) % 2) == 1
    if op == "nor":
        return ~stack.any(axis=0)
    if op == "nand":
        return ~stack.all(axis=0)
    if op == "a_not_b":
        return stack[0] & ~stack[-1]
    if op == "b_not_a":
        return stack[-1] & ~stack[0]
    if op == "one":
        return stack.sum(axis=0) == 1
    raise ValueError(f"unknown boolean op {op!r}")


def overlay_parts(parts: Sequence[Grid], order: Sequence[int], bg: int) -> Grid | None:
    """Stack parts so that ``order[0]`` is on top: each cell takes the first part in ``order`` that is not ``bg``."""
    if not same_shapes(parts):
        return None
    out = np.full(parts[0].shape, bg, dtype=np.uint8)
    for i in reversed(order):
        p = parts[i]
        out = np.where(p != bg, p, out).astype(np.uint8)
    return out


def overlay_by_color_priority(parts: Sequence[Grid], priority: Sequence[int], bg: int) -> Grid | None:
    """Stack parts so that, where parts disagree, the color earliest in ``priority`` wins."""
    if not same_shapes(parts):
        return None
    out = np.full(parts[0].shape, bg, dtype=np.uint8)
    for c in reversed(priority):
        for p in parts:
            out[p == c] = c
    return out


def part_summary(p: Grid, bg: int) -> int:
    """A part as one pixel: its most common non-background color (``bg`` if it has none)."""
    counts = np.bincount(p.ravel(), minlength=10)
    counts[bg] = 0
    return int(np.argmax(counts)) if counts.any() else bg


def parts_to_pixels(parts: Parts, bg: int) -> Grid:
    """Shrink a board of cells to one pixel per cell (its dominant non-background color)."""
    return np.array([[part_summary(p, bg) for p in row] for row in parts], dtype=np.uint8)


def select_part(parts: Sequence[Grid], how: str, bg: int) -> Grid | None:
    """Pick one part: ``unique`` (differs from all others, which are equal to some other), ``most``/``least``
    (non-background cells), ``most_colors``/``least_colors``. ``None`` on ties."""
    if len(parts) < 2:
        return None
    if how == "unique":
        keys = [p.shape + tuple(p.ravel().tolist()) for p in parts]
        counts = Counter(keys)
        singles = [p for p, k in zip(parts, keys) if counts[k] == 1]
        return singles[0].copy() if len(singles) == 1 else None
    if how in ("most", "least"):
        vals = [int((p != bg).sum()) for p in parts]
    elif how in ("most_colors", "least_colors"):
        vals = [len(set(np.unique(p).tolist()) - {bg}) for p in parts]
    else:
        raise ValueError(f"unknown part selection {how!r}")
    best = max(vals) if how.startswith("most") else min(vals)
    hits = [p for p, v in zip(parts, vals) if v == best]
    return hits[0].copy() if len(hits) == 1 else None


PART_SELECTIONS: tuple[str, ...] = ("unique", "most", "least", "most_colors", "least_colors")


def unique_color_part(parts: Sequence[Grid], bg: int) -> Grid | None:
    """The part whose set of colors differs from all other parts' (when the others share theirs)."""
    keys = [tuple(sorted(set(np.unique(p).tolist()) - {bg})) for p in parts]
    counts = Counter(keys)
    singles = [p for p, k in zip(parts, keys) if counts[k] == 1]
    return singles[0].copy() if len(parts) > 2 and len(singles) == 1 else None
