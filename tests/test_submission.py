"""submission.py: fallback-filled building, atomic writing, and validation that names every violation."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from arcttt_kaggle.arc.candidates import atomic_write_text
from arcttt_kaggle.arc.data import Pair, Task, package_sample_dir
from arcttt_kaggle.arc.submission import (build_submission, constant_guess, count_test_inputs, fallback_attempts,
                                      majority_color_map, validate_submission, validate_submission_file,
                                      write_submission)

CHALLENGES = package_sample_dir() / "arc-agi_test_challenges.json"


def a(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


@pytest.fixture()
def fallback_sub(sample_tasks) -> dict:
    return build_submission(sample_tasks, {})


def test_fallback_submission_for_all_sample_tasks_is_valid(sample_tasks, fallback_sub, tmp_path):
    assert list(fallback_sub) == list(sample_tasks)
    assert validate_submission(fallback_sub, sample_tasks) == []
    raw = json.loads(CHALLENGES.read_text())
    assert validate_submission(fallback_sub, raw) == []
    path = tmp_path / "submission.json"
    write_submission(path, fallback_sub)
    assert json.loads(path.read_text()) == fallback_sub
    assert validate_submission_file(path, CHALLENGES) == []
    for tid, task in sample_tasks.items():
        assert len(fallback_sub[tid]) == len(task.test)
        for entry, p in zip(fallback_sub[tid], task.test):
            assert entry["attempt_1"] == p.input.tolist()  # attempt_1: the test input itself


def test_fallback_recolors_when_shapes_match():
    task = Task("0000c010", (Pair(a([[1, 2], [0, 1]]), a([[5, 6], [0, 5]])), Pair(a([[2]]), a([[6]]))),
                (Pair(a([[2, 1, 3]])),))
    assert majority_color_map(task).tolist() == [0, 5, 6, 3, 4, 5, 6, 7, 8, 9]
    [(first, second)] = fallback_attempts(task)
    assert first.tolist() == [[2, 1, 3]] and second.tolist() == [[6, 5, 3]]


def test_fallback_fills_the_common_output_shape_when_shapes_differ():
    task = Task("0000c011", (Pair(a([[1, 2]]), a([[4], [4]])), Pair(a([[3]]), a([[4], [0]])),
                             Pair(a([[3, 3, 3]]), a([[1, 4, 1]]))), (Pair(a([[7, 7]])),))
    assert majority_color_map(task) is None
    [(first, second)] = fallback_attempts(task)
    assert second.tolist() == [[4], [4]] == constant_guess(task).tolist()


def test_fallback_attempts_differ_when_the_color_map_is_identity():
    task = Task("0000c012", (Pair(a([[1, 2, 2]]), a([[1, 2, 2]])),), (Pair(a([[2, 1, 0]])),))
    assert majority_color_map(task).tolist() == list(range(10))  # recoloring would repeat attempt_1
    [(first, second)] = fallback_attempts(task)
    assert first.tolist() == [[2, 1, 0]] and second.tolist() == [[2, 2, 2]]  # common shape, common color


def test_answers_are_used_and_gaps_filled(sample_tasks):
    tid = next(t for t, task in sample_tasks.items() if len(task.test) == 2)
    other = next(t for t in sample_tasks if t != tid)
    fb = fallback_attempts(sample_tasks[tid])
    answers = {tid: [(a([[1]]), a([[2]]))],  # only the first test input answered
               other: [(a([[3]]), [[10]])],  # second attempt invalid -> filled from the fallback
               "not-a-task": [(a([[1]]), a([[1]]))]}
    sub = build_submission(sample_tasks, answers)
    assert sub[tid][0] == {"attempt_1": [[1]], "attempt_2": [[2]]}
    assert sub[tid][1] == {"attempt_1": fb[1][0].tolist(), "attempt_2": fb[1][1].tolist()}
    assert sub[other][0]["attempt_1"] == [[3]]
    assert sub[other][0]["attempt_2"] == fallback_attempts(sample_tasks[other])[0][0].tolist()
    assert "not-a-task" not in sub
    assert validate_submission(sub, sample_tasks) == []


def test_placeholders_cover_tasks_that_failed_to_load(sample_tasks):
    sub = build_submission(sample_tasks, {}, placeholders={"badtask0": 2})
    assert sub["badtask0"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}] * 2
    raw = json.loads(CHALLENGES.read_text())
    raw["badtask0"] = {"train": "broken", "test": [{"input": 1}, {"input": 2}]}
    assert count_test_inputs(raw)["badtask0"] == 2
    assert validate_submission(sub, raw) == []


def test_missing_task_is_rejected(sample_tasks, fallback_sub):
    tid = next(iter(sample_tasks))
    del fallback_sub[tid]
    assert validate_submission(fallback_sub, sample_tasks) == [f"task {tid}: missing from submission"]


def test_extra_task_is_rejected(sample_tasks, fallback_sub):
    fallback_sub["deadbeef"] = []
    assert validate_submission(fallback_sub, sample_tasks) == ["task deadbeef: not in the challenges (extra task)"]


def test_wrong_number_of_attempt_objects_is_rejected(sample_tasks, fallback_sub):
    tid = next(t for t, task in sample_tasks.items() if len(task.test) == 2)
    fallback_sub[tid] = fallback_sub[tid][:1]
    assert validate_submission(fallback_sub, sample_tasks) == [f"task {tid}: 1 attempt objects for 2 test inputs"]


def test_missing_attempt_and_non_object_entries_are_rejected(sample_tasks, fallback_sub):
    t1, t2, t3 = list(sample_tasks)[:3]
    del fallback_sub[t1][0]["attempt_2"]
    fallback_sub[t2][0] = [[1]]
    fallback_sub[t3] = "nothing"
    assert validate_submission(fallback_sub, sample_tasks) == [
        f"task {t1} test 0: missing attempt_2",
        f"task {t2} test 0: expected an object with attempt_1 and attempt_2, got list",
        f"task {t3}: expected a list of {len(sample_tasks[t3].test)} attempt objects, got str"]


@pytest.mark.parametrize("grid,message", [
    ([[1, 10]], r"value 10 at row 0 column 1 is not an int 0\.\.9"),
    ([[1, 2], [3]], r"non-rectangular, row 1 has 1 cells, row 0 has 2"),
    ([], r"expected a non-empty list of rows, got list \(empty\)"),
    ([[0.5]], r"value 0\.5 at row 0 column 0 is not an int 0\.\.9"),
    ([[1]] * 31, r"31 rows, at most 30 allowed"),
    (None, r"expected a non-empty list of rows, got NoneType"),
])
def test_bad_grid_is_rejected_naming_task_test_and_attempt(sample_tasks, fallback_sub, grid, message):
    tid = list(sample_tasks)[4]
    fallback_sub[tid][0]["attempt_1"] = grid
    errors = validate_submission(fallback_sub, sample_tasks)
    assert len(errors) == 1
    assert errors[0].startswith(f"task {tid} test 0 attempt_1: ")
    assert re.search(message, errors[0])


def test_every_violation_is_listed(sample_tasks, fallback_sub):
    bad = copy.deepcopy(fallback_sub)
    ids = list(sample_tasks)
    del bad[ids[0]]
    bad[ids[1]][0]["attempt_1"] = [[11]]
    bad[ids[2]][0]["attempt_3"] = [[1]]
    errors = validate_submission(bad, sample_tasks)
    assert len(errors) == 3 and f"task {ids[2]} test 0: unexpected key 'attempt_3'" in errors
    assert validate_submission([], sample_tasks) == [
        "submission: expected an object of task_id -> list of attempt objects, got list"]


def test_validate_file_reports_unparsable_json_with_line(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text('{"a": [\n  {"attempt_1": [[1]],\n   "attempt_2": [[1]]\n]}')
    [error] = validate_submission_file(path, CHALLENGES)
    assert error.startswith(f"{path}: invalid JSON at line 4 column 1")
    [error] = validate_submission_file(tmp_path / "absent.json", CHALLENGES)
    assert "absent.json: cannot read submission" in error


def test_atomic_write_keeps_old_file_when_serialization_fails(tmp_path, fallback_sub):
    path = tmp_path / "submission.json"
    write_submission(path, fallback_sub)
    before = path.read_bytes()
    broken = dict(fallback_sub)
    broken[next(iter(broken))] = [{"attempt_1": object(), "attempt_2": [[0]]}]  # not JSON-serializable
    with pytest.raises(TypeError):
        write_submission(path, broken)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["submission.json"]  # no temporary file left behind


def test_atomic_write_keeps_old_file_when_writing_fails_midway(tmp_path):
    path = tmp_path / "submission.json"
    atomic_write_text(path, '{"old": true}')
    # A lone surrogate cannot be encoded as UTF-8: the write fails after the temporary file was opened.
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, '{"new": "' + "x" * 100_000 + '\ud800"}')
    assert path.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["submission.json"]
