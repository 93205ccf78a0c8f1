"""Geometry and color primitives: small pure functions on ARC grids.

Every function takes and returns 2-D ``uint8`` numpy arrays (never mutating its input) and returns ``None``
when it does not apply (an empty crop, a non-divisible downscale, ...), so the search can treat "does not
apply" and "applies" uniformly without exceptions. Parameters that the search infers from demonstrations
(factors, color maps, tile layouts) are plain arguments here; inference lives in ``fitters.py``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

Grid = np.ndarray

# The 8 symmetries of the square, by name. Order = search order (identity first, cheap and common next).
DIHEDRAL: tuple[str, ...] = ("id", "rot90", "rot180", "rot270", "flipud", "fliplr", "transpose", "antitranspose")

_INVERSE = {"id": "id", "rot90": "rot270", "rot180": "rot180", "rot270": "rot90", "flipud": "flipud",
            "fliplr": "fliplr", "transpose": "transpose", "antitranspose": "antitranspose"}


def dihedral(g: Grid, name: str) -> Grid:
    """Apply the named symmetry of the square (``rot90`` is counter-clockwise, as ``np.rot90``)."""
    if name == "id":
        return g.copy()
    if name == "rot90":
        return np.ascontiguousarray(np.rot90(g, 1))
    if name == "rot180":
        return np.ascontiguousarray(np.rot90(g, 2))
    if name == "rot270":
        return np.ascontiguousarray(np.rot90(g, 3))
    if name == "flipud":
        return np.ascontiguousarray(g[::-1, :])
    if name == "fliplr":
        return np.ascontiguousarray(g[:, ::-1])
    if name == "transpose":
        return np.ascontiguousarray(g.T)
    if name == "antitranspose":
        return np.ascontiguousarray(np.rot90(g, 2).T)
    raise ValueError(f"unknown dihedral transform {name!r}")


def dihedral_inverse(name: str) -> str:
    """The transform that undoes ``name`` (rotations invert to the opposite rotation, reflections to themselves)."""
    return _INVERSE[name]


def color_counts(g: Grid) -> np.ndarray:
    """Cells per color 0..9 (length-10 int array)."""
    return np.bincount(g.ravel(), minlength=10)[:10]


def background_color(g: Grid) -> int:
    """The background: black (0) when present in at least a quarter of cells, else the most common color.

    ARC backgrounds are black in most tasks even when a large object outnumbers it, hence the bias to 0.
    """
    counts = color_counts(g)
    if counts[0] * 4 >= g.size:
        return 0
    return int(np.argmax(counts))


def most_common_color(g: Grid, exclude: Iterable[int] = ()) -> int | None:
    """The most common color not in ``exclude``; ``None`` when none remains or the top count is tied."""
    counts = color_counts(g).astype(np.int64)
    for c in exclude:
        counts[c] = 0
    top = counts.max()
    if top == 0 or int((counts == top).sum()) > 1:
        return None
    return int(np.argmax(counts))


def least_common_color(g: Grid, exclude: Iterable[int] = ()) -> int | None:
    """The least common present color not in ``exclude``; ``None`` when none remains or the count is tied."""
    counts = color_counts(g).astype(np.int64)
    for c in exclude:
        counts[c] = 0
    present = counts[counts > 0]
    if present.size == 0:
        return None
    low = present.min()
    if int((counts == low).sum()) > 1:
        return None
    return int(np.where(counts == low)[0][0])


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)`` (half-open) of the true cells of a boolean mask; ``None`` if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_to_content(g: Grid, bg: int | None = None) -> Grid | None:
    """Crop to the bounding box of the cells that are not background (``None`` for an all-background grid)."""
    bg = background_color(g) if bg is None else bg
    box = bounding_box(g != bg)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    return g[r0:r1, c0:c1].copy()


def crop_to_color(g: Grid, color: int) -> Grid | None:
    """Crop to the bounding box of one color (e.g. a frame that marks the region of interest)."""
    box = bounding_box(g == color)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    return g[r0:r1, c0:c1].copy()


def crop_inside_frame(g: Grid, color: int) -> Grid | None:
    """The interior of the bounding box of ``color`` (the box minus its one-cell border), if non-empty."""
    box = bounding_box(g == color)
    if box is None or box[1] - box[0] < 3 or box[3] - box[2] < 3:
        return None
    r0, r1, c0, c1 = box
    return g[r0 + 1:r1 - 1, c0 + 1:c1 - 1].copy()


def scale_up(g: Grid, fy: int, fx: int) -> Grid | None:
    """Each cell becomes an ``fy`` x ``fx`` block; ``None`` beyond 30 cells per side."""
    if fy < 1 or fx < 1 or g.shape[0] * fy > 30 or g.shape[1] * fx > 30:
        return None
    return np.repeat(np.repeat(g, fy, axis=0), fx, axis=1)


def scale_down(g: Grid, fy: int, fx: int) -> Grid | None:
    """Inverse of ``scale_up``: only when the grid divides into uniform ``fy`` x ``fx`` blocks (else ``None``)."""
    h, w = g.shape
    if fy < 1 or fx < 1 or h % fy or w % fx or (fy == 1 and fx == 1):
        return None
    blocks = g.reshape(h // fy, fy, w // fx, fx)
    small = blocks[:, 0, :, 0]
    if not np.array_equal(np.repeat(np.repeat(small, fy, axis=0), fx, axis=1), g):
        return None
    return small.copy()


def tile(g: Grid, ny: int, nx: int) -> Grid | None:
    """Repeat the grid ``ny`` times down and ``nx`` times across."""
    if ny < 1 or nx < 1 or g.shape[0] * ny > 30 or g.shape[1] * nx > 30:
        return None
    return np.tile(g, (ny, nx))


def concat(grids: Sequence[Grid], axis: int) -> Grid | None:
    """Join grids side by side (``axis=1``) or stacked (``axis=0``); ``None`` if their edges do not match
    or the result exceeds 30 cells per side."""
    if not grids or any(g.shape[1 - axis] != grids[0].shape[1 - axis] for g in grids):
        return None
    out = np.concatenate(list(grids), axis=axis)
    return out if max(out.shape) <= 30 else None


def tile_layout(g: Grid, layout: Sequence[Sequence[str]]) -> Grid | None:
    """Tile with a per-position dihedral transform, e.g. ``(("id", "fliplr"), ("flipud", "rot180"))``.

    ``"zero:<c>"`` fills a tile with color ``c``. All tiles must have the same shape (square grids allow
    rotations and transposes anywhere; non-square grids only the shape-preserving transforms).
    """
    rows = []
    for row in layout:
        blocks = [np.full(g.shape, int(name[5:]), dtype=np.uint8) if name.startswith("zero:") else dihedral(g, name)
                  for name in row]
        joined = concat(blocks, axis=1) if all(b.shape == blocks[0].shape for b in blocks) else None
        if joined is None:
            return None
        rows.append(joined)
    return concat(rows, axis=0)


def mirror_tile(g: Grid, ny: int, nx: int) -> Grid | None:
    """Tile so that neighbours are mirror images (odd columns flipped left-right, odd rows flipped up-down)."""
    names = {(0, 0): "id", (0, 1): "fliplr", (1, 0): "flipud", (1, 1): "rot180"}
    return tile_layout(g, [[names[i % 2, j % 2] for j in range(nx)] for i in range(ny)])


def fractal(g: Grid, bg: int, invert: bool = False) -> Grid | None:
    """Kronecker self-similarity: tile (i, j) is the grid where cell (i, j) is not background, else background.

    ``invert`` places copies where the cell *is* background instead.
    """
    h, w = g.shape
    if h * h > 30 or w * w > 30:
        return None
    on = (g == bg) if invert else (g != bg)
    out = np.full((h * h, w * w), bg, dtype=np.uint8)
    for i, j in zip(*np.nonzero(on)):
        out[i * h:(i + 1) * h, j * w:(j + 1) * w] = g
    return out


def shift(g: Grid, dy: int, dx: int, fill: int) -> Grid:
    """Translate content by ``(dy, dx)`` cells; cells moved in from outside take ``fill``."""
    h, w = g.shape
    out = np.full_like(g, fill)
    src = g[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def learn_color_map(pairs: Iterable[tuple[Grid, Grid]]) -> dict[int, int] | None:
    """The cell-wise map ``input color -> output color`` consistent with every pair, or ``None``.

    Pairs must have equal shapes, and each input color must always become the same output color.
    """
    table = np.full(10, -1, dtype=np.int64)
    for x, y in pairs:
        if x.shape != y.shape:
            return None
        codes = np.unique(x.astype(np.int64) * 10 + y)
        src, dst = codes // 10, codes % 10
        if np.unique(src).size != src.size:  # one input color -> two output colors
            return None
        known = table[src]
        if np.any((known >= 0) & (known != dst)):
            return None
        table[src] = dst
    return {int(c): int(table[c]) for c in range(10) if table[c] >= 0}


def apply_color_map(g: Grid, cmap: dict[int, int]) -> Grid:
    """Recolor cell-wise; colors missing from ``cmap`` stay as they are."""
    lut = np.arange(10, dtype=np.uint8)
    for a, b in cmap.items():
        lut[a] = b
    return lut[g]


def keep_color(g: Grid, color: int, bg: int) -> Grid:
    """Only ``color`` survives; every other cell becomes ``bg``."""
    return np.where(g == color, g, np.uint8(bg)).astype(np.uint8)


def remove_color(g: Grid, color: int, bg: int) -> Grid:
    """``color`` cells become ``bg`` (e.g. to drop noise or a marker)."""
    return np.where(g == color, np.uint8(bg), g).astype(np.uint8)


def gravity(g: Grid, direction: str, bg: int) -> Grid:
    """Every non-background cell slides as far as it can towards ``direction`` (down/up/left/right), keeping order."""
    k = {"down": 0, "right": 3, "up": 2, "left": 1}[direction]
    # Rotate so the fall is "down", compact each column, rotate back.
    r = np.rot90(g, k)
    out = np.full_like(r, bg)
    for j in range(r.shape[1]):
        col = r[:, j]
        vals = col[col != bg]
        if vals.size:
            out[r.shape[0] - vals.size:, j] = vals
    return np.ascontiguousarray(np.rot90(out, -k))


def overlay(base: Grid, top: Grid, bg: int) -> Grid | None:
    """``top`` painted over ``base`` where ``top`` is not background (same shapes only)."""
    if base.shape != top.shape:
        return None
    return np.where(top != bg, top, base).astype(np.uint8)


def symmetrize(g: Grid, name: str, bg: int) -> Grid | None:
    """Overlay the grid with its own mirror image (``fliplr``/``flipud``/``rot180``/``transpose``), filling background."""
    m = dihedral(g, name)
    return overlay(g, m, bg)


def recolor_by_rank(g: Grid, masks: Sequence[np.ndarray], colors: Sequence[int]) -> Grid:
    """Paint ``masks[i]`` with ``colors[i]`` (for object recoloring by size/position rank)."""
    out = g.copy()
    for m, c in zip(masks, colors):
        out[m] = c
    return out
