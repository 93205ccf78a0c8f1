"""Finishing steps whose parameters are inferred from the demonstrations, not enumerated.

A finisher looks at the grids a program has produced for the demonstration inputs (``xs``) next to the
expected outputs (``ys``), infers its parameters (a scale factor from the shape ratio, a tile layout from
which symmetry each output block equals, a boolean combination and its colors, a color map), and returns a
function to apply to the test grids. A parameter is accepted only when every demonstration agrees on it;
otherwise the finisher declines, because a parameter guessed from partial evidence is how a program ends
up verified on the demonstrations and wrong on the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import permutations
from typing import Callable, Iterator

import numpy as np

from . import objects as ob
from . import parts as pt
from . import primitives as pr
from . import symmetry as sy
from .primitives import Grid


@dataclass(frozen=True)
class Fit:
    """An inferred finishing step: readable name with its parameters, cost, and the function for new grids."""

    name: str
    cost: float
    apply: Callable[[Grid], Grid | None]
    # Longest program prefix this step may finish. Steps whose output carries little information (one
    # color per demonstration: a few bits) fit some of the ~100 one-step programs by chance, so they may
    # only finish the empty program.
    max_prefix: int = 99


def _ratios(xs: list[Grid], ys: list[Grid], up: bool) -> tuple[int, int] | None:
    """The constant integer factor ``(fy, fx)`` with y = f * x (``up``) or x = f * y, or ``None``."""
    found = None
    for x, y in zip(xs, ys):
        a, b = (y, x) if up else (x, y)
        if a.shape[0] % b.shape[0] or a.shape[1] % b.shape[1]:
            return None
        f = (a.shape[0] // b.shape[0], a.shape[1] // b.shape[1])
        if found is not None and f != found:
            return None
        found = f
    return found


def _scale_down_any(g: Grid, fy: int, fx: int) -> Grid | None:
    """Each block becomes its most common non-background color (background if it has none)."""
    h, w = g.shape
    if h % fy or w % fx:
        return None
    bg = pr.background_color(g)
    blocks = g.reshape(h // fy, fy, w // fx, fx).transpose(0, 2, 1, 3).reshape(h // fy, w // fx, fy * fx)
    out = np.full((h // fy, w // fx), bg, dtype=np.uint8)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = pt.part_summary(blocks[i, j], bg)
    return out


def _infer_layout(xs: list[Grid], ys: list[Grid], ny: int, nx: int) -> list[list[str]] | None:
    """Per tile position, the simplest dihedral transform (or a constant fill) that every demonstration agrees on."""
    layout = []
    for i in range(ny):
        row = []
        for j in range(nx):
            choice = None
            for name in pr.DIHEDRAL:
                ok = True
                for x, y in zip(xs, ys):
                    h, w = x.shape
                    t = pr.dihedral(x, name)
                    if t.shape != (h, w) or not np.array_equal(y[i * h:(i + 1) * h, j * w:(j + 1) * w], t):
                        ok = False
                        break
                if ok:
                    choice = name
                    break
            if choice is None:
                blocks = [y[i * x.shape[0]:(i + 1) * x.shape[0], j * x.shape[1]:(j + 1) * x.shape[1]]
                          for x, y in zip(xs, ys)]
                vals = {int(v) for b in blocks for v in np.unique(b)}
                if len(vals) != 1:
                    return None
                choice = f"zero:{vals.pop()}"
            row.append(choice)
        layout.append(row)
    return layout


def _combine(g: Grid, split: tuple, op: str, colors: tuple[int, int] | None) -> Grid | None:
    """Split ``g`` (by separators, or into equal blocks) and combine the parts (boolean mask or part index)."""
    parts = _split(g, split)
    if parts is None or not pt.same_shapes(parts):
        return None
    bg = pr.background_color(g) if split[0] == "equal" else _part_bg(parts)
    if op.startswith("part"):
        k = int(op[4:])
        return parts[k].copy() if k < len(parts) else None
    if op.startswith("overlay"):
        order = tuple(int(c) for c in op.split(":")[1])
        if len(order) != len(parts):
            return None
        return pt.overlay_parts(parts, order, bg)
    mask = pt.combine_masks([p != bg for p in parts], op)
    on, off = colors
    return np.where(mask, np.uint8(on), np.uint8(off)).astype(np.uint8)


def _part_bg(parts: list[Grid]) -> int:
    counts = np.bincount(np.concatenate([p.ravel() for p in parts]), minlength=10)
    return 0 if counts[0] * 4 >= counts.sum() else int(np.argmax(counts))


def _split(g: Grid, split: tuple) -> list[Grid] | None:
    if split[0] == "sep":
        parts = pt.split_by_separators(g)
    else:
        _, ny, nx, gap = split
        parts = pt.split_equal(g, ny, nx, gap)
    return None if parts is None else pt.flat(parts)


def _split_modes(xs: list[Grid], ys: list[Grid]) -> Iterator[tuple]:
    """Ways to cut each input into parts shaped like its output, the same way for every demonstration."""
    yield ("sep",)
    x, y = xs[0], ys[0]
    for ny in range(1, 5):
        for nx in range(1, 5):
            if ny * nx < 2:
                continue
            for gap in (0, 1):
                if x.shape == (ny * y.shape[0] + (ny - 1) * gap, nx * y.shape[1] + (nx - 1) * gap):
                    yield ("equal", ny, nx, gap)


def split_combine_fits(xs: list[Grid], ys: list[Grid]) -> Iterator[Fit]:
    """Cut inputs into same-shape parts and infer how they combine into the output."""
    for split in _split_modes(xs, ys):
        parts_all = [_split(x, split) for x in xs]
        if any(p is None or not pt.same_shapes(p) or p[0].shape != y.shape for p, y in zip(parts_all, ys)):
            continue
        n = len(parts_all[0])
        if any(len(p) != n for p in parts_all) or n > 6:
            continue
        label = "sep" if split[0] == "sep" else f"{split[1]}x{split[2]}" + ("+gap" if split[3] else "")
        for k in range(n):
            if all(np.array_equal(p[k], y) for p, y in zip(parts_all, ys)):
                yield Fit(f"split[{label}].part{k}", 1.0, partial(_combine, split=split, op=f"part{k}", colors=None))
        for op in pt.BOOL_OPS:
            if n > 2 and op in ("a_not_b", "b_not_a"):
                continue
            colors = _infer_mask_colors(xs, ys, split, op)
            if colors is not None:
                yield Fit(f"split[{label}].{op}->color{colors[0]}/bg{colors[1]}", 1.5,
                          partial(_combine, split=split, op=op, colors=colors))
        if n <= 4:
            for order in permutations(range(n)):
                op = "overlay:" + "".join(map(str, order))
                if all(np.array_equal(_combine(x, split, op, None), y) for x, y in zip(xs, ys)):
                    yield Fit(f"split[{label}].{op}", 1.5 + 0.01 * sum(order[i] != i for i in range(n)),
                              partial(_combine, split=split, op=op, colors=None))
                    break


def _infer_mask_colors(xs: list[Grid], ys: list[Grid], split: tuple, op: str) -> tuple[int, int] | None:
    """The single (on, off) color pair that turns the boolean mask into every output, if there is one."""
    on = off = None
    for x, y in zip(xs, ys):
        mask = _combine(x, split, op, (1, 0))
        if mask is None:
            return None
        m = mask.astype(bool)
        if m.all() or not m.any():
            return None  # a constant mask says nothing about the op
        son, soff = np.unique(y[m]), np.unique(y[~m])
        if son.size != 1 or soff.size != 1 or son[0] == soff[0]:
            return None
        if on is None:
            on, off = int(son[0]), int(soff[0])
        elif (on, off) != (int(son[0]), int(soff[0])):
            return None
    return (on, off) if on is not None else None


_COUNTS: dict[str, Callable[[Grid], int]] = {
    "colors": lambda g: len(set(np.unique(g).tolist()) - {pr.background_color(g)}),
    "cells": lambda g: int((g != pr.background_color(g)).sum()),
    "objects": lambda g: ob.count_objects(g, pr.background_color(g), True, False),
}


def _scale_by_count(g: Grid, count: str) -> Grid | None:
    k = _COUNTS[count](g)
    return pr.scale_up(g, k, k) if k >= 1 else None


def variable_scale_fits(xs: list[Grid], ys: list[Grid]) -> Iterator[Fit]:
    """Scale-ups whose factor differs between demonstrations but equals a count in the input (its number
    of colors, non-background cells or objects)."""
    factors = []
    for x, y in zip(xs, ys):
        if y.shape[0] % x.shape[0] or y.shape[1] % x.shape[1]:
            return
        fy, fx = y.shape[0] // x.shape[0], y.shape[1] // x.shape[1]
        if fy != fx:
            return
        factors.append(fy)
    if len(set(factors)) < 2:
        return
    for name, count in _COUNTS.items():
        if all(count(x) == f for x, f in zip(xs, factors)):
            yield Fit(f"scale_up(by number of {name})", 1.5, partial(_scale_by_count, count=name))


def shape_fits(xs: list[Grid], ys: list[Grid]) -> Iterator[Fit]:
    """Candidate finishing steps that produce grids of the output's shape (before any recoloring)."""
    same = all(x.shape == y.shape for x, y in zip(xs, ys))
    if same:
        yield Fit("", 0.0, lambda g: g)
    up = _ratios(xs, ys, up=True)
    if up is not None and up != (1, 1):
        fy, fx = up
        yield Fit(f"scale_up({fy},{fx})", 1.0, partial(pr.scale_up, fy=fy, fx=fx))
        layout = _infer_layout(xs, ys, fy, fx)
        if layout is not None:
            n_special = sum(name != "id" for row in layout for name in row)
            desc = "/".join(",".join(row) for row in layout)
            yield Fit(f"tile[{desc}]", 1.0 + 0.1 * n_special, partial(pr.tile_layout, layout=layout))
        if all(y.shape == (x.shape[0] ** 2, x.shape[1] ** 2) for x, y in zip(xs, ys)):
            for invert in (False, True):
                yield Fit(f"fractal(invert={invert})", 1.5,
                          lambda g, inv=invert: pr.fractal(g, pr.background_color(g), inv))
    if up is None:
        yield from variable_scale_fits(xs, ys)
    down = _ratios(xs, ys, up=False)
    if down is not None and down != (1, 1):
        fy, fx = down
        yield Fit(f"scale_down({fy},{fx})", 1.0, partial(pr.scale_down, fy=fy, fx=fx))
        yield Fit(f"block_summary({fy},{fx})", 1.5, partial(_scale_down_any, fy=fy, fx=fx))
    if not same and all(x.shape[0] >= y.shape[0] and x.shape[1] >= y.shape[1] for x, y in zip(xs, ys)):
        yield from split_combine_fits(xs, ys)
    if not same:
        yield from count_fits(xs, ys)
    shapes = {y.shape for y in ys}
    if all(np.all(y == y.flat[0]) for y in ys):  # outputs are single-color: which color, and what shape
        if same:
            yield Fit("paint_dominant_color", 1.0, partial(_uniform, shape=None), max_prefix=0)
        elif len(shapes) == 1:
            shape = next(iter(shapes))
            yield Fit(f"paint_dominant_color({shape[0]}x{shape[1]})", 1.0, partial(_uniform, shape=shape), max_prefix=0)
    if not same and all(y.shape[0] >= x.shape[0] and y.shape[1] >= x.shape[1] for x, y in zip(xs, ys)):
        if up is not None:
            yield Fit(f"continue_pattern(x{up[0]},x{up[1]})", 2.0,
                      lambda g, f=up: sy.periodic_extend(g, (g.shape[0] * f[0], g.shape[1] * f[1])))
        elif len(shapes) == 1:
            shape = shapes.pop()
            yield Fit(f"continue_pattern({shape[0]}x{shape[1]})", 2.0, partial(sy.periodic_extend, shape=shape))


def _count_bar(g: Grid, conn: tuple[bool, bool], vertical: bool, color: int | None) -> Grid | None:
    """A 1 x n bar (or n x 1) where n counts the grid's objects, in ``color`` or the dominant color."""
    n = ob.count_objects(g, pr.background_color(g), *conn)
    if not 1 <= n <= 30:
        return None
    c = pt.part_summary(g, pr.background_color(g)) if color is None else color
    return np.full((n, 1) if vertical else (1, n), c, dtype=np.uint8)


def count_fits(xs: list[Grid], ys: list[Grid]) -> Iterator[Fit]:
    """Outputs that are single-color bars as long as the number of objects in the input."""
    if not all(np.all(y == y.flat[0]) and min(y.shape) == 1 for y in ys):
        return
    for vertical in (False, True):
        if any(y.shape[1 if vertical else 0] != 1 for y in ys):
            continue
        for conn in ((False, True), (True, True), (False, False), (True, False)):
            if all(ob.count_objects(x, pr.background_color(x), *conn) == y.size for x, y in zip(xs, ys)):
                colors = {int(y.flat[0]) for y in ys}
                color = colors.pop() if len(colors) == 1 else None
                name = f"count_objects{'8' if conn[0] else '4'}{'color' if conn[1] else 'multi'}_as_bar"
                yield Fit(name + ("_vertical" if vertical else ""), 1.5,
                          partial(_count_bar, conn=conn, vertical=vertical, color=color), max_prefix=1)
                return


def _uniform(g: Grid, shape: tuple[int, int] | None) -> Grid:
    """A grid of ``shape`` (default: ``g``'s) in ``g``'s dominant non-background color."""
    color = pt.part_summary(g, pr.background_color(g))
    return np.full(g.shape if shape is None else shape, color, dtype=np.uint8)


# Ways to pick one color from the raw input, for outputs painted in "the marker's color".
INPUT_COLORS: dict[str, Callable[[Grid], int | None]] = {
    "least common color": lambda g: pr.least_common_color(g),
    "most common non-background color": lambda g: pr.most_common_color(g, exclude=[pr.background_color(g)]),
}


def paint_foreground(g: Grid, color: int | None) -> Grid | None:
    """Every non-background cell becomes ``color`` (``None`` when no color was determined)."""
    if color is None:
        return None
    return np.where(g != pr.background_color(g), np.uint8(color), g).astype(np.uint8)


def input_color_fit(preds: list[Grid], ys: list[Grid], raw: list[Grid]) -> str | None:
    """The rule (a key of ``INPUT_COLORS``) by which painting the predictions' foreground in one color
    picked from the raw input gives every output, or ``None``. Needs a one-color foreground in each output
    and at least two different paint colors across demonstrations (else a color map already covers it)."""
    targets = []
    for p, y in zip(preds, ys):
        fg = p != pr.background_color(p)
        colors = np.unique(y[fg])
        if not fg.any() or colors.size != 1 or np.any(y[~fg] != p[~fg]):
            return None
        targets.append(int(colors[0]))
    if len(set(targets)) < 2:
        return None
    for name, pick in INPUT_COLORS.items():
        if all(pick(x) == t for x, t in zip(raw, targets)):
            return name
    return None


def color_map_fit(preds: list[Grid], ys: list[Grid]) -> dict[int, int] | None:
    """A non-identity color map that turns every prediction into its output, or ``None``.

    Refused when some demonstration is "explained" only by a fresh entry of the map: a demonstration whose
    single recoloring ``a -> b`` appears in no other demonstration (not even the target ``b``) verifies
    nothing about the program before the map, since any program reaching one color there would fit.
    """
    cmap = pr.learn_color_map(zip(preds, ys))
    if cmap is None or all(a == b for a, b in cmap.items()):
        return None
    targets = []
    for p in preds:
        used = {int(a) for a in np.unique(p)}
        targets.append({cmap[a] for a in used if cmap[a] != a})
    for i, t in enumerate(targets):
        if len(t) == 1 and not any(t & u for j, u in enumerate(targets) if j != i):
            return None
    return cmap


def apply_color_map_strict(g: Grid, cmap: dict[int, int]) -> Grid | None:
    """Apply a learned map, refusing grids with colors the demonstrations never showed (their image is unknown)."""
    if not set(np.unique(g).tolist()) <= cmap.keys():
        return None
    return pr.apply_color_map(g, cmap)
