"""The program-search expert as a specification: what it finds on small hand-made tasks, how it ranks and
reports answers, and that every failure (timeout, a raising primitive, a huge task, a dead or stuck worker,
a passed deadline) ends as an empty answer rather than an exception."""

from __future__ import annotations

import time

import numpy as np
import pytest

from arcttt_kaggle.arc.candidates import read_candidate_file
from arcttt_kaggle.arc.data import Pair, Task
from arcttt_kaggle.programs import fitters as ft
from arcttt_kaggle.programs import pool
from arcttt_kaggle.programs import primitives as pr
from arcttt_kaggle.programs.expert import ProgramResult, ProgramsConfig, run_expert, solve_task
from arcttt_kaggle.programs.ops import Op, build_ops

FAST = ProgramsConfig(seconds_per_task=5.0, max_depth=2)


def G(s: str) -> np.ndarray:
    return np.array([[int(c) for c in row] for row in s.split()], dtype=np.uint8)


def make_task(task_id: str, pairs: list[tuple[str, str]], tests: list[tuple[str, str | None]]) -> Task:
    return Task(task_id, tuple(Pair(G(i), G(o)) for i, o in pairs),
                tuple(Pair(G(i), None if o is None else G(o)) for i, o in tests))


FLIP = make_task("flip", [("120 300", "021 003"), ("45 60", "54 06")], [("789 100", "987 001")])
RECOLOR = make_task("recolor", [("1200 0021", "3400 0043"), ("2 1", "4 3")], [("0110 2000", "0330 4000")])
TILE = make_task("tile", [("12 30", "1221 3003 3003 1221"), ("5 6", "55 66 66 55")],
                 [("78 90", "7887 9009 9009 7887")])
SPLIT_AND = make_task("split_and", [("1105011 0105110", "020 020"), ("1015101 1105011", "202 020")],
                      [("1115111 0005000", "222 000")])
UPSCALE = make_task("upscale", [("12 03", "1122 1122 0033 0033"), ("4", "44 44")], [("50 06", "5500 5500 0066 0066")])

CROP_LARGEST = make_task("crop_largest", [("1100000 1100022 0000022 0000022", "22 22 22"),
                                          ("0300 3330 0300 0001", "030 333 030")],
                         [("0000 4440 0000 0500", "444")])
GRAVITY = make_task("gravity", [("100 020 000", "000 000 120"), ("030 000 004", "000 000 034")],
                    [("500 006 700", "000 500 706")])
SYMMETRY = make_task("symmetry", [("12321 49654", "12321 45654"), ("7897 1001", "7887 1001")],
                     [("94543 12229", "34543 12221")])  # 9 hides cells of a mirror-symmetric picture


def first_answer(result: ProgramResult, i: int = 0) -> np.ndarray | None:
    return result.candidates[i][0].grid if result.candidates[i] else None


@pytest.mark.parametrize("task", [FLIP, RECOLOR, TILE, SPLIT_AND, UPSCALE, CROP_LARGEST, GRAVITY, SYMMETRY],
                         ids=lambda t: t.id)
def test_finds_a_verified_program_with_the_right_test_output(task):
    result = solve_task(task, FAST)
    assert result.error == ""
    assert result.num_verified_programs >= 1
    top = result.candidates[0][0]
    assert top.source == "program" and top.verified and top.program
    assert np.array_equal(top.grid, task.test[0].output), top.program


def test_flip_is_explained_by_the_flip_and_recolor_by_a_color_map():
    assert solve_task(FLIP, FAST).candidates[0][0].program == "fliplr"
    assert "recolor[1->3,2->4]" in solve_task(RECOLOR, FAST).candidates[0][0].program


def test_a_color_map_that_only_memorises_one_color_per_demonstration_is_refused():
    # Each output is one pixel whose color has no visible relation to its input: a learned map
    # {1->5, 2->6, 3->7} would "verify", but every demonstration is explained by its own fresh entry.
    task = make_task("memorise", [("10 00", "5"), ("02 00", "6"), ("00 03", "7")], [("00 10", "5")])
    assert solve_task(task, FAST).candidates == [[]]


def test_answers_are_deduplicated_ranked_and_counted():
    result = solve_task(FLIP, ProgramsConfig(seconds_per_task=5.0, max_depth=1, max_answers=2))
    for per_test, distinct in zip(result.candidates, result.distinct_answers):
        keys = [c.key for c in per_test]
        assert len(keys) == len(set(keys)) and len(per_test) <= 2 and distinct >= len(per_test)


def test_unsolvable_task_gives_an_empty_list_per_test_input():
    noise = make_task("noise", [("12 34", "9"), ("56 78", "1")], [("11 11", None), ("22 22", None)])
    result = solve_task(noise, FAST)
    assert result.candidates == [[], []] and result.num_verified_programs == 0


# ---------------------------------------------------------------- finishing steps infer their parameters


def fit_names(xs: list[str], ys: list[str]) -> list[str]:
    return [f.name for f in ft.shape_fits([G(x) for x in xs], [G(y) for y in ys])]


def test_tile_layout_and_scale_factor_are_inferred_from_shapes():
    names = fit_names(["12 34", "56 78"], ["1221 3443", "5665 7887"])
    assert "tile[id,fliplr]" in names and "scale_up(1,2)" in names
    assert "block_summary(2,2)" in fit_names(["1100 1100", "0022 0022"], ["10", "02"])


def test_variable_scale_factor_equals_a_count_in_the_input():
    fits = list(ft.variable_scale_fits([G("120"), G("010")], [G("112200 112200"), G("010")]))
    assert [f.name for f in fits] == ["scale_up(by number of colors)", "scale_up(by number of cells)"]
    assert np.array_equal(fits[0].apply(G("1230")), pr.scale_up(G("1230"), 3, 3))


def test_split_and_overlay_order_is_inferred():
    # two panels divided by a column of 5s; the right panel is drawn over the left one
    xs, ys = [G("11502 10522 01520"), G("30544 03540 33504")], [G("12 22 21"), G("44 43 34")]
    fits = {f.name: f for f in ft.split_combine_fits(xs, ys)}
    assert "split[sep].overlay:10" in fits
    assert np.array_equal(fits["split[sep].overlay:10"].apply(G("10503 01530 00533")), G("13 31 33"))


def test_count_of_objects_as_a_bar():
    fits = list(ft.count_fits([G("101 000 100"), G("100 000 000")], [G("444"), G("4")]))
    assert fits and np.array_equal(fits[0].apply(G("10 01")), G("44"))


def test_color_map_refuses_unseen_colors_and_fresh_single_entries():
    cmap = ft.color_map_fit([G("12"), G("21")], [G("34"), G("43")])
    assert cmap == {1: 3, 2: 4}
    assert ft.apply_color_map_strict(G("15"), cmap) is None  # 5 never seen: its image is unknown
    assert ft.color_map_fit([G("1"), G("2")], [G("5"), G("6")]) is None  # each demo its own fresh entry


def test_input_color_picks_the_paint_from_the_raw_input():
    preds, ys = [G("110"), G("011")], [G("330"), G("044")]
    raws = [G("110 003"), G("011 400")]
    assert ft.input_color_fit(preds, ys, raws) == "least common color"
    assert np.array_equal(ft.paint_foreground(G("010"), 7), G("070"))


# ---------------------------------------------------------------- failure paths


def test_deadline_already_passed_returns_nothing():
    result = solve_task(FLIP, FAST, deadline=time.time() - 1)
    assert result.candidates == [[]] and result.error == "deadline"


def test_time_cap_stops_the_search_and_returns_nothing_found():
    def slow(g, memo):  # a primitive that never helps and takes a long time
        time.sleep(0.05)
        return None

    t0 = time.time()
    result = solve_task(FLIP, ProgramsConfig(seconds_per_task=0.3, max_depth=2),
                        ops=[Op(f"slow{i}", slow, keeps_shape=True) for i in range(50)])
    assert time.time() - t0 < 1.5
    assert result.candidates == [[]] and result.error == "timeout"


def test_a_raising_primitive_costs_only_its_branch():
    calls = []

    def boom(g, memo):
        calls.append(g.shape)
        raise RuntimeError("primitive bug")

    ops = [Op("boom", boom, 0.5, keeps_shape=True)] + build_ops(
        [p.input for p in FLIP.train], [FLIP.test[0].input], [p.output for p in FLIP.train])
    result = solve_task(FLIP, FAST, ops=ops)
    assert calls, "the raising primitive was tried"
    assert np.array_equal(first_answer(result), FLIP.test[0].output)
    only_boom = solve_task(FLIP, FAST, ops=[Op("boom", boom, keeps_shape=True)])
    assert only_boom.error == "" and only_boom.candidates == [[]]  # fliplr is not in this library


def test_a_30x30_noise_task_returns_nothing_in_time_without_crashing():
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 10, (30, 30), dtype=np.uint8) for _ in range(7)]
    task = Task("huge", (Pair(noise[0], noise[1]), Pair(noise[2], noise[3]), Pair(noise[4], noise[5])),
                (Pair(noise[6]),))
    t0 = time.time()
    cands, stats = run_expert([task], ProgramsConfig(seconds_per_task=2.0, kill_grace_seconds=2.0))
    assert cands == {"huge": [[]]} and time.time() - t0 < 10


def test_full_size_grids_still_work():
    g = np.zeros((30, 30), dtype=np.uint8)
    g[3:9, 4:7] = 3
    g[20:29, 15:29] = 5
    task = Task("big", (Pair(g, g[::-1].copy()), Pair(g.T.copy(), g.T[::-1].copy())), (Pair(g[:, ::-1].copy()),))
    result = solve_task(task, ProgramsConfig(seconds_per_task=3.0, max_depth=2))
    assert result.seconds < 4.0
    assert np.array_equal(first_answer(result), g[::-1, ::-1])  # flipud at full size


def test_config_is_validated():
    for bad in ({"seconds_per_task": 0}, {"workers": 0}, {"max_answers": 0}, {"memory_limit_gib": 0.1},
                {"max_depth": -1}):
        with pytest.raises(ValueError):
            ProgramsConfig(**bad)
    assert ProgramsConfig().memory_limit_gib == 2.0 and ProgramsConfig().max_answers == 2


# ---------------------------------------------------------------- process pool


def test_run_expert_writes_a_candidate_file_with_empty_lists_for_unsolved(tmp_path):
    unsolved = make_task("nothing", [("12 34", "9"), ("56 78", "1")], [("11 11", None)])
    out = tmp_path / "programs.json"
    cands, stats = run_expert([FLIP, unsolved], ProgramsConfig(seconds_per_task=5.0, max_depth=2, workers=2),
                              out_path=out)
    assert np.array_equal(cands["flip"][0][0].grid, FLIP.test[0].output)
    assert cands["nothing"] == [[]]
    assert stats["tasks"] == 2 and stats["tasks_with_verified_program"] == 1
    back, header = read_candidate_file(out)
    assert header["source"] == "programs" and back["nothing"] == [[]]
    assert back["flip"][0][0].verified and back["flip"][0][0].program == "fliplr"


def test_run_expert_after_the_global_deadline_returns_empty_lists():
    cands, stats = run_expert([FLIP, TILE], FAST, deadline=time.time() - 1)
    assert cands == {"flip": [[]], "tile": [[]]}
    assert stats["tasks_with_verified_program"] == 0


def test_pool_kills_a_stuck_job_and_reports_a_crash_and_an_error():
    t0 = time.time()
    out = pool.run_jobs([("stuck", (30,))], "time:sleep", 1, hard_cap_s=1.0, deadline=None, memory_limit_bytes=0)
    assert out["stuck"].status == "timeout" and time.time() - t0 < 15
    out = pool.run_jobs([("crash", (3,)), ("fine", (4.0,))], "math:sqrt", 1, 10.0, None, 0)
    assert out["fine"].status == "ok" and out["fine"].value == 2.0
    out = pool.run_jobs([("crash", (3,))], "os:_exit", 1, 10.0, None, 0)
    assert out["crash"].status == "died"


def test_pool_memory_cap_turns_a_huge_allocation_into_an_error():
    out = pool.run_jobs([("hog", (3 * 2**30,))], "builtins:bytearray", 1, 20.0, None, memory_limit_bytes=2**30)
    assert out["hog"].status in ("error", "died") and "hog" in out


def test_search_depth_is_capped_by_the_evidence_in_the_outputs():
    from arcttt_kaggle.programs.search import evidence_depth

    one_pixel = [G("1"), G("2"), G("1"), G("2")]  # 4 bits in all: no room for even one searched step
    assert evidence_depth(one_pixel, n_ops=100) == 0
    boards = [G("1212 2121 1212"), G("3434 4343 3434")]  # 24 bits - 4 margin = 20: three levels of 6.6 bits
    assert evidence_depth(boards, n_ops=100) == 3
    assert evidence_depth(boards, n_ops=100, margin_bits=8) == 2


def test_output_painted_in_a_color_taken_from_the_input():
    # the shape is copied, painted in the input's rarest color (the single marker pixel)
    task = make_task("paint", [("1100 1000 0003", "3300 3000 0000"), ("1110 0000 4000", "4440 0000 0000")],
                     [("0110 0110 0000 6000", "0660 0660 0000 0000")])
    result = solve_task(task, FAST)
    assert np.array_equal(first_answer(result), task.test[0].output), result.candidates[0][0].program
