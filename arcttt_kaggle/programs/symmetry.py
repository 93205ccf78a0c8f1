"""Symmetry completion and pattern continuation.

A frequent ARC pattern: a picture that is mirror- or rotation-symmetric (about an axis that need not be the
grid's center) or periodic, with some cells hidden under a mask color; the answer is the restored picture,
or just the hidden patch. Symmetries are detected from the visible cells only: a candidate symmetry is
accepted when every visible cell agrees with its visible partner and the partners cover at least half of
the visible cells (small overlaps agree by chance).
"""

from __future__ import annotations

import numpy as np

from .primitives import Grid, bounding_box

def _partners(h: int, w: int, kind: str, a: int, b: int) -> np.ndarray:
    """Flat index of each cell's image under a symmetry (``-1`` when it falls outside the grid).

    Coordinates are doubled so that axes and centers may sit between cells: ``a`` is a doubled column
    (axis or center) and ``b`` a doubled row.
    """
    r, c = np.mgrid[0:h, 0:w]
    R, C = 2 * r, 2 * c
    if kind == "lr":
        R2, C2 = R, 2 * a - C
    elif kind == "ud":
        R2, C2 = 2 * b - R, C
    elif kind == "rot180":
        R2, C2 = 2 * b - R, 2 * a - C
    elif kind == "transpose":  # reflection about the line row - col = (b - a) / 2
        R2, C2 = C + (b - a), R - (b - a)
    elif kind == "antitranspose":  # reflection about row + col = (a + b) / 2
        R2, C2 = (a + b) - C, (a + b) - R
    elif kind == "rot90":
        R2, C2 = b + (C - a), a - (R - b)
    else:
        raise ValueError(f"unknown symmetry {kind!r}")
    ok = (R2 >= 0) & (C2 >= 0) & (R2 % 2 == 0) & (C2 % 2 == 0) & (R2 < 2 * h) & (C2 < 2 * w)
    return np.where(ok, (R2 // 2) * w + (C2 // 2), -1).ravel()


def symmetry_maps(h: int, w: int) -> tuple[list[tuple[str, int, int]], np.ndarray]:
    """Every candidate symmetry of an ``h`` x ``w`` grid, nearest the center first, as stacked partner maps.

    Mirrors about every row/column axis, rotations by 180 and 90 degrees about centers near the middle, and
    both diagonal mirrors at every offset. Depends only on the shape, so callers may cache it.
    """
    cc = sorted(range(1, 2 * w - 2), key=lambda a: abs(a - (w - 1)))
    rr = sorted(range(1, 2 * h - 2), key=lambda b: abs(b - (h - 1)))
    cands = [("lr", a, 0) for a in cc] + [("ud", 0, b) for b in rr]
    cands += [("rot180", a, b) for b in rr[:5] for a in cc[:5]]
    cands += [("rot90", a, b) for b in rr[:5] for a in cc[:5]]
    cands += [("transpose", 0, 2 * d) for d in sorted(range(-(h - 1), w), key=abs)]
    cands += [("antitranspose", 0, 2 * s) for s in sorted(range(0, h + w - 1), key=lambda s: abs(s - (h + w - 2) / 2))]
    if not cands:
        return [], np.zeros((0, h * w), dtype=np.int64)
    return cands, np.stack([_partners(h, w, *c) for c in cands])


def symmetries(g: Grid, known: np.ndarray, maps: np.ndarray | None = None, min_overlap: float = 0.5) -> np.ndarray:
    """Partner maps (rows of ``maps``) of the symmetries the known cells support: no disagreement, enough overlap."""
    h, w = g.shape
    if maps is None:
        maps = symmetry_maps(h, w)[1]
    n_known = int(known.sum())
    if n_known == 0 or maps.shape[0] == 0:
        return maps[:0]
    flat = np.append(g.ravel(), 255).astype(np.int16)  # index -1 -> sentinel "outside"
    kn = np.append(known.ravel(), False)
    both = kn[maps] & kn[:-1][None, :]
    agree = both & (flat[maps] == flat[:-1][None, :])
    n_both, n_agree = both.sum(axis=1), agree.sum(axis=1)
    ok = (n_both == n_agree) & (n_both >= min_overlap * n_known)
    return maps[ok]


def symmetry_fill(g: Grid, unknown_color: int, strict: bool = True, maps: np.ndarray | None = None) -> Grid | None:
    """Restore cells of ``unknown_color`` from their symmetric partners.

    ``strict``: every unknown cell must be restored (the mask hides part of a symmetric picture); otherwise
    unrestorable cells keep their color (completing a partly drawn symmetric figure on a background).
    ``None`` when nothing changes, no symmetry is supported, or (strict) a cell cannot be restored.
    ``maps``: precomputed ``symmetry_maps(*g.shape)[1]`` (a cache the caller owns).
    """
    known = g != unknown_color
    if known.all() or not known.any():
        return None
    sym = symmetries(g, known, maps)
    if sym.shape[0] == 0:
        return None
    vals = np.append(g.ravel(), 0)
    kn = np.append(known.ravel(), False)
    n = g.size
    for _ in range(4):  # propagate through compositions of symmetries
        changed = False
        for p in sym:
            take = ~kn[:n] & kn[p]
            if take.any():
                vals[:n][take] = vals[p[take]]
                kn[:n][take] = True
                changed = True
        if kn[:n].all() or not changed:
            break
    if strict and not kn[:n].all():
        return None
    both = kn[sym] & kn[:n][None, :]  # the restored picture must be consistent with every symmetry used
    if np.any(both & (vals[sym] != vals[:n][None, :])):
        return None
    out = vals[:n].reshape(g.shape).astype(np.uint8)
    return None if np.array_equal(out, g) else out


def masked_patch(g: Grid, filled: Grid, unknown_color: int) -> Grid | None:
    """The restored content under the bounding box of the mask color (tasks that ask for the hidden patch)."""
    box = bounding_box(g == unknown_color)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    return filled[r0:r1, c0:c1].copy()


def _shift_ok(g: Grid, known: np.ndarray, dy: int, dx: int) -> bool:
    """Known cells agree with the known cell ``(dy, dx)`` away wherever both exist (a necessary condition)."""
    h, w = g.shape
    a, b = g[:h - dy, :w - dx], g[dy:, dx:]
    both = known[:h - dy, :w - dx] & known[dy:, dx:]
    return not np.any(both & (a != b))


def find_period(g: Grid, known: np.ndarray) -> tuple[int, int] | None:
    """Smallest rectangular period ``(py, px)`` (by area, then rows) consistent with the known cells.

    Every residue class must contain a known cell, and the period must be smaller than the grid in at
    least one direction (otherwise "periodic" says nothing).
    """
    h, w = g.shape
    pys = [py for py in range(1, h) if _shift_ok(g, known, py, 0)] + [h]
    pxs = [px for px in range(1, w) if _shift_ok(g, known, 0, px)] + [w]
    r, c = np.nonzero(known)
    vals = g[r, c].astype(np.int64)
    for _, py, px in sorted((py * px, py, px) for py in pys for px in pxs):
        if py == h and px == w:
            break
        cls = (r % py) * px + (c % px)
        first = np.full(py * px, -1, dtype=np.int64)
        first[cls[::-1]] = vals[::-1]  # one known value per class
        if np.any(first < 0):
            continue
        if np.array_equal(first[cls], vals):
            return py, px
    return None


def periodic_fill(g: Grid, unknown_color: int) -> Grid | None:
    """Restore ``unknown_color`` cells of a periodic pattern from the smallest period of the visible cells."""
    known = g != unknown_color
    if known.all() or not known.any():
        return None
    period = find_period(g, known)
    if period is None:
        return None
    py, px = period
    h, w = g.shape
    motif = np.zeros((py, px), dtype=np.uint8)
    rr, cc = np.nonzero(known)
    motif[rr % py, cc % px] = g[rr, cc]
    out = np.tile(motif, (h // py + 1, w // px + 1))[:h, :w]
    return None if np.array_equal(out, g) else np.ascontiguousarray(out)


def motif(g: Grid) -> Grid | None:
    """The repeating unit of a periodic grid (its smallest period's top-left tile); ``None`` if not periodic."""
    period = find_period(g, np.ones(g.shape, dtype=bool))
    if period is None:
        return None
    return g[:period[0], :period[1]].copy()


def periodic_extend(g: Grid, shape: tuple[int, int]) -> Grid | None:
    """Continue the grid's smallest period to a grid of ``shape`` (anchored at the top-left corner)."""
    h, w = shape
    if not (1 <= h <= 30 and 1 <= w <= 30):
        return None
    period = find_period(g, np.ones(g.shape, dtype=bool))
    py, px = period if period is not None else g.shape
    motif = g[:py, :px]
    return np.ascontiguousarray(np.tile(motif, (h // py + 1, w // px + 1))[:h, :w])
