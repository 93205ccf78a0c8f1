"""The operation library the search composes: named grid -> grid functions with a cost.

Operations take no free parameters except colors, and colors come from the task itself (a color present in
every demonstration input, say), so the library for one task is finite and small. Parameters that can only
be known from the outputs (scale factors, color maps, tile layouts, boolean combinations) are left to the
finishing step (``fitters.py``), which infers them instead of enumerating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from . import drawing as dr
from . import objects as ob
from . import parts as pt
from . import primitives as pr
from . import symmetry as sy
from .primitives import Grid


class Memo:
    """A per-search cache for expensive per-grid analyses (connected components, separators).

    Owned by one search call and discarded with it (no module-level state); bounded so a long search cannot
    grow it without limit.
    """

    def __init__(self, max_items: int = 20000):
        self._d: dict = {}
        self._max = max_items

    def get(self, key, compute: Callable[[], object]):
        if key in self._d:
            return self._d[key]
        value = compute()
        if len(self._d) < self._max:
            self._d[key] = value
        return value


@dataclass(frozen=True)
class Op:
    """One named step: ``fn(grid, memo)`` returns the new grid or ``None`` when the step does not apply."""

    name: str
    fn: Callable[[Grid, Memo], Grid | None]
    cost: float = 1.0
    keeps_shape: bool = False  # the output always has the input's shape (usable when demonstrations keep it)


def _key(g: Grid) -> bytes:
    return bytes(g.shape) + g.tobytes()


def _objs(g: Grid, memo: Memo, diagonal: bool, by_color: bool) -> list[ob.Obj]:
    bg = pr.background_color(g)
    return memo.get(("objs", _key(g), diagonal, by_color), lambda: ob.components(g, bg, diagonal, by_color))


def _parts(g: Grid, memo: Memo) -> pt.Parts | None:
    return memo.get(("sep", _key(g)), lambda: pt.split_by_separators(g))


# ---- op bodies (module-level functions, so ops are plain data and picklable) ----

def _dihedral(g: Grid, memo: Memo, name: str) -> Grid:
    return pr.dihedral(g, name)


def _crop_content(g: Grid, memo: Memo) -> Grid | None:
    return pr.crop_to_content(g)


def _crop_object(g: Grid, memo: Memo, diagonal: bool, by_color: bool, how: str, extract: bool) -> Grid | None:
    objs = _objs(g, memo, diagonal, by_color)
    o = ob.select(objs, g, how)
    if o is None:
        return None
    return o.extract(g, pr.background_color(g)) if extract else o.crop(g)


def _keep_object(g: Grid, memo: Memo, diagonal: bool, how: str) -> Grid | None:
    objs = _objs(g, memo, diagonal, False)
    o = ob.select(objs, g, how)
    if o is None:
        return None
    return ob.keep_objects(g, objs, lambda x: x is o, pr.background_color(g))


def _remove_object(g: Grid, memo: Memo, diagonal: bool, how: str) -> Grid | None:
    objs = _objs(g, memo, diagonal, False)
    o = ob.select(objs, g, how)
    if o is None:
        return None
    return ob.keep_objects(g, objs, lambda x: x is not o, pr.background_color(g))


def _remove_specks(g: Grid, memo: Memo) -> Grid | None:
    objs = _objs(g, memo, True, False)
    return ob.keep_objects(g, objs, lambda o: o.size > 1, pr.background_color(g))


def _select_part(g: Grid, memo: Memo, how: str) -> Grid | None:
    parts = _parts(g, memo)
    if parts is None:
        return None
    if how == "unique_colors":
        return pt.unique_color_part(pt.flat(parts), pr.background_color(g))
    return pt.select_part(pt.flat(parts), how, pr.background_color(g))


def _parts_pixels(g: Grid, memo: Memo) -> Grid | None:
    parts = _parts(g, memo)
    if parts is None or len(parts) * len(parts[0]) < 2:
        return None
    bg = pr.background_color(g)
    return pt.parts_to_pixels(parts, bg)


def _gravity(g: Grid, memo: Memo, direction: str) -> Grid:
    return pr.gravity(g, direction, pr.background_color(g))


def _symmetrize(g: Grid, memo: Memo, name: str) -> Grid | None:
    if name in ("transpose", "antitranspose") and g.shape[0] != g.shape[1]:
        return None
    return pr.symmetrize(g, name, pr.background_color(g))


def _sym_fill(g: Grid, memo: Memo, color: int | None, patch: bool) -> Grid | None:
    c = pr.background_color(g) if color is None else color
    maps = memo.get(("symmaps", g.shape), lambda: sy.symmetry_maps(*g.shape)[1])
    filled = sy.symmetry_fill(g, c, strict=color is not None, maps=maps)
    if filled is None:
        return None
    return sy.masked_patch(g, filled, c) if patch else filled


def _per_fill(g: Grid, memo: Memo, color: int, patch: bool) -> Grid | None:
    filled = sy.periodic_fill(g, color)
    if filled is None:
        return None
    return sy.masked_patch(g, filled, color) if patch else filled


def _color_op(g: Grid, memo: Memo, kind: str, color: int) -> Grid | None:
    if kind == "keep":
        return pr.keep_color(g, color, pr.background_color(g))
    if kind == "remove":
        return pr.remove_color(g, color, pr.background_color(g))
    if kind == "crop_to":
        return pr.crop_to_color(g, color)
    if kind == "crop_inside":
        return pr.crop_inside_frame(g, color)
    if kind == "fill_enclosed":
        return ob.fill_enclosed(g, pr.background_color(g), color)
    raise ValueError(kind)


def _rays(g: Grid, memo: Memo, direction: str, pixels_only: bool) -> Grid | None:
    return dr.extend_rays(g, direction, pr.background_color(g), pixels_only)


def _connect(g: Grid, memo: Memo, orientation: str) -> Grid | None:
    return dr.connect_aligned(g, pr.background_color(g), orientation)


def _fill_boxes(g: Grid, memo: Memo, color: int) -> Grid | None:
    return dr.fill_object_boxes(g, pr.background_color(g), color)


def _object_gravity(g: Grid, memo: Memo, direction: str) -> Grid | None:
    return ob.object_gravity(g, pr.background_color(g), direction)


def _motif(g: Grid, memo: Memo) -> Grid | None:
    return sy.motif(g)


def _move_to(g: Grid, memo: Memo, color: int) -> Grid | None:
    return ob.move_to_contact(g, pr.background_color(g), color)


def _outline(g: Grid, memo: Memo, color: int, diagonal: bool) -> Grid | None:
    return dr.outline_objects(g, pr.background_color(g), color, diagonal)


def _crop_cell_with(g: Grid, memo: Memo, color: int) -> Grid | None:
    """The separator cell that contains ``color`` (when exactly one does)."""
    parts = _parts(g, memo)
    if parts is None:
        return None
    hits = [p for p in pt.flat(parts) if (p == color).any()]
    return hits[0].copy() if len(hits) == 1 else None


def build_ops(train_inputs: list[Grid], test_inputs: list[Grid], train_outputs: list[Grid]) -> list[Op]:
    """The operations for one task (the search orders them by cost).

    Color parameters are the colors present in every input, demonstrations and tests (a mask, a frame or a
    marker is there in each), and, for painting steps (fills, outlines), the colors the outputs use.
    ``keeps_shape`` marks the operations a same-shape task may use.
    """
    square = all(g.shape[0] == g.shape[1] for g in train_inputs + test_inputs)
    ops: list[Op] = [Op(n, partial(_dihedral, name=n), 1.0, n in ("rot180", "flipud", "fliplr") or square)
                     for n in pr.DIHEDRAL[1:]]
    ops.append(Op("crop_content", _crop_content, 1.0))
    ops.append(Op("repeating_unit", _motif, 1.2))
    for d in ("down", "up", "left", "right"):
        ops.append(Op(f"gravity_{d}", partial(_gravity, direction=d), 1.2, True))
    for n in ("fliplr", "flipud", "rot180", "transpose", "antitranspose"):
        ops.append(Op(f"symmetrize_{n}", partial(_symmetrize, name=n), 1.3, True))
    ops.append(Op("symmetry_complete", partial(_sym_fill, color=None, patch=False), 1.3, True))
    for d in dr.DIRECTIONS:
        ops.append(Op(f"rays_{d}", partial(_rays, direction=d, pixels_only=False), 1.4, True))
        ops.append(Op(f"pixel_rays_{d}", partial(_rays, direction=d, pixels_only=True), 1.5, True))
    for d in ("down", "up", "left", "right"):
        ops.append(Op(f"objects_fall_{d}", partial(_object_gravity, direction=d), 1.3, True))
    for o in ("rows", "columns", "both", "diagonals"):
        ops.append(Op(f"connect_{o}", partial(_connect, orientation=o), 1.4, True))
    for by_color, extract in ((True, False), (True, True), (False, False)):
        for diagonal in (False, True):
            for how in ob.SELECTIONS:
                conn = ("8" if diagonal else "4") + ("color" if by_color else "multi")
                name = f"{'extract' if extract else 'crop'}_{how}_obj{conn}"
                ops.append(Op(name, partial(_crop_object, diagonal=diagonal, by_color=by_color, how=how,
                                            extract=extract), 1.4))
    for how in ("largest", "smallest", "unique_color", "unique_shape"):
        ops.append(Op(f"keep_{how}_obj", partial(_keep_object, diagonal=True, how=how), 1.5, True))
        ops.append(Op(f"remove_{how}_obj", partial(_remove_object, diagonal=True, how=how), 1.5, True))
    ops.append(Op("remove_specks", _remove_specks, 1.5, True))
    for how in pt.PART_SELECTIONS + ("unique_colors",):
        ops.append(Op(f"part_{how}", partial(_select_part, how=how), 1.3))
    ops.append(Op("parts_to_pixels", _parts_pixels, 1.3))

    everywhere = set(range(10))
    for g in train_inputs + test_inputs:
        everywhere &= set(np.unique(g).tolist())
    output_colors: set[int] = set()
    for g in train_outputs:
        output_colors |= set(np.unique(g).tolist())
    for c in sorted(everywhere):
        for kind in ("crop_to", "crop_inside"):
            ops.append(Op(f"{kind}_color{c}", partial(_color_op, kind=kind, color=c), 1.5))
        for kind in ("keep", "remove"):
            ops.append(Op(f"{kind}_color{c}", partial(_color_op, kind=kind, color=c), 1.5, True))
        ops.append(Op(f"cell_with_color{c}", partial(_crop_cell_with, color=c), 1.5))
        ops.append(Op(f"move_to_color{c}", partial(_move_to, color=c), 1.4, True))
        ops.append(Op(f"symmetry_fill_color{c}", partial(_sym_fill, color=c, patch=False), 1.3, True))
        ops.append(Op(f"symmetry_patch_color{c}", partial(_sym_fill, color=c, patch=True), 1.3))
        ops.append(Op(f"periodic_fill_color{c}", partial(_per_fill, color=c, patch=False), 1.4, True))
        ops.append(Op(f"periodic_patch_color{c}", partial(_per_fill, color=c, patch=True), 1.4))
    for c in sorted(output_colors):
        ops.append(Op(f"fill_enclosed_color{c}", partial(_color_op, kind="fill_enclosed", color=c), 1.5, True))
        ops.append(Op(f"outline8_color{c}", partial(_outline, color=c, diagonal=True), 1.5, True))
        ops.append(Op(f"fill_boxes_color{c}", partial(_fill_boxes, color=c), 1.5, True))
        ops.append(Op(f"outline4_color{c}", partial(_outline, color=c, diagonal=False), 1.5, True))
    return ops
