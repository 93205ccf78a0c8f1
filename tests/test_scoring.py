"""scoring.py: the ARC Prize metric (either attempt exact; mean over test outputs and over tasks)."""

from __future__ import annotations

import json

import pytest

from arcttt_kaggle.arc.data import load_challenges, load_solutions
from arcttt_kaggle.arc.scoring import score_submission, score_submission_files, score_task, solutions_as_submission
from arcttt_kaggle.arc.submission import build_submission


def entry(a1, a2) -> dict:
    return {"attempt_1": a1, "attempt_2": a2}


def test_solutions_submitted_score_exactly_one_on_arc_agi_1_evaluation(shared_data):
    solutions = load_solutions(shared_data / "arc-agi-1" / "arc-agi_evaluation_solutions.json")
    report = score_submission(solutions_as_submission(solutions), solutions)
    assert len(report.per_task) == 400 and report.total == 419
    assert report.score == 1.0 and report.task_score == 1.0 and report.correct == 419


def test_all_fallback_answers_score_what_an_independent_count_says(shared_data):
    d = shared_data / "arc-agi-1"
    challenges = d / "arc-agi_evaluation_challenges.json"
    tasks = load_challenges(challenges).tasks
    submission = json.loads(json.dumps(build_submission(tasks, {})))  # as Kaggle would read it
    truth = json.loads((d / "arc-agi_evaluation_solutions.json").read_text())
    # Independent count on plain JSON lists: no numpy, no package code.
    hits = sum(any(submission[tid][i][a] == out for a in ("attempt_1", "attempt_2"))
               for tid, outs in truth.items() for i, out in enumerate(outs))
    per_task = [sum(any(submission[tid][i][a] == out for a in ("attempt_1", "attempt_2"))
                    for i, out in enumerate(outs)) / len(outs) for tid, outs in truth.items()]
    report = score_submission(submission, load_solutions(d / "arc-agi_evaluation_solutions.json"))
    assert report.correct == hits and report.total == 419
    assert report.score == pytest.approx(hits / 419)
    assert report.task_score == pytest.approx(sum(per_task) / 400)
    assert hits == 2  # the color-mapping / constant guesses solve 45737921 and 642d658d


def test_attempt_2_counts_and_attempt_1_counts():
    sols = {"a": [[[1]]], "b": [[[2]]], "c": [[[3]]]}
    sub = {"a": [entry([[9]], [[1]])], "b": [entry([[2]], [[9]])], "c": [entry([[9]], [[9]])]}
    report = score_submission(sub, sols)
    assert [r.n_correct for r in report.per_task] == [1, 1, 0]
    assert report.correct == 2 and report.total == 3


def test_partially_correct_multi_test_task():
    sols = {"multi": [[[1, 2]], [[3], [4]], [[5]]], "single": [[[0]]]}
    sub = {"multi": [entry([[1, 2]], [[0]]), entry([[3, 4]], [[4], [3]]), entry([[6]], [[5]])],
           "single": [entry([[1]], [[2]])]}
    report = score_submission(sub, sols)
    multi = report.per_task[0]
    assert multi.correct == (True, False, True) and multi.n_test == 3 and multi.score == pytest.approx(2 / 3)
    assert report.score == pytest.approx(2 / 4)  # mean over the four test outputs
    assert report.task_score == pytest.approx((2 / 3 + 0) / 2)  # mean over the two tasks
    table = report.format_table()
    assert "multi" in table and "0.667" in table and table.splitlines()[-2].startswith("score (mean over 4")


def test_exact_match_needs_same_shape_and_cells():
    sols = {"t": [[[1, 1]]]}
    assert score_submission({"t": [entry([[1], [1]], [[1, 1, 1]])]}, sols).correct == 0
    assert score_submission({"t": [entry([[1, 1]], [[1, 1]])]}, sols).correct == 1


def test_missing_task_and_missing_entries_score_zero():
    sols = {"a": [[[1]], [[2]]], "b": [[[3]]]}
    report = score_submission({"a": [entry([[1]], [[1]])], "zzz": []}, sols)
    a, b = report.per_task
    assert a.correct == (True, False) and not b.submitted and b.n_correct == 0
    assert report.unscored == ("zzz",) and report.total == 3
    assert "(missing)" in report.format_table()


def test_malformed_attempts_do_not_match_and_do_not_raise():
    sols = [[[1]]]
    for bad in (None, "x", [[10]], [[1], [1, 2]], [[True]], 5, [entry([[1]], [[1]])]):
        assert score_task([entry(bad, bad)], sols).n_correct == 0
    assert score_task("not a list", sols).n_correct == 0
    assert score_task([["not a dict"]], sols).n_correct == 0
    with pytest.raises(ValueError, match="expected an object of task_id"):
        score_submission([], {"a": sols})


def test_score_files(tmp_path, sample_tasks):
    from arcttt_kaggle.arc.data import package_sample_dir

    sol = package_sample_dir() / "arc-agi_test_solutions.json"
    sub = tmp_path / "submission.json"
    sub.write_text(json.dumps(solutions_as_submission(load_solutions(sol))))
    assert score_submission_files(sub, sol).score == 1.0
    sub.write_text('{"a":\n[}')
    with pytest.raises(ValueError, match=r"submission\.json: invalid JSON at line 2"):
        score_submission_files(sub, sol)
