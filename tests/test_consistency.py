"""Specifications of the demonstrations' consistency check: each rule, the demotion (reorders, never drops), its
place in the selection, and the measured claim that no true ARC test output breaks a rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcttt_kaggle.arc.augment import Augmentation
from arcttt_kaggle.arc.candidates import Candidate
from arcttt_kaggle.arc.data import Pair, Task, grid_key, load_challenges, shared_data_dir
from arcttt_kaggle.selection.consistency import RULES, Evidence, demote_inconsistent, rule_counts
from arcttt_kaggle.selection.select import SelectConfig, select_attempts


def g(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# Demonstrations: 3x3 -> 3x3 (the shape is kept), outputs of two colours (1 and 2), test input of colours 0 and 5.
TASK = Task("keep", (Pair(g([[0, 1, 0]] * 3), g([[2, 1, 2]] * 3)), Pair(g([[1, 0, 0]] * 3), g([[1, 2, 2]] * 3))),
            (Pair(g([[0, 5, 0]] * 3)),))
RIGHT = g([[2, 5, 2]] * 3)
BACKGROUND = g([[0] * 3] * 3)  # one colour, where no demonstration output has one
ALIEN = g([[2, 7, 2]] * 3)  # colour 7: in no demonstration output, not in the test input
SMALL = g([[2, 5]])  # the task keeps every input's shape; this does not


def cand(grid, view: str = "id") -> Candidate:
    return Candidate(grid, "ttt", Augmentation(view).to_string(), -1.0)


def test_each_rule_names_what_the_demonstrations_rule_out():
    ev = Evidence.of(TASK, 0)
    assert ev.violations(RIGHT) == ()
    assert ev.violations(BACKGROUND) == ("single_colour",)
    assert ev.violations(ALIEN) == ("new_colour",)
    assert ev.violations(SMALL) == ("shape",)
    assert set(ev.violations(g([[7]]))) == {"single_colour", "new_colour", "shape"}


def test_rules_stand_down_where_the_demonstrations_allow():
    # a single-colour demonstration output allows single-colour answers; a shape change lifts the shape rule
    task = Task("loose", (Pair(g([[0, 1]]), g([[3]])), Pair(g([[1, 1]]), g([[3, 1], [1, 3]]))), (Pair(g([[0, 0]])),))
    ev = Evidence.of(task, 0)
    assert ev.violations(g([[3, 3, 3]])) == () and ev.violations(g([[0]])) == ()
    assert ev.violations(g([[4]])) == ("new_colour",)


grids = st.lists(st.sampled_from([RIGHT, BACKGROUND, ALIEN, SMALL, g([[1, 2, 5]] * 3)]), min_size=0, max_size=8)


@given(grids)
def test_demotion_reorders_stably_and_never_drops(gs):
    ev = Evidence.of(TASK, 0)
    items = list(range(len(gs)))
    out, moved = demote_inconsistent(items, gs, ev)
    assert sorted(out) == items  # a permutation: nothing dropped, nothing added
    bad = [bool(ev.violations(x)) for x in gs]
    if all(bad) or not any(bad):
        assert out == items and moved == 0
    else:
        good_part, bad_part = out[: len(gs) - sum(bad)], out[len(gs) - sum(bad):]
        assert good_part == [i for i in items if not bad[i]] and bad_part == [i for i in items if bad[i]]
        assert moved == sum(bad)


def test_selection_puts_a_voted_background_grid_after_a_consistent_one():
    cands = [cand(BACKGROUND), cand(BACKGROUND, "rot90"), cand(BACKGROUND, "flipud"), cand(RIGHT, "rot180")]
    on = select_attempts(TASK, 0, cands, SelectConfig("flat", use_program_expert=False))
    off = select_attempts(TASK, 0, cands, SelectConfig("flat", use_program_expert=False, demote_inconsistent=False))
    assert grid_key(off.attempts[0]) == grid_key(BACKGROUND) and off.demoted == 0
    assert [grid_key(a) for a in on.attempts] == [grid_key(RIGHT), grid_key(BACKGROUND)] and on.demoted == 1
    assert on.to_dict()["demoted"] == 1


def test_product_of_experts_cannot_lift_an_inconsistent_grid_back():
    # the scorer loves the background grid under every view; the pool holds it (only two distinct grids), yet it
    # stays behind the consistent grid after re-ranking
    def loves_background(task, i, gs, views):
        return np.array([[0.0 if grid_key(x) == grid_key(BACKGROUND) else -50.0] * len(views) for x in gs])

    cands = [cand(BACKGROUND), cand(BACKGROUND, "rot90"), cand(RIGHT, "rot180")]
    s = select_attempts(TASK, 0, cands, SelectConfig("poe", poe_views=2, use_program_expert=False), loves_background)
    assert grid_key(s.attempts[0]) == grid_key(RIGHT) and s.scored == 4
    s = select_attempts(TASK, 0, cands, SelectConfig("poe", poe_views=2, use_program_expert=False,
                                                     demote_inconsistent=False), loves_background)
    assert grid_key(s.attempts[0]) == grid_key(BACKGROUND)


def test_config_rejects_a_non_bool():
    with pytest.raises(ValueError, match="demote_inconsistent"):
        SelectConfig(demote_inconsistent=1)


def test_rule_counts_need_solutions():
    with pytest.raises(ValueError, match="task keep: test 0 has no solution"):
        rule_counts([TASK])


@pytest.mark.parametrize("file", ["arc-agi-1/arc-agi_training", "arc-agi-2/arc-agi_training"])
def test_no_true_training_output_breaks_a_rule(file):
    """The claim the demotion rests on, on the files the rules were chosen on (benchmarks/consistency_rules.py
    prints every file)."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("../shared/data is absent: the ARC training files are read from there")
    tasks = list(load_challenges(data / f"{file}_challenges.json", solutions=data / f"{file}_solutions.json")
                 .tasks.values())
    counts = rule_counts(tasks)
    assert set(counts) == set(RULES)
    assert all(applies > 200 for applies, _ in counts.values())  # each rule does apply, often
    assert {r: wrong for r, (_, wrong) in counts.items()} == {r: 0 for r in RULES}
