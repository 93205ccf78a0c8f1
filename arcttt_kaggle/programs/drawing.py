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


def connect_aligned(g: Grid, bg: int, orientation: str = "both") -> Grid | None:
    """Join every two same-colored cells in one row or column by a line of their color over background.

    Only pairs with nothing but background between them are joined. ``orientation``: ``rows``,
    ``columns`` or ``both``. ``None`` when nothing is drawn.
    """
    out = g.copy()
    views = []
    if orientation in ("rows", "both"):
        views.append((g, out))
    if orientation in ("columns", "both"):
        views.append((g.T, out.T))
    for src, dst in views:
        for i in range(src.shape[0]):
            row = src[i]
            idx = np.flatnonzero(row != bg)
            for a, b in zip(idx[:-1], idx[1:]):
                if b - a > 1 and row[a] == row[b]:
                    seg = dst[i, a + 1:b]
                    seg[seg == bg] = row[a]
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
