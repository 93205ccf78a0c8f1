"""Selection specifications: attempts, product of experts with a pure score function, the program-expert rule,
multi-test tasks, fallbacks, and the offline harness on a synthetic candidate file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.augment import Augmentation
from arcttt_kaggle.arc.candidates import Candidate, read_candidate_file, write_candidate_file
from arcttt_kaggle.arc.data import Pair, Task, grid_key, package_sample_dir
from arcttt_kaggle.selection.select import (VIEW_LOGPROBS, SelectConfig, attach_view_logprobs, attempts_or_fallback,
                                  ensemble_with_programs, program_answers, program_decided_tasks, select_all,
                                  select_attempts)
from arcttt_kaggle.selection.synthetic import SYNTHETIC_SOURCE, SyntheticConfig, write_synthetic_files

A = np.array([[9, 9], [9, 9]], dtype=np.uint8)  # cell sum 36
B = np.array([[1, 0], [0, 1]], dtype=np.uint8)  # cell sum 2
C = np.array([[3]], dtype=np.uint8)
P = np.array([[4, 4]], dtype=np.uint8)
Q = np.array([[6, 6]], dtype=np.uint8)
# Demonstrations that rule none of the grids above out (selection.consistency): their outputs hold every colour
# used here, one of them has a single colour, and they change their inputs' shapes.
TASK = Task("t1", (Pair(np.zeros((2, 2), np.uint8), np.array([[9, 1, 0, 3, 4, 6]], np.uint8)),
                   Pair(np.zeros((2, 2), np.uint8), np.ones((1, 1), np.uint8))),
            (Pair(np.zeros((2, 2), np.uint8)),))
TASK2 = Task("t2", TASK.train, (Pair(np.zeros((2, 2), np.uint8)), Pair(np.ones((3, 3), np.uint8))))


def cand(grid, fam: str = "id", lp: float = -1.0, **extra) -> Candidate:
    return Candidate(grid, "ttt", Augmentation(fam).to_string(), lp, extra=extra)


def prog(grid, verified: bool = True) -> Candidate:
    return Candidate(grid, "program", "", 0.0, "p", verified)


def same(a, b) -> bool:
    return a is not None and b is not None and grid_key(a) == grid_key(b)


def small_sum_score(task: Task, test_index: int, grids: list, views: list) -> np.ndarray:
    """A pure stand-in scorer: every view prefers grids with a small cell sum (log-likelihood = -sum)."""
    return np.array([[-float(g.sum())] * len(views) for g in grids])


# -- config -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"method": "best"}, {"poe_top_c": 1}, {"poe_views": -1}, {"vote_weight": -1.0},
                                 {"vote_weight": float("inf")}, {"family_top": 0}, {"poe_prerank": "poe"},
                                 {"use_program_expert": 1}, {"seed": 1.5}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SelectConfig(**bad)


def test_config_fields_have_help():
    from dataclasses import fields
    assert all(f.metadata.get("help") for f in fields(SelectConfig))


# -- basic attempts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["flat", "two_level", "poe"])
def test_single_candidate_and_all_unparsable(method):
    cfg = SelectConfig(method=method)
    s = select_attempts(TASK, 0, [cand(A)], cfg)
    assert same(s.attempts[0], A) and s.attempts[1] is None and s.considered == 1 and s.method == method
    s = select_attempts(TASK, 0, [cand(A), cand(A, "rot90")], cfg, small_sum_score)
    assert s.scored == 0 and s.method == method  # one distinct grid: nothing to re-rank, no scoring spent
    s = select_attempts(TASK, 0, [cand(None), cand(None, "rot90")], cfg, small_sum_score)
    assert s.attempts == (None, None) and s.unparsable == 2 and s.ranked == () and s.scored == 0
    assert select_attempts(TASK, 0, [], cfg).attempts == (None, None)


def test_two_attempts_are_the_two_best_voted():
    s = select_attempts(TASK, 0, [cand(C), cand(A), cand(A), cand(B), cand(B), cand(A)], SelectConfig("flat"))
    assert same(s.attempts[0], A) and same(s.attempts[1], B) and s.method == "flat"


def test_two_test_inputs_are_independent():
    cs = {"t2": [[cand(A), cand(A), cand(B)], [cand(B), cand(B), cand(C)]]}
    sels = select_all({"t2": TASK2, "t1": TASK}, cs, SelectConfig("two_level"))
    (s0, s1), (m,) = sels["t2"], sels["t1"]
    assert same(s0.attempts[0], A) and same(s0.attempts[1], B)
    assert same(s1.attempts[0], B) and same(s1.attempts[1], C)
    assert m.attempts == (None, None)  # a task missing from the candidate set falls back
    short = select_all({"t2": TASK2}, {"t2": [[cand(A)]]}, SelectConfig())["t2"]
    assert len(short) == 2 and short[1].attempts == (None, None)


# -- product of experts --------------------------------------------------------------------------------------

def test_poe_reorders_against_votes():
    cands = [cand(A), cand(A, "rot90"), cand(A, "flipud"), cand(B, "rot180")]
    assert same(select_attempts(TASK, 0, cands, SelectConfig("flat")).attempts[0], A)
    s = select_attempts(TASK, 0, cands, SelectConfig("poe", poe_views=4), small_sum_score)
    # PoE: A = 4 x -36 + log 3, B = 4 x -2 + log 1 -> B first although A has 3 votes
    assert same(s.attempts[0], B) and same(s.attempts[1], A)
    assert s.method == "poe" and s.scored == 2 * 4
    assert s.ranked[0].poe_logprob == -8.0 and s.ranked[0].poe_views == 4
    assert s.ranked[1].score == pytest.approx(-144 + np.log(3))


def test_poe_vote_weight_can_keep_vote_order_and_near_ties_go_to_votes():
    cands = [cand(A)] * 3 + [cand(B, "rot90")]
    s = select_attempts(TASK, 0, cands, SelectConfig("poe", poe_views=1, vote_weight=1000.0), small_sum_score)
    assert same(s.attempts[0], A)

    def flat_score(task, i, grids, views):  # every grid equally likely: votes decide
        return np.zeros((len(grids), len(views)))

    s = select_attempts(TASK, 0, [cand(B)] + cands, SelectConfig("poe"), flat_score)
    assert same(s.attempts[0], A)


def test_poe_scores_only_top_c_and_passes_views():
    seen = {}

    def recording_score(task, test_index, grids, views):
        seen.update(task=task.id, test_index=test_index, n=len(grids), views=[v.to_string() for v in views])
        return small_sum_score(task, test_index, grids, views)

    cands = [cand(A)] * 3 + [cand(C)] * 2 + [cand(B)]
    s = select_attempts(TASK, 0, cands, SelectConfig("poe", poe_top_c=2, poe_views=3), recording_score)
    assert seen["task"] == "t1" and seen["test_index"] == 0 and seen["n"] == 2 and len(seen["views"]) == 3
    assert Augmentation.from_string(seen["views"][0]).is_identity
    assert s.scored == 6
    # C (sum 3) beats A among the two scored; B (not in the top 2) stays last despite its best score
    assert [grid_key(r.grid) for r in s.ranked] == [grid_key(C), grid_key(A), grid_key(B)]
    assert s.ranked[2].poe_logprob is None


def test_poe_bad_score_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        select_attempts(TASK, 0, [cand(A), cand(B)], SelectConfig("poe"), lambda t, i, g, v: np.zeros((1, 1)))


def test_poe_without_scores_falls_back_to_prerank():
    s = select_attempts(TASK, 0, [cand(A), cand(A), cand(B)], SelectConfig("poe", poe_prerank="two_level"))
    assert s.method == "two_level" and s.scored == 0 and same(s.attempts[0], A) and "no score_fn" in s.note


def test_poe_precomputed_view_logprobs():
    v1, v2, v3 = (Augmentation(d).to_string() for d in ("id", "rot90", "flipud"))
    cands = [cand(A, **{VIEW_LOGPROBS: {v1: -30.0, v2: -30.0}}), cand(A, "rot90"),
             cand(B, "flipud", **{VIEW_LOGPROBS: {v1: -1.0, v2: -2.0, v3: -500.0}})]
    s = select_attempts(TASK, 0, cands, SelectConfig("poe"))
    # only the views both grids have (v1, v2) are summed: B = -3, A = -60 + log 2
    assert same(s.attempts[0], B) and s.scored == 4 and s.ranked[0].poe_logprob == -3.0


def test_attach_view_logprobs_from_a_scores_file():
    v = Augmentation().to_string()
    cs = {"t1": [[cand(A), cand(B), cand(None)]]}
    scores = {"t1": [[Candidate(B, "scorer", extra={VIEW_LOGPROBS: {v: -1.0}}),
                      Candidate(C, "scorer", extra={VIEW_LOGPROBS: {v: -0.5}})]]}
    out = attach_view_logprobs(cs, scores)["t1"][0]
    assert VIEW_LOGPROBS not in out[0].extra and out[1].extra[VIEW_LOGPROBS] == {v: -1.0} and len(out) == 3


# -- program-expert ensemble ---------------------------------------------------------------------------------

def test_ensemble_agree_keeps_ttt_order():
    e = ensemble_with_programs((A, B), [prog(A)])
    assert e.role == "agreed" and not e.decided_by_program and same(e.attempts[0], A) and same(e.attempts[1], B)


def test_ensemble_differ_with_one_verified_answer_overrides():
    e = ensemble_with_programs((A, B), [prog(P), prog(P), prog(Q, verified=False)])
    assert e.role == "overrode" and e.decided_by_program and e.program_answers == 1
    assert same(e.attempts[0], P) and same(e.attempts[1], A)


def test_ensemble_differ_with_two_distinct_verified_keeps_ttt():
    e = ensemble_with_programs((A, B), [prog(P), prog(Q)])
    assert e.role == "ambiguous" and not e.decided_by_program and not e.filled
    assert same(e.attempts[0], A) and same(e.attempts[1], B)
    e = ensemble_with_programs((A, None), [prog(P), prog(Q), prog(Q)])  # empty slot: most-supported answer
    assert e.filled and same(e.attempts[1], Q)


def test_ensemble_without_ttt_answer_puts_programs_first():
    e = ensemble_with_programs((None, None), [prog(P), prog(Q), prog(Q)])
    assert e.role == "sole" and e.decided_by_program and same(e.attempts[0], Q) and same(e.attempts[1], P)
    assert ensemble_with_programs((None, None), [prog(P, verified=False)]).attempts == (None, None)
    assert [grid_key(g) for g in program_answers([prog(P), prog(P)])] == [grid_key(P)]


def test_select_with_program_expert_and_decided_tasks():
    cs = {"t2": [[cand(A), cand(A), cand(B)], [cand(B)]], "t1": [[cand(A)]]}
    ps = {"t2": [[prog(P)], []], "t1": [[prog(A)]]}
    sels = select_all({"t2": TASK2, "t1": TASK}, cs, SelectConfig("flat"), program_set=ps)
    s0 = sels["t2"][0]
    assert s0.decided_by_program and same(s0.attempts[0], P) and same(s0.attempts[1], A)
    assert sels["t2"][1].program_role == "off" and sels["t1"][0].program_role == "agreed"
    assert program_decided_tasks(sels) == ["t2"]
    off = select_all({"t2": TASK2}, cs, SelectConfig("flat", use_program_expert=False), program_set=ps)
    assert same(off["t2"][0].attempts[0], A) and not off["t2"][0].decided_by_program
    json.dumps(s0.to_dict())


def test_attempts_or_fallback():
    fb = (C, P)
    s = select_attempts(TASK, 0, [], SelectConfig())
    a1, a2 = attempts_or_fallback(s, fb)
    assert same(a1, C) and same(a2, P)
    a1, a2 = attempts_or_fallback(select_attempts(TASK, 0, [cand(C)], SelectConfig()), fb)
    assert same(a1, C) and same(a2, P)  # the fallback's duplicate of attempt_1 is skipped
    a1, a2 = attempts_or_fallback(select_attempts(TASK, 0, [cand(A)], SelectConfig()), fb)
    assert same(a1, A) and same(a2, C)


# -- synthetic generator and offline harness -----------------------------------------------------------------

def _harness():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "selection.py"
    spec = importlib.util.spec_from_file_location("selection_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_files_are_labelled_and_deterministic(sample_tasks, tmp_path):
    c1, p1 = write_synthetic_files(sample_tasks, SyntheticConfig(seed=3), tmp_path / "a")
    c2, _ = write_synthetic_files(sample_tasks, SyntheticConfig(seed=3), tmp_path / "b")
    assert c1.read_text() == c2.read_text()
    cands, header = read_candidate_file(c1)
    assert header["source"] == SYNTHETIC_SOURCE and header["meta"]["synthetic"] is True
    assert all(c.source == "synthetic" for tests in cands.values() for per in tests for c in per)
    progs, _ = read_candidate_file(p1)
    assert all(c.verified for tests in progs.values() for per in tests for c in per)


def test_harness_on_a_synthetic_file(sample_tasks, tmp_path, capsys):
    cands, progs = write_synthetic_files(sample_tasks, SyntheticConfig(seed=1), tmp_path)
    sols = package_sample_dir() / "arc-agi_test_solutions.json"
    rows = _harness().main(["--candidates", str(cands), "--programs", str(progs), "--solutions", str(sols),
                            "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "SYNTHETIC CANDIDATES" in out and "claim NO accuracy" in out
    names = [r["method"] for r in rows]
    assert names == ["flat", "two_level", "poe", "flat+programs", "two_level+programs", "poe+programs"]
    for r in rows:
        assert r["tasks"] == 10 and r["outputs"] == 13 and r["method"] in out
        assert 0 <= r["top2"] <= r["oracle"] <= 1 and r["cands"] > 0
        assert (r["scorings"] > 0) == r["method"].startswith("poe")
        assert r["prog"] == 0 or r["method"].endswith("+programs")
    assert json.loads((tmp_path / "rows.json").read_text())["synthetic"] is True


def test_harness_synthetic_flag_without_scores_or_programs(tmp_path, capsys):
    rows = _harness().main(["--synthetic"])
    assert "SYNTHETIC CANDIDATES" in capsys.readouterr().out and len(rows) == 6
    both = _harness().main(["--synthetic", "--consistency", "both"])
    assert [r["method"] for r in both[:2]] == ["flat", "flat (no consistency check)"] and len(both) == 12
    assert both[::2] == rows  # the check-on rows are the default run's
    capsys.readouterr()
    # a real-format file without view_logprobs and without programs: no poe row, no expert rows
    cands = {"00576224": [[cand(A)]]}
    write_candidate_file(tmp_path / "c.json", cands, "ttt")
    rows = _harness().main(["--candidates", str(tmp_path / "c.json"),
                            "--solutions", str(package_sample_dir() / "arc-agi_test_solutions.json")])
    assert [r["method"] for r in rows] == ["flat", "two_level"] and rows[0]["tasks"] == 1
    assert "SYNTHETIC" not in capsys.readouterr().out
