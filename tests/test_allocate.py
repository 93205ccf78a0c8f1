"""Allocation specifications: difficulty features, unanimous tasks get nothing, harder tasks get more, the
budget is never exceeded, and everything serializes to JSON for the run report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.selection.allocate import (AllocationConfig, Difficulty, allocate, allocation_report,
                                    estimate_difficulty)
from arcttt_kaggle.arc.augment import DIHEDRAL_NAMES, Augmentation
from arcttt_kaggle.arc.candidates import Candidate

GRIDS = [np.full((2, 2), v, dtype=np.uint8) for v in range(8)]


def cands(*ids) -> list[Candidate]:
    """One candidate per view; an int picks GRIDS[i], None is an unparsable output."""
    return [Candidate(None if i is None else GRIDS[i], "ttt", Augmentation(DIHEDRAL_NAMES[k % 8]).to_string())
            for k, i in enumerate(ids)]


UNANIMOUS = cands(0, 0, 0, 0)
MOSTLY = cands(0, 0, 0, 1)
SPLIT = cands(0, 0, 1, 2)
CHAOS = cands(0, 1, 2, None)
FAILED = cands(None, None, None, None)


def est(task_id: str, per_test, views: int = 4, **kw) -> Difficulty:
    return estimate_difficulty(task_id, per_test, views, **kw)


# -- estimates -----------------------------------------------------------------------------------------------

def test_unanimous_first_pass_is_certain():
    d = est("u", [UNANIMOUS])
    assert d.unanimous and d.uncertainty == 0 and d.bin == 0 and d.agreement == 1 and d.distinct == 1
    assert d.logprob_margin is None


def test_all_unparsable_is_maximally_uncertain():
    d = est("f", [FAILED])
    assert d.uncertainty == 1 and d.bin == 3 and not d.unanimous and d.failure_rate == 1 and d.parse_failures == 4
    assert est("none", []).uncertainty == 1  # no candidates at all


def test_features_of_a_split_vote():
    d = est("s", [SPLIT])
    assert (d.top_votes, d.distinct, d.parse_failures) == (2, 3, 0)
    assert d.agreement == 0.5 and d.vote_margin == 0.25 and d.diversity == pytest.approx(2 / 3)
    assert 0 < est("m", [MOSTLY]).uncertainty < d.uncertainty < est("c", [CHAOS]).uncertainty < 1


def test_task_estimate_is_its_hardest_test_input():
    d = est("two", [UNANIMOUS, CHAOS])
    assert d.hardest_test == 1 and not d.unanimous and d.num_tests == 2 and d.cost_per_view == 2.0
    assert d.uncertainty == est("c", [CHAOS]).uncertainty
    assert d.per_test_uncertainty == (0.0, d.uncertainty)


def test_single_view_cannot_be_unanimous():
    assert not est("one", [cands(0)], views=1).unanimous


def test_more_candidates_than_views_keeps_agreement_a_fraction():
    d = est("x", [cands(0, 0, 0, 0, 0, 0, 1, 1)], views=4)
    assert d.agreement == 6 / 8


def test_difficulty_and_report_are_json():
    ests = {d.task_id: d for d in (est("a", [SPLIT]), est("b", [UNANIMOUS]), est("c", [FAILED]))}
    for d in ests.values():
        assert Difficulty.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    alloc = allocate(ests, 100)
    rep = json.loads(json.dumps(allocation_report(ests, alloc, 100)))
    assert rep["tasks"]["c"]["extra_views"] == alloc["c"] and rep["spent_units"] <= 100


# -- policy --------------------------------------------------------------------------------------------------

def test_unanimous_tasks_get_nothing_even_with_budget_to_spare():
    cfg = AllocationConfig(extra_views_per_bin=(5, 5, 5, 5))
    ests = {"u": est("u", [UNANIMOUS]), "s": est("s", [SPLIT])}
    assert allocate(ests, 1000, cfg) == {"u": 0, "s": 5}
    assert allocate(ests, 1000, replace(cfg, stop_if_unanimous=False))["u"] == 5


def test_min_agreement_relaxes_unanimity():
    cfg = AllocationConfig(min_agreement=0.75)
    assert est("m", [MOSTLY], config=cfg).unanimous and not est("m", [MOSTLY]).unanimous


def test_harder_tasks_get_more():
    ests = {t: est(t, [c]) for t, c in (("easy", MOSTLY), ("mid", SPLIT), ("hard", FAILED))}
    bins = {t: d.bin for t, d in ests.items()}
    assert bins["easy"] < bins["mid"] < bins["hard"]
    a = allocate(ests, 1000)
    assert a["easy"] < a["mid"] < a["hard"]


def test_tight_budget_goes_to_the_hardest_first_and_partially():
    ests = {t: est(t, [c]) for t, c in (("easy", MOSTLY), ("mid", SPLIT), ("hard", FAILED))}
    assert allocate(ests, 14) == {"easy": 0, "mid": 2, "hard": 12}
    assert allocate(ests, 5) == {"easy": 0, "mid": 0, "hard": 5}
    assert allocate(ests, 0) == {"easy": 0, "mid": 0, "hard": 0}
    # ties of bin are broken by uncertainty: the more uncertain of two same-bin tasks is served first
    a, b = est("a", [CHAOS]), est("b", [FAILED])
    assert a.bin == b.bin and a.uncertainty != b.uncertainty
    first = max((a, b), key=lambda d: d.uncertainty).task_id
    assert allocate({"a": a, "b": b}, 12)[first] == 12


def test_cost_per_view_and_min_extra():
    two = est("two", [FAILED, FAILED])  # costs 2 units per view
    assert allocate({"two": two}, 7) == {"two": 3}
    assert allocate({"two": two}, 7, AllocationConfig(min_extra=4)) == {"two": 0}
    assert allocate({"two": two}, float("inf")) == {"two": 12}


@pytest.mark.parametrize("bad", [{"thresholds": (0.5, 0.25)}, {"thresholds": (0.0, 0.5)},
                                 {"extra_views_per_bin": (1, 2)}, {"extra_views_per_bin": (0, 1, -1, 2)},
                                 {"min_agreement": 0}, {"weights": (0, 0, 0, 0)}, {"min_extra": 0},
                                 {"stop_if_unanimous": "yes"}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        AllocationConfig(**bad)
    with pytest.raises(ValueError):
        allocate({}, -1)


def test_config_fields_have_help():
    from dataclasses import fields
    assert all(f.metadata.get("help") for f in fields(AllocationConfig))


pattern = st.lists(st.sampled_from([None, 0, 1, 2, 3]), min_size=0, max_size=8)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.lists(pattern, min_size=1, max_size=3), st.floats(0.5, 5)), min_size=1, max_size=12),
       st.floats(0, 200))
def test_budget_never_exceeded_and_deterministic(tasks, budget):
    ests = {f"t{i}": estimate_difficulty(f"t{i}", [cands(*p) for p in per_test], 4, cost_per_view=cost)
            for i, (per_test, cost) in enumerate(tasks)}
    a = allocate(ests, budget)
    assert set(a) == set(ests) and all(v >= 0 for v in a.values())
    assert sum(a[t] * ests[t].cost_per_view for t in ests) <= budget + 1e-9
    assert a == allocate(dict(reversed(list(ests.items()))), budget)
    assert all(a[t] == 0 for t, d in ests.items() if d.unanimous)
    assert all(0 <= d.uncertainty <= 1 for d in ests.values())
