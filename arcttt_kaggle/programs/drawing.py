"""Drawing primitives: rays from cells, lines between aligned cells, outlines around objects.

These cover a common family of same-shape ARC tasks where the output is the input plus drawn strokes.
Strokes only paint background cells (existing content is never overwritten), which keeps each primitive
a pure "add ink" step that composes with the others.
"""

from __future__ import annotations

import numpy as np

from . import objects as ob
from .primitives import Grid

DIRECTIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "up": ((-1, 0),), "down": ((1, 0),), "left": ((0, -1),), "right": ((0, 1),),
    "horizontal": ((0, -1), (0, 1)), "vertical": ((-1, 0), (1, 0)),
    "cross": ((-1, 0), (1, 0), (0, -1), (0, 1)),
    "diagonals": ((-1, -1), (-1, 1), (1, -1), (1, 1)),
    "star": ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)),
}


def extend_rays(g: Grid, direction: str, bg: int, pixels_only: bool = False, through: bool = False) -> Grid | None:
    """From each non-background cell, paint its color outward in ``direction`` over background cells.

    A ray stops at the first non-background cell (or passes over it when ``through``) and at the border.
    ``pixels_only``: only isolated single cells (1-cell objects) emit rays. ``None`` when nothing is drawn.
    """
    h, w = g.shape
    if pixels_only:
        sources = [tuple(np.argwhere(o.mask)[0]) for o in ob.components(g, bg, diagonal=True, by_color=False)
                   if o.size == 1]
    else:
        sources = [tuple(p) for p in np.argwhere(g != bg)]
    out = g.copy()
    for r, c in sources:
        color = g[r, c]
        for dy, dx in DIRECTIONS[direction]:
            y, x = r + dy, c + dx
            while 0 <= y < h and 0 <= x < w:
                if g[y, x] != bg:
                    if not through:
                        break
                elif out[y, x] == bg:
                    out[y, x] = color
                y, x = y + dy, x + dx
    return None if np.array_equal(out, g) else out


def _lines(g: Grid, orientation: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row, column) index arrays of every line of cells in the given orientation."""
    h, w = g.shape
    if orientation == "rows":
        return [(np.full(w, r), np.arange(w)) for r in range(h)]
    if orientation == "columns":
        return [(np.arange(h), np.full(h, c)) for c in range(w)]
    if orientation == "diagonals":
        lines = []
        for d in range(-(h - 1), w):  # down-right diagonals c - r = d, then down-left diagonals r + c = d'
            r = np.arange(max(0, -d), min(h, w - d))
            lines.append((r, r + d))
        for s in range(h + w - 1):
            r = np.arange(max(0, s - w + 1), min(h, s + 1))
            lines.append((r, s - r))
        return lines
    raise ValueError(f"unknown orientation {orientation!r}")


def connect_aligned(g: Grid, bg: int, orientation: str = "both") -> Grid | None:
    """Join every two same-colored cells on one line by a segment of their color over background.

    Only consecutive non-background cells on the line are joined (nothing else between them).
    ``orientation``: ``rows``, ``columns``, ``both`` (rows and columns) or ``diagonals``. ``None`` when
    nothing is drawn.
    """
    out = g.copy()
    kinds = ["rows", "columns"] if orientation == "both" else [orientation]
    for kind in kinds:
        for rr, cc in _lines(g, kind):
            vals = g[rr, cc]
            idx = np.flatnonzero(vals != bg)
            for a, b in zip(idx[:-1], idx[1:]):
                if b - a > 1 and vals[a] == vals[b]:
                    seg_r, seg_c = rr[a + 1:b], cc[a + 1:b]
                    free = out[seg_r, seg_c] == bg
                    out[seg_r[free], seg_c[free]] = vals[a]
    return None if np.array_equal(out, g) else out


def fill_object_boxes(g: Grid, bg: int, color: int) -> Grid | None:
    """Paint ``color`` on the background cells inside each object's bounding box (8-connected, any colors)."""
    out = g.copy()
    for o in ob.components(g, bg, diagonal=True, by_color=False):
        r0, r1, c0, c1 = o.box
        box = out[r0:r1, c0:c1]
        box[g[r0:r1, c0:c1] == bg] = color
    return None if np.array_equal(out, g) else out


def outline_objects(g: Grid, bg: int, color: int, diagonal: bool = True) -> Grid | None:
    """Paint ``color`` on background cells touching an object (4-, or with ``diagonal`` 8-neighbours)."""
    near = np.zeros(g.shape, dtype=bool)
    fg = np.pad(g != bg, 1)
    h, w = g.shape
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if diagonal else [])
    for dy, dx in steps:
        near |= fg[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    paint = near & (g == bg)
    if not paint.any():
        return None
    out = g.copy()
    out[paint] = color
    return out
