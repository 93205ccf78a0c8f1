"""Voting specifications on hand-built candidate sets: merging, ties, unparsable outputs, two-level rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.arc.augment import Augmentation
from arcttt_kaggle.arc.candidates import Candidate
from arcttt_kaggle.arc.data import grid_key
from arcttt_kaggle.selection.vote import count_unparsable, family_of, flat_vote, two_level_vote, vote

A = np.array([[1, 2], [3, 4]], dtype=np.uint8)
B = np.array([[5, 5], [5, 5]], dtype=np.uint8)
C = np.array([[7]], dtype=np.uint8)


def view(dihedral: str = "id", colors: tuple[int, ...] = tuple(range(10))) -> str:
    return Augmentation(dihedral, colors).to_string()


def cand(grid, fam: str = "id", lp: float = -1.0, colors: tuple[int, ...] = tuple(range(10))) -> Candidate:
    return Candidate(None if grid is None else np.array(grid, dtype=np.uint8), "ttt", view(fam, colors), lp)


def keys(ranked) -> list[bytes]:
    return [r.key for r in ranked]


# -- flat ------------------------------------------------------------------------------------------------------

def test_flat_ranks_by_frequency():
    r = flat_vote([cand(B), cand(A), cand(A), cand(C), cand(A), cand(B)])
    assert keys(r) == [grid_key(A), grid_key(B), grid_key(C)]
    assert [x.votes for x in r] == [3, 2, 1]
    assert [x.score for x in r] == [3.0, 2.0, 1.0]


def test_flat_tie_broken_by_cumulative_logprob():
    # A and B both have 2 votes; B's samples are more likely in total, so B wins although A came first.
    cands = [cand(A, lp=-5), cand(A, lp=-5), cand(B, lp=-1), cand(B, lp=-2)]
    r = flat_vote(cands)
    assert keys(r) == [grid_key(B), grid_key(A)]
    assert r[0].sum_logprob == -3 and r[0].best_logprob == -1 and r[0].mean_logprob == -1.5


def test_flat_full_tie_falls_back_to_first_appearance():
    r = flat_vote([cand(B, lp=-2), cand(A, lp=-2)])
    assert keys(r) == [grid_key(B), grid_key(A)]


def test_single_candidate():
    r = flat_vote([cand(A, "rot90", -0.5)])
    assert len(r) == 1 and r[0].votes == 1 and r[0].families == 1 and np.array_equal(r[0].grid, A)
    assert two_level_vote([cand(A, "rot90")])[0].family_votes == 1


def test_all_unparsable_gives_empty_ranking_but_is_counted():
    cands = [cand(None), cand(None, "rot90")]
    assert flat_vote(cands) == [] and two_level_vote(cands) == []
    assert count_unparsable(cands) == 2


def test_unparsable_never_win_even_when_most_frequent():
    cands = [cand(None)] * 5 + [cand(A)]
    assert keys(flat_vote(cands)) == [grid_key(A)]
    assert keys(two_level_vote(cands)) == [grid_key(A)]


def test_duplicate_grids_from_different_views_merge():
    cands = [cand(A, "id"), cand(A, "rot90", colors=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9)), cand(A, "flipud"),
             cand(A, "flipud", colors=(0, 3, 2, 1, 4, 5, 6, 7, 8, 9))]
    (r,) = flat_vote(cands)
    assert r.votes == 4 and r.families == 3 and len(r.views) == 4
    # the grid array is compared exactly: a copy with the same cells merges, another shape does not
    assert len(flat_vote(cands + [Candidate(A.copy(), view="")])) == 1
    assert len(flat_vote(cands + [Candidate(A.reshape(1, 4))])) == 2


def test_sources_are_collected():
    r = flat_vote([Candidate(A, "ttt", view("id")), Candidate(A, "other", view("rot90"))])
    assert r[0].sources == ("other", "ttt")


# -- two-level -------------------------------------------------------------------------------------------------

def test_two_level_one_family_cannot_outvote_the_others():
    # A: 5 samples, all under transpose. B: one sample in each of 3 other families.
    cands = [cand(A, "transpose")] * 5 + [cand(B, "id"), cand(B, "rot90"), cand(B, "flipud")]
    assert keys(flat_vote(cands))[0] == grid_key(A)
    r = two_level_vote(cands)
    assert keys(r) == [grid_key(B), grid_key(A)]
    assert (r[0].family_votes, r[0].votes, r[1].family_votes, r[1].votes) == (3, 3, 1, 5)


def test_two_level_keeps_only_per_family_top():
    # In family id: A x3, B x2, C x1. With top-1 only A gets the family's vote; with top-3 all three do.
    cands = [cand(A)] * 3 + [cand(B)] * 2 + [cand(C)]
    top1 = two_level_vote(cands, per_family_top=1)
    assert [x.family_votes for x in top1] == [1, 0, 0]
    assert keys(top1) == [grid_key(A), grid_key(B), grid_key(C)]  # unkept grids still listed, by total votes
    assert [x.family_votes for x in two_level_vote(cands, per_family_top=3)] == [1, 1, 1]


def test_two_level_family_tie_broken_by_total_count():
    cands = [cand(A, "rot90"), cand(A, "rot90"), cand(B, "rot90"), cand(A, "flipud"), cand(B, "flipud")]
    # both grids are in the top-3 of both families (2 family votes each); A has 3 samples, B 2
    assert keys(two_level_vote(cands)) == [grid_key(A), grid_key(B)]


def test_two_level_tie_goes_to_identity_family_then_logprob():
    # Same family votes (2) and same total votes (2); B was produced under the identity view -> B first.
    cands = [cand(A, "rot90", -0.1), cand(A, "flipud", -0.1), cand(B, "id", -9), cand(B, "rot180", -9)]
    assert keys(two_level_vote(cands)) == [grid_key(B), grid_key(A)]
    # Without an identity view the cumulative logprob decides.
    cands = [cand(A, "rot90", -9), cand(A, "flipud", -9), cand(B, "rot270", -1), cand(B, "rot180", -1)]
    assert keys(two_level_vote(cands)) == [grid_key(B), grid_key(A)]


def test_two_level_within_family_tie_uses_best_logprob():
    # Family id: A and B once each; with top-1 the more likely one gets the family vote.
    cands = [cand(A, "id", -5), cand(B, "id", -1)]
    r = two_level_vote(cands, per_family_top=1)
    assert keys(r)[0] == grid_key(B) and r[0].family_votes == 1 and r[1].family_votes == 0


def test_family_of_views():
    assert family_of("") == "id"
    assert family_of(view("rot90", (0, 2, 1, 3, 4, 5, 6, 7, 8, 9))) == "rot90"
    assert family_of("not-a-view") == "not-a-view"


def test_vote_dispatch_and_validation():
    assert keys(vote([cand(A)], "flat")) == keys(vote([cand(A)], "two_level"))
    with pytest.raises(ValueError, match="unknown voting method"):
        vote([cand(A)], "majority")
    with pytest.raises(ValueError, match="per_family_top"):
        two_level_vote([cand(A)], per_family_top=0)


def test_ranked_to_dict_is_json():
    json.dumps([r.to_dict() for r in two_level_vote([cand(A), cand(B, "rot90")])])


GRIDS = [A, B, C, A.T.copy()]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([None, 0, 1, 2, 3]), st.sampled_from(["id", "rot90", "flipud"]),
                          st.floats(-20, 0)), max_size=30))
def test_votes_partition_the_parsed_candidates(spec):
    cands = [cand(None if g is None else GRIDS[g], f, lp) for g, f, lp in spec]
    parsed = [c for c in cands if c.grid is not None]
    for ranked in (flat_vote(cands), two_level_vote(cands)):
        assert sum(r.votes for r in ranked) == len(parsed)
        assert {r.key for r in ranked} == {c.key for c in parsed}
        assert len(ranked) == len({r.key for r in ranked})
    assert keys(flat_vote(cands)) == keys(flat_vote(list(cands)))  # deterministic
