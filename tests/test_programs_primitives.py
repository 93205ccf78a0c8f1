"""Each primitive of the program-search DSL, specified by one small worked example (plus properties where natural)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arcttt_kaggle.programs import drawing as dr
from arcttt_kaggle.programs import objects as ob
from arcttt_kaggle.programs import parts as pt
from arcttt_kaggle.programs import primitives as pr
from arcttt_kaggle.programs import rules as rl
from arcttt_kaggle.programs import symmetry as sy


def G(rows: list[list[int]] | str) -> np.ndarray:
    """A grid from rows of ints, or from a string of digit rows separated by spaces/newlines."""
    if isinstance(rows, str):
        rows = [[int(c) for c in line] for line in rows.split()]
    return np.array(rows, dtype=np.uint8)


def eq(a, b) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))


grids = st.integers(1, 6).flatmap(lambda h: st.integers(1, 6).flatmap(
    lambda w: arrays(np.uint8, (h, w), elements=st.integers(0, 9))))


# ---------------------------------------------------------------- geometry


def test_dihedral_examples():
    g = G("12 34")
    assert eq(pr.dihedral(g, "rot90"), G("24 13"))  # counter-clockwise
    assert eq(pr.dihedral(g, "fliplr"), G("21 43"))
    assert eq(pr.dihedral(g, "flipud"), G("34 12"))
    assert eq(pr.dihedral(g, "transpose"), G("13 24"))
    assert eq(pr.dihedral(g, "antitranspose"), G("42 31"))
    assert eq(pr.dihedral(g, "rot180"), G("43 21"))


@settings(max_examples=60, deadline=None)
@given(grids, st.sampled_from(pr.DIHEDRAL))
def test_dihedral_inverse_undoes_every_transform(g, name):
    assert eq(pr.dihedral(pr.dihedral(g, name), pr.dihedral_inverse(name)), g)


@settings(max_examples=40, deadline=None)
@given(grids)
def test_dihedral_transforms_are_eight_distinct_symmetries_of_a_generic_grid(g):
    outs = {pr.dihedral(g, n).shape + tuple(pr.dihedral(g, n).ravel()) for n in pr.DIHEDRAL}
    assert len(outs) <= 8  # equal only when the grid itself is symmetric
    assert {pr.dihedral(g, n).size for n in pr.DIHEDRAL} == {g.size}


def test_background_prefers_black_when_common_else_most_common():
    assert pr.background_color(G("0011 1111")) == 0  # 2 of 8 cells black: still the background
    assert pr.background_color(G("5551 5555")) == 5


def test_most_and_least_common_colors_refuse_ties():
    g = G("0001 1223")
    assert pr.most_common_color(g) == 0 and pr.most_common_color(g, exclude=[0]) is None  # 1 and 2 tie
    assert pr.least_common_color(g) == 3
    assert pr.color_counts(g).tolist() == [3, 2, 2, 1, 0, 0, 0, 0, 0, 0]


def test_bounding_box_and_crop_to_content():
    g = G("0000 0120 0030 0000")
    assert pr.bounding_box(g != 0) == (1, 3, 1, 3)
    assert eq(pr.crop_to_content(g), G("12 03"))
    assert pr.crop_to_content(G("00 00")) is None


def test_crop_to_color_and_inside_frame():
    g = G("00000 04440 04140 04440")
    assert eq(pr.crop_to_color(g, 4), G("444 414 444"))
    assert eq(pr.crop_inside_frame(g, 4), G("1"))


def test_scale_up_and_down_are_inverse():
    g = G("12 30")
    big = pr.scale_up(g, 2, 3)
    assert eq(big, G("111222 111222 333000 333000"))
    assert eq(pr.scale_down(big, 2, 3), g)
    assert pr.scale_down(G("12 22"), 2, 2) is None  # blocks not uniform


def test_tile_mirror_tile_and_layout():
    g = G("12")
    assert eq(pr.tile(g, 2, 2), G("1212 1212"))
    assert eq(pr.mirror_tile(g, 2, 2), G("1221 1221"))
    assert eq(pr.tile_layout(G("12 34"), [["id", "zero:0"]]), G("1200 3400"))
    assert pr.tile(G("1" * 20), 1, 2) is None  # beyond 30 columns


def test_fractal_places_copies_where_cells_are_set():
    g = G("10 01")
    assert eq(pr.fractal(g, 0), G("1000 0100 0010 0001"))
    assert eq(pr.fractal(g, 0, invert=True), G("0010 0001 1000 0100"))


def test_shift_moves_content_and_fills():
    assert eq(pr.shift(G("12 34"), 1, 0, 0), G("00 12"))
    assert eq(pr.shift(G("12 34"), 0, -1, 9), G("29 49"))


# ---------------------------------------------------------------- color


def test_learn_and_apply_color_map():
    pairs = [(G("12"), G("34")), (G("21"), G("43"))]
    cmap = pr.learn_color_map(pairs)
    assert cmap == {1: 3, 2: 4}
    assert eq(pr.apply_color_map(G("125"), cmap), G("345"))  # unmapped colors unchanged
    assert pr.learn_color_map([(G("11"), G("23"))]) is None  # one color -> two colors
    assert pr.learn_color_map([(G("1"), G("11"))]) is None  # shapes differ


def test_keep_and_remove_color():
    g = G("123")
    assert eq(pr.keep_color(g, 2, 0), G("020"))
    assert eq(pr.remove_color(g, 2, 0), G("103"))


def test_recolor_by_rank_paints_masks():
    g = G("11 02")
    assert eq(pr.recolor_by_rank(g, [g == 1, g == 2], [5, 6]), G("55 06"))


def test_gravity_slides_cells_keeping_order():
    g = G("10 20 00")
    assert eq(pr.gravity(g, "down", 0), G("00 10 20"))
    assert eq(pr.gravity(g, "right", 0), G("01 02 00"))
    assert eq(pr.gravity(G("01 02"), "left", 0), G("10 20"))
    assert eq(pr.gravity(G("00 30"), "up", 0), G("30 00"))


def test_overlay_and_symmetrize():
    assert eq(pr.overlay(G("11"), G("02"), 0), G("12"))
    assert pr.overlay(G("1"), G("11"), 0) is None
    assert eq(pr.symmetrize(G("100"), "fliplr", 0), G("101"))


# ---------------------------------------------------------------- objects


def test_components_by_color_and_connectivity():
    g = G("1100 0010 2002")
    four = ob.components(g, 0, diagonal=False, by_color=True)
    eight = ob.components(g, 0, diagonal=True, by_color=True)
    assert sorted(o.size for o in four) == [1, 1, 1, 2]
    assert sorted(o.size for o in eight) == [1, 1, 3]  # the diagonal 1 joins the pair
    multi = ob.components(G("12 00"), 0, by_color=False)
    assert len(multi) == 1 and multi[0].colors == (1, 2)


def test_label_counts_regions():
    labels, n = ob.label(G("101 101"), 0, diagonal=False, by_color=True)
    assert n == 2 and labels[0, 0] != labels[0, 2]


def test_object_crop_extract_and_shape_key():
    g = G("0000 0120 0220")
    two = next(o for o in ob.components(g, 0) if o.color == 2)
    assert eq(two.crop(g), G("12 22"))
    assert eq(two.extract(g, 0), G("02 22"))
    same = ob.components(G("02 22"), 0)[0]
    assert same.shape_key == two.shape_key


@pytest.mark.parametrize("how, expected_color", [
    ("largest", 3), ("smallest", None), ("largest_box", 3), ("unique_color", 3), ("unique_shape", 3),
    ("common_shape", 1), ("densest", None),
])
def test_select_object_by_rule(how, expected_color):
    # two single 1-pixels and one 3-cell bar of color 3; ties are refused (the two pixels are equally
    # "smallest", and all three objects fill their boxes, so "densest" is a tie too)
    g = G("10000 00000 00333 00000 10000")
    o = ob.select(ob.components(g, 0), g, how)
    assert (o.color if o else None) == expected_color


def test_select_symmetric_and_most_colors():
    g = G("1010000 0100000 1010000 0000000 2200340")
    objs = ob.components(g, 0, diagonal=True, by_color=False)
    assert ob.select(objs, g, "most_colors").colors == (3, 4)
    assert ob.select(objs, g, "symmetric") is None  # every object here is mirror-symmetric
    assert ob.select(objs, g, "asymmetric") is None


def test_keep_objects_and_ranks():
    g = G("11 03")
    objs = ob.components(g, 0)
    assert eq(ob.keep_objects(g, objs, lambda o: o.size > 1, 0), G("11 00"))
    assert ob.object_sizes_ranks(objs) == [0, 1]


def test_fill_enclosed_paints_holes_only():
    g = G("11100 10100 11100")
    assert eq(ob.fill_enclosed(g, 0, 4), G("11100 14100 11100"))
    assert ob.fill_enclosed(G("10 01"), 0, 4) is None


# ---------------------------------------------------------------- composition


def test_split_by_separator_lines():
    g = G("10502 11500 55555 00503")
    assert pt.separator_lines(g)[0] == 5
    parts = pt.split_by_separators(g)
    assert [[p.tolist() for p in row] for row in parts] == [[[[1, 0], [1, 1]], [[0, 2], [0, 0]]], [[[0, 0]], [[0, 3]]]]
    assert pt.split_by_separators(G("12 34")) is None


def test_split_equal_with_gap():
    parts = pt.split_equal(G("12512"), 1, 2, gap=1)
    assert [p.tolist() for p in pt.flat(parts)] == [[[1, 2]], [[1, 2]]]
    assert pt.split_equal(G("123"), 1, 2) is None


def test_combine_masks_boolean_ops():
    a, b = np.array([True, True, False, False]), np.array([True, False, True, False])
    assert pt.combine_masks([a, b], "and").tolist() == [True, False, False, False]
    assert pt.combine_masks([a, b], "or").tolist() == [True, True, True, False]
    assert pt.combine_masks([a, b], "xor").tolist() == [False, True, True, False]
    assert pt.combine_masks([a, b], "nor").tolist() == [False, False, False, True]
    assert pt.combine_masks([a, b], "a_not_b").tolist() == [False, True, False, False]


def test_overlay_parts_and_color_priority():
    a, b = G("10 00"), G("22 02")
    assert eq(pt.overlay_parts([a, b], [0, 1], 0), G("12 02"))  # part 0 on top
    assert eq(pt.overlay_by_color_priority([a, b], [2, 1], 0), G("22 02"))


def test_parts_to_pixels_and_select_part():
    parts = [[G("11 10"), G("00 00")], [G("02 00"), G("33 33")]]
    assert eq(pt.parts_to_pixels(parts, 0), G("10 23"))
    flat = pt.flat(parts)
    assert eq(pt.select_part(flat, "most", 0), G("33 33"))
    assert eq(pt.select_part(flat, "least", 0), G("00 00"))
    assert pt.part_summary(G("0220"), 0) == 2
    same = [G("1"), G("1"), G("2")]
    assert eq(pt.select_part(same, "unique", 0), G("2"))
    assert eq(pt.unique_color_part([G("1"), G("11"), G("2")], 0), G("2"))


# ---------------------------------------------------------------- symmetry and patterns


def test_symmetry_fill_restores_masked_cells():
    pic = G("1234321 5678765 1234321")
    masked = pic.copy()
    masked[1, 4:6] = 9
    assert eq(sy.symmetry_fill(masked, 9), pic)
    assert eq(sy.masked_patch(masked, pic, 9), G("76"))


def test_symmetry_fill_with_off_center_axis():
    pic = G("0123210 0456540")  # mirror axis at column 3 of 7... and at 3 of a shifted copy
    shifted = np.concatenate([pic[:, 1:], G("0 0")], axis=1)  # axis now at column 2
    masked = shifted.copy()
    masked[0, 3] = 9
    assert eq(sy.symmetry_fill(masked, 9), shifted)


def test_symmetry_maps_and_symmetries():
    names, maps = sy.symmetry_maps(3, 3)
    assert ("lr", 2, 0) == names[0] and maps.shape[1] == 9
    g = G("121 343 121")
    kinds = {names[i][0] for i, m in enumerate(maps) if any((m == s).all() for s in sy.symmetries(g, g < 10, maps))}
    assert {"lr", "ud", "rot180"} <= kinds


def test_find_period_and_periodic_fill():
    g = G("121212 343434 121212 343434")
    assert sy.find_period(g, np.ones(g.shape, bool)) == (2, 2)
    masked = g.copy()
    masked[1:3, 2:4] = 0
    assert eq(sy.periodic_fill(masked, 0), g)


def test_periodic_extend_continues_the_pattern():
    assert eq(sy.periodic_extend(G("1212"), (2, 6)), G("121212 121212"))


# ---------------------------------------------------------------- learned rules


def test_object_rules_recolor_by_size():
    xs = [G("5500 0005 0550"), G("5050 0050 0000")]
    ys = [G("2200 0001 0220"), G("1020 0020 0000")]
    rules = list(rl.object_rules(xs, ys))
    assert rules, "recolor by size should be learned"
    assert eq(rules[0].apply(G("0550 0000 5000")), G("0220 0000 1000"))


def test_local_rules_learn_neighbour_rule():
    xs = [G("00000 00500 00000"), G("50000 00000 00000")]
    ys = [G("01110 01510 01110"), G("51000 11000 00000")]
    rule = next(rl.local_rules(xs, ys))
    assert eq(rule.apply(G("00000 00000 00005")), G("00000 00011 00015"))



def _reference_labels(g: np.ndarray, bg: int, diagonal: bool, by_color: bool) -> tuple[np.ndarray, int]:
    """Plain breadth-first flood fill, numbering components in reading order of their first cell."""
    h, w = g.shape
    labels, n = np.zeros((h, w), dtype=np.int32), 0
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)] + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if diagonal else [])
    for r in range(h):
        for c in range(w):
            if labels[r, c] or g[r, c] == bg:
                continue
            n += 1
            labels[r, c] = n
            queue = [(r, c)]
            while queue:
                y, x = queue.pop()
                for dy, dx in steps:
                    yy, xx = y + dy, x + dx
                    if (0 <= yy < h and 0 <= xx < w and not labels[yy, xx] and g[yy, xx] != bg
                            and (not by_color or g[yy, xx] == g[y, x])):
                        labels[yy, xx] = n
                        queue.append((yy, xx))
    return labels, n


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_label_matches_a_reference_flood_fill_at_every_size(h, w, seed, diagonal, by_color):
    # grids of 150+ cells take the run-union path, smaller ones the flood fill: both must agree
    g = np.random.default_rng(seed).integers(0, 3, (h, w)).astype(np.uint8)
    labels, n = ob.label(g, 0, diagonal, by_color)
    ref, n_ref = _reference_labels(g, 0, diagonal, by_color)
    assert n == n_ref and np.array_equal(labels, ref)


# ---------------------------------------------------------------- drawing and moving


def test_extend_rays_until_blocked():
    g = G("0000 1002 0000")
    assert eq(dr.extend_rays(g, "right", 0), G("0000 1112 0000"))  # stops at the 2
    assert eq(dr.extend_rays(G("000 010 000"), "cross", 0), G("010 111 010"))
    assert eq(dr.extend_rays(G("100 000 002"), "down", 0, pixels_only=True), G("100 100 102"))
    assert dr.extend_rays(G("11"), "left", 0) is None  # nothing to draw


def test_connect_aligned_pairs():
    assert eq(dr.connect_aligned(G("10010 00000 20000"), 0, "rows"), G("11110 00000 20000"))
    assert eq(dr.connect_aligned(G("300 000 300"), 0, "columns"), G("300 300 300"))
    assert eq(dr.connect_aligned(G("400 000 004"), 0, "diagonals"), G("400 040 004"))
    assert dr.connect_aligned(G("102"), 0) is None  # different colors are not joined


def test_outline_and_fill_object_boxes():
    assert eq(dr.outline_objects(G("000 010 000"), 0, 2, diagonal=False), G("020 212 020"))
    assert eq(dr.fill_object_boxes(G("100 010 001"), 0, 5), G("155 515 551"))


def test_object_gravity_moves_rigid_shapes():
    g = G("110 010 000 000 010")  # the L lands on the pixel below it and keeps its shape
    assert eq(ob.object_gravity(g, 0, "down"), G("000 000 110 010 010"))
    assert eq(ob.object_gravity(g, 0, "left"), G("110 010 000 000 100"))
    assert ob.object_gravity(G("000 110"), 0, "down") is None  # already resting


def test_concat_and_count_objects():
    assert eq(pr.concat([G("1 2"), G("3 4")], axis=1), G("13 24"))
    assert pr.concat([G("1"), G("12")], axis=0) is None  # widths differ
    assert ob.count_objects(G("101 000 110"), 0) == 3
    assert ob.count_objects(G("101 000 110"), 0, diagonal=True, by_color=False) == 3


def test_move_to_contact_slides_objects_to_the_anchor():
    g = G("10003 00003 00000 00200")
    assert eq(ob.move_to_contact(g, 0, 3), G("00013 00003 00000 00200"))  # the 2 shares no row/column span
    assert ob.move_to_contact(G("13"), 0, 3) is None  # already touching


def test_motif_is_the_repeating_unit():
    assert eq(sy.motif(G("121212 343434")), G("12 34"))
    assert sy.motif(G("12 34")) is None


def test_cell_keys_kinds():
    g = G("12 30")
    # set keys: color * 2048 + bit mask of neighbour colors (OUTSIDE, bit 10, dropped by `relevant`)
    assert rl.cell_keys(g, "around4")[0] == 1 * 2048 + (1 << 2 | 1 << 3)
    # lines: color, colors in its row, colors in its column
    assert rl.cell_keys(g, "lines")[3] == (0 * 1024 + (1 << 3 | 1 << 0)) * 1024 + (1 << 2 | 1 << 0)
    assert len(set(rl.cell_keys(g, "exact8").tolist())) == 4


def test_local_rules_from_row_and_column_colors():
    # a cell turns 4 when its row holds a 1 and its column holds a 2
    xs = [G("0001 0000 0200"), G("1000 0000 0020")]
    ys = [G("0401 0000 0200"), G("1040 0000 0020")]
    rule = next(rl.local_rules(xs, ys))
    assert "row and column" in rule.name
    assert eq(rule.apply(G("0010 0000 2000")), G("4010 0000 2000"))
