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
    elif kind == "transpose":  # reflection about the line row - col = b - a
        R2, C2 = C + (b - a), R - (b - a)
    elif kind == "antitranspose":  # reflection about row + col = a + b
        R2, C2 = (a + b) - C, (a + b) - R
    elif kind == "rot90":
        R2, C2 = b + (C - a), a - (R - b)
    else:
        raise ValueError(f"unknown symmetry {kind!r}")
    ok = (R2 >= 0) & (C2 >= 0) & (R2 % 2 == 0) & (C2 % 2 == 0) & (R2 < 2 * h) & (C2 < 2 * w)
    return np.where(ok, (R2 // 2) * w + (C2 // 2), -1).ravel()


def symmetries(g: Grid, known: np.ndarray, min_overlap: float = 0.5) -> list[np.ndarray]:
    """Partner maps of the symmetries that the known cells support (no disagreement, enough overlap)."""
    h, w = g.shape
    flat, kn = g.ravel(), known.ravel()
    n_known = int(kn.sum())
    if n_known == 0:
        return []
    cands = []
    cc = sorted(range(1, 2 * w - 2), key=lambda a: abs(a - (w - 1)))
    rr = sorted(range(1, 2 * h - 2), key=lambda b: abs(b - (h - 1)))
    cands += [("lr", a, 0) for a in cc] + [("ud", 0, b) for b in rr]
    cands += [("rot180", a, b) for b in rr[:5] for a in cc[:5]]
    cands += [("rot90", a, b) for b in rr[:5] for a in cc[:5]]
    # Diagonal mirrors: row - col = d (transpose-like) and row + col = s (antitranspose-like), doubled coords.
    cands += [("transpose", 0, 2 * d) for d in sorted(range(-(h - 1), w), key=abs)]
    cands += [("antitranspose", 0, 2 * s) for s in sorted(range(0, h + w - 1), key=lambda s: abs(s - (h + w - 2) / 2))]
    out = []
    for kind, a, b in cands:
        p = _partners(h, w, kind, a, b)
        both = (p >= 0) & kn
        both[both] = kn[p[both]]
        n = int(both.sum())
        if n < min_overlap * n_known:
            continue
        if np.any(flat[both] != flat[p[both]]):
            continue
        out.append(p)
    return out


def symmetry_fill(g: Grid, unknown_color: int, strict: bool = True) -> Grid | None:
    """Restore cells of ``unknown_color`` from their symmetric partners.

    ``strict``: every unknown cell must be restored (the mask hides part of a symmetric picture); otherwise
    unrestorable cells keep their color (completing a partly drawn symmetric figure on a background).
    ``None`` when nothing changes, no symmetry is supported, or (strict) a cell cannot be restored.
    """
    known = g != unknown_color
    if known.all() or not known.any():
        return None
    maps = symmetries(g, known)
    if not maps:
        return None
    vals = g.ravel().copy()
    kn = known.ravel().copy()
    for _ in range(4):  # propagate through compositions of symmetries
        changed = False
        for p in maps:
            take = (~kn) & (p >= 0)
            take[take] = kn[p[take]]
            if take.any():
                vals[take] = vals[p[take]]
                kn[take] = True
                changed = True
        if kn.all() or not changed:
            break
    if strict and not kn.all():
        return None
    out = vals.reshape(g.shape)
    for p in maps:  # the restored picture must itself be consistent with every symmetry used
        ok = (p >= 0) & kn
        ok[ok] = kn[p[ok]]
        if np.any(vals[ok] != vals[p[ok]]):
            return None
    return None if np.array_equal(out, g) else out.astype(np.uint8)


def masked_patch(g: Grid, filled: Grid, unknown_color: int) -> Grid | None:
    """The restored content under the bounding box of the mask color (tasks that ask for the hidden patch)."""
    box = bounding_box(g == unknown_color)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    return filled[r0:r1, c0:c1].copy()


def find_period(g: Grid, known: np.ndarray) -> tuple[int, int] | None:
    """Smallest rectangular period ``(py, px)`` (by area, then rows) consistent with the known cells.

    Every residue class must contain a known cell, and the period must be smaller than the grid in at
    least one direction (otherwise "periodic" says nothing).
    """
    h, w = g.shape
    r, c = np.mgrid[0:h, 0:w]
    vals, kn = g[known].astype(np.int64), known
    for area, py, px in sorted((py * px, py, px) for py in range(1, h + 1) for px in range(1, w + 1)):
        if py == h and px == w:
            break
        cls = ((r % py) * px + (c % px))[kn]
        first = np.full(py * px, -1, dtype=np.int64)
        first[cls[::-1]] = vals[::-1]  # any known value per class
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


def periodic_extend(g: Grid, shape: tuple[int, int]) -> Grid | None:
    """Continue the grid's smallest period to a grid of ``shape`` (anchored at the top-left corner)."""
    h, w = shape
    if not (1 <= h <= 30 and 1 <= w <= 30):
        return None
    period = find_period(g, np.ones(g.shape, dtype=bool))
    py, px = period if period is not None else g.shape
    motif = g[:py, :px]
    return np.ascontiguousarray(np.tile(motif, (h // py + 1, w // px + 1))[:h, :w])
