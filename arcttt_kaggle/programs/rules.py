"""Learned recoloring rules for tasks whose output keeps the input's shape.

Two rule families, both learned as lookup tables from the demonstrations and applied to a test grid only
when every lookup it needs was seen in a demonstration (no guessing for unseen keys):

- *object rules*: every object is recolored as a whole, by one property (its size, size rank, shape,
  number of holes, whether it touches the border, ...);
- *local rules*: every cell's new color is a function of its color and its immediate neighbours' colors
  (outlines, fills, "color a pixel next to a marker").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from . import objects as ob
from .primitives import Grid, background_color

OUTSIDE = 10  # neighbour value for positions outside the grid


def _holes(o: ob.Obj) -> int:
    """Enclosed background regions inside the object (4-connected regions of its box not touching the edge)."""
    r0, r1, c0, c1 = o.box
    labels, n = ob.label((~o.mask[r0:r1, c0:c1]).astype(np.uint8), 0, False, False)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return n - int((edge > 0).sum())


def _features(objs: list[ob.Obj], shape: tuple[int, int]) -> dict[str, list]:
    """Named per-object properties (one list each, aligned with ``objs``)."""
    sizes = [o.size for o in objs]
    desc = sorted(set(sizes), reverse=True)
    shapes = Counter(o.shape_key for o in objs)
    h, w = shape
    return {
        "size_extreme": [("largest" if s == desc[0] else "smallest" if s == desc[-1] else "middle") for s in sizes],
        "is_largest": [s == desc[0] for s in sizes],
        "is_smallest": [s == desc[-1] for s in sizes],
        "touches_border": [o.box[0] == 0 or o.box[2] == 0 or o.box[1] == h or o.box[3] == w for o in objs],
        "shape_repeats": [shapes[o.shape_key] > 1 for o in objs],
        "holes": [_holes(o) for o in objs],
        "size": sizes,
        "size_rank": [desc.index(s) for s in sizes],
        "size_rank_asc": [len(desc) - 1 - desc.index(s) for s in sizes],
        "shape": [o.shape_key for o in objs],
        "column_rank": _dense_rank([o.box[2] for o in objs]),  # left to right
        "row_rank": _dense_rank([o.box[0] for o in objs]),  # top to bottom
    }


def _dense_rank(vals: list[int]) -> list[int]:
    order = sorted(set(vals))
    return [order.index(v) for v in vals]


@dataclass(frozen=True)
class Rule:
    name: str
    cost: float
    apply: Callable[[Grid], Grid | None]


def _object_targets(x: Grid, y: Grid, objs: list[ob.Obj]) -> list[int] | None:
    """Each object's uniform output color, if the output is the input with whole objects recolored."""
    covered = np.zeros(x.shape, dtype=bool)
    targets = []
    for o in objs:
        vals = np.unique(y[o.mask])
        if vals.size != 1:
            return None
        targets.append(int(vals[0]))
        covered |= o.mask
    if np.any(x[~covered] != y[~covered]):
        return None
    return targets


def _recolor_objects(g: Grid, conn: tuple[bool, bool], feature: str, table: dict, default: int | None) -> Grid | None:
    """Recolor each object by ``table[feature]``; unseen values take ``default`` (``None``: refuse the grid)."""
    bg = background_color(g)
    objs = ob.components(g, bg, *conn)
    if not objs:
        return None
    feats = _features(objs, g.shape)[feature]
    out = g.copy()
    for o, f in zip(objs, feats):
        color = table.get(f, default)
        if color is None:
            return None
        out[o.mask] = color
    return out


def _equality_default(table: dict) -> tuple[dict, int] | None:
    """For a numeric table with two colors, one of them for a single value (``size == 6 -> red, else blue``):
    the single-value entry and the default color for every other value."""
    if len(table) < 3 or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in table):
        return None
    colors = Counter(table.values())
    if len(colors) != 2:
        return None
    (common, _), (rare, n_rare) = colors.most_common(2)
    if n_rare != 1:
        return None
    key = next(k for k, v in table.items() if v == rare)
    return {key: rare}, common


def object_rules(xs: list[Grid], ys: list[Grid]) -> Iterator[Rule]:
    """Recolor-whole-objects rules consistent with every demonstration (same-shape tasks only)."""
    if any(x.shape != y.shape for x, y in zip(xs, ys)) or all(np.array_equal(x, y) for x, y in zip(xs, ys)):
        return
    for conn in ((True, True), (False, True), (True, False), (False, False)):  # (diagonal, by_color)
        data = []
        for x, y in zip(xs, ys):
            objs = ob.components(x, background_color(x), *conn)
            targets = _object_targets(x, y, objs) if objs else None
            if targets is None:
                break
            data.append((objs, targets, _features(objs, x.shape)))
        else:
            for feature in data[0][2]:
                table: dict = {}
                ok = True
                for objs, targets, feats in data:
                    for f, t in zip(feats[feature], targets):
                        if table.setdefault(f, t) != t:
                            ok = False
                            break
                    if not ok:
                        break
                # A table with one entry per object says nothing: require some key to be shared.
                n_objs = sum(len(d[0]) for d in data)
                if not ok or len(table) >= n_objs or len(set(table.values())) < 2:
                    continue
                conn_name = ("8" if conn[0] else "4") + ("color" if conn[1] else "multi")
                desc = ",".join(f"{k}->{v}" for k, v in table.items()) if feature != "shape" else f"{len(table)} shapes"
                yield Rule(f"recolor_objects{conn_name}[by {feature}: {desc}]", 2.0,
                           lambda g, c=conn, f=feature, t=dict(table): _recolor_objects(g, c, f, t, None))
                eq = _equality_default(table) if feature in ("size", "holes") else None
                if eq is not None:
                    (k, v), = eq[0].items()
                    yield Rule(f"recolor_objects{conn_name}[{feature}=={k} -> {v}, else {eq[1]}]", 2.2,
                               lambda g, c=conn, f=feature, t=eq[0], d=eq[1]: _recolor_objects(g, c, f, t, d))


_LOCAL_FEATURES: tuple[tuple[str, str], ...] = (
    # (name, key kind), most general first
    ("colors around (4)", "around4"),
    ("colors around (8)", "around8"),
    ("colors in row and column", "lines"),
    ("4-neighbourhood", "exact4"),
    ("8-neighbourhood", "exact8"),
)
_SET_KINDS = ("around4", "around8", "lines")


def _bits(cols: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(cols[0].shape, dtype=np.int64)
    for c in cols:
        out |= np.left_shift(1, c)
    return out


def cell_keys(g: Grid, kind: str, relevant: int = 0x3FF) -> np.ndarray:
    """Per cell, an integer key: its color plus context of the given ``kind``.

    ``exact4``/``exact8``: the 4 or 8 neighbours in position order (``OUTSIDE`` off the grid).
    ``around4``/``around8``: the set of neighbour colors. ``lines``: the sets of colors in the cell's row
    and in its column. Set keys keep only the colors in the ``relevant`` bit mask (so a rule that ignores a
    color is not blocked by it) and are invariant to rotations and reflections.
    """
    h, w = g.shape
    color = g.ravel().astype(np.int64)
    if kind == "lines":
        row = _bits([g[:, j].astype(np.int64) for j in range(w)])  # per row: colors present
        col = _bits([g[i, :].astype(np.int64) for i in range(h)])  # per column
        rows = np.repeat(row & relevant, w)
        cols = np.tile(col & relevant, h)
        return (color * 1024 + rows) * 1024 + cols
    p = np.pad(g.astype(np.int64), 1, constant_values=OUTSIDE)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if kind.endswith("8"):
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    cols = [p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w].ravel() for dy, dx in steps]
    if kind.startswith("exact"):
        key = color
        for c in cols:
            key = key * 11 + c
        return key
    return color * 2048 + (_bits(cols) & relevant)


def _consistent(keys: np.ndarray, vals: np.ndarray) -> bool:
    """Each key maps to one value."""
    pairs = np.unique(keys * 10 + vals)
    return np.unique(pairs // 10).size == pairs.size


def _apply_local(g: Grid, kind: str, relevant: int, table: dict[int, int]) -> Grid | None:
    out = []
    for k in cell_keys(g, kind, relevant).tolist():
        v = table.get(k)
        if v is None:
            return None  # a context no demonstration showed: its rule is unknown
        out.append(v)
    return np.array(out, dtype=np.uint8).reshape(g.shape)


def local_rules(xs: list[Grid], ys: list[Grid]) -> Iterator[Rule]:
    """Cell-wise rules ``(color, context) -> new color`` consistent with every demonstration.

    Tried from the most general key (the set of colors around a cell, keeping only the context colors the
    rule needs) to the most specific (the exact 8-neighbourhood); the first consistent one is kept if it
    reuses keys (a table where most keys are seen once has memorised the demonstrations, not learned a rule).
    """
    if any(x.shape != y.shape for x, y in zip(xs, ys)) or all(np.array_equal(x, y) for x, y in zip(xs, ys)):
        return
    vals = np.concatenate([y.ravel() for y in ys]).astype(np.int64)
    for i, (name, kind) in enumerate(_LOCAL_FEATURES):
        relevant = 0x3FF  # colors 0..9; OUTSIDE (bit 10) never counts in set keys
        keys = np.concatenate([cell_keys(x, kind, relevant) for x in xs])
        if not _consistent(keys, vals):
            continue
        if kind in _SET_KINDS:  # drop context colors the rule does not need, so bystanders do not block it
            for c in range(10):
                trial = relevant & ~(1 << c)
                k2 = np.concatenate([cell_keys(x, kind, trial) for x in xs])
                if _consistent(k2, vals):
                    relevant, keys = trial, k2
        table = dict(zip(keys.tolist(), vals.tolist()))
        if len(table) * 2 > keys.size:
            return
        yield Rule(f"local_rule({name}, {len(table)} entries)", 2.5 + 0.2 * i,
                   lambda g, k=kind, r=relevant, t=table: _apply_local(g, k, r, t))
        return
