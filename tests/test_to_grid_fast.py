"""``to_grid``'s fast path (no Python loop per cell) decides every input exactly as the per-cell checks
(``_to_grid_checked``, the whole of ``to_grid`` before the fast path) do: the same array (dtype, shape, cells, a
fresh writable C-contiguous copy) or the same exception type and message."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arcttt_kaggle.arc.data import MAX_SIDE, NUM_COLORS, _to_grid_checked as old_to_grid, _to_grid_fast, to_grid


def outcome(fn, value):
    try:
        return "ok", fn(value, "where")
    except Exception as e:  # noqa: BLE001 - the exception itself is what is compared
        return "raised", (type(e), str(e))


def assert_same(value) -> None:
    kind_old, old = outcome(old_to_grid, value)
    kind_new, new = outcome(to_grid, value)
    assert kind_new == kind_old, (value, old, new)
    if kind_old == "raised":
        assert new == old
        return
    assert new.dtype == old.dtype == np.uint8
    assert new.shape == old.shape
    assert np.array_equal(new, old)
    assert new.flags["C_CONTIGUOUS"] and new.flags["WRITEABLE"] and new.flags["OWNDATA"]
    if isinstance(value, np.ndarray):
        assert not np.shares_memory(new, value)


sides = st.integers(1, MAX_SIDE)
valid_grids = st.tuples(sides, sides).flatmap(
    lambda hw: st.lists(st.lists(st.integers(0, NUM_COLORS - 1), min_size=hw[1], max_size=hw[1]),
                        min_size=hw[0], max_size=hw[0]))

# Anything a JSON file (or a careless caller) can put in a cell.
odd_cells = st.one_of(
    st.integers(-3, 13), st.integers(-2 ** 70, 2 ** 70), st.booleans(), st.none(),
    st.floats(allow_nan=True), st.sampled_from([0.0, 1.0, 9.0, 10.0]), st.text(max_size=2),
    st.sampled_from(["1", "9"]), st.lists(st.integers(0, 9), max_size=3),
    st.sampled_from([np.int64(3), np.uint8(9), np.int32(-1), np.int64(10), np.bool_(True), np.float64(2.0)]))


@st.composite
def invalid_like(draw) -> Any:
    """A valid grid with one or more defects (bad cells, ragged rows, non-list rows, empty rows, too many rows or
    columns, deeper nesting), or an odd container."""
    g = [list(r) for r in draw(valid_grids)]
    defect = draw(st.sampled_from(["cell", "cells", "ragged", "row_type", "empty_row", "empty", "tall", "wide",
                                   "deep", "container", "tuple_rows"]))
    if defect in ("cell", "cells"):
        for _ in range(draw(st.integers(1, 1 if defect == "cell" else 5))):
            r = draw(st.integers(0, len(g) - 1))
            c = draw(st.integers(0, len(g[0]) - 1))
            g[r][c] = draw(odd_cells)
    elif defect == "ragged":
        r = draw(st.integers(0, len(g) - 1))
        g[r] = g[r][:-1] if draw(st.booleans()) and len(g[r]) > 1 else g[r] + [draw(st.integers(0, 9))]
    elif defect == "row_type":
        r = draw(st.integers(0, len(g) - 1))
        g[r] = draw(st.sampled_from([tuple(g[r]), None, 5, "0123", np.asarray(g[r])]))
    elif defect == "empty_row":
        g[draw(st.integers(0, len(g) - 1))] = []
    elif defect == "empty":
        return draw(st.sampled_from([[], [[]], [[], []], (), {}, None, "", 0]))
    elif defect == "tall":
        g = g + [list(g[0])] * (MAX_SIDE + 1 - len(g))
    elif defect == "wide":
        g = [r + [0] * (MAX_SIDE + 1 - len(r)) for r in g]
    elif defect == "deep":  # a 3-d list: every cell a list
        return [[[v] * draw(st.integers(1, 2)) for v in r] for r in g]
    elif defect == "container":
        return draw(st.sampled_from([tuple(tuple(r) for r in g), tuple(g), str(g), {"grid": g}]))
    elif defect == "tuple_rows":
        return [tuple(r) for r in g]
    return g


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_grids)
def test_valid_lists_agree(grid):
    assert _to_grid_fast(grid) is not None  # a plain valid grid takes the fast path
    assert_same(grid)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invalid_like())
def test_invalid_inputs_agree(value):
    assert_same(value)


array_dtypes = st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint64, np.float64,
                                np.float32, np.bool_, object])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, MAX_SIDE + 1), st.integers(0, MAX_SIDE + 1), st.integers(-2, 12), st.integers(-2, 12),
       array_dtypes, st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_arrays_agree(h, w, lo, hi, dtype, fortran, seed):
    rng = np.random.default_rng(seed)
    lo, hi = min(lo, hi), max(lo, hi)
    vals = rng.integers(lo, hi + 1, size=(h, w))
    if dtype in (np.uint8, np.uint16, np.uint64):
        vals = np.abs(vals)
    a = vals.astype(dtype)
    if fortran:
        a = np.asfortranarray(a)
    assert_same(a)


def test_arrays_of_other_ranks_and_views_agree():
    for a in [np.zeros((3,), np.uint8), np.zeros((2, 2, 2), np.uint8), np.zeros((), np.int64),
              np.arange(12).reshape(3, 4)[:, ::2], np.arange(9).reshape(3, 3).T, np.ma.masked_array([[1, 2]]),
              np.array([["1", "2"]]), np.array([[1, 2]], dtype=np.int64)[::-1]]:
        assert_same(a)


def test_examples_agree():
    """Hand-picked inputs where a numpy conversion alone would decide wrongly (bools upcast, floats equal to
    ints, huge ints, int subclasses, numpy scalars in lists)."""
    import enum

    class Colour(enum.IntEnum):
        RED = 2

    cases = [[[True, 1]], [[1, True]], [[False]], [[1.0, 2]], [[1, 2.0]], [[1, "2"]], [[1, None]], [[2 ** 64]],
             [[-2 ** 64]], [[-1]], [[10]], [[255]], [[256]], [[0, 9], [9, 0]], [[np.int64(3)]], [[np.uint8(9), 1]],
             [[np.bool_(True)]], [[Colour.RED, 1]], [[[1]]], [[1], [2, 3]], [[1, 2], [3]], [[1]] * 31, [[1] * 31],
             [[1] * 30] * 30, [[]], [], [[1], (2,)], ([1],), [np.array([1, 2])], [[1, 2], np.array([1, 2])]]
    for c in cases:
        assert_same(c)
