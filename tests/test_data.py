"""data.py: every shipped/shared file loads; every malformed input is refused with its own specific message."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.data import (Task, TaskError, grid_key, load_challenges, load_solutions, package_sample_dir,
                                to_grid)


def good_task() -> dict:
    return {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]},
                      {"input": [[0]], "output": [[5]]},
                      {"input": [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]], "output": [[9]]}],
            "test": [{"input": [[7, 7], [8, 8]]}]}


def write(tmp_path: Path, obj, name: str = "c.json") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def mutated(fn) -> dict:
    t = copy.deepcopy(good_task())
    fn(t)
    return {"00000001": t}


def _set(path, value):
    """A mutation setting a nested item, e.g. _set(("train", 2, "input", 3), [1, 2])."""
    def fn(t):
        cur = t
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
    return fn


def _delete(path):
    def fn(t):
        cur = t
        for k in path[:-1]:
            cur = cur[k]
        del cur[path[-1]]
    return fn


# (name, challenges object, regex the error message must match)
MALFORMED_TASKS = [
    ("ragged row 3 of train pair 2 input", mutated(_set(("train", 2, "input", 3), [4, 4])),
     r"task 00000001: train pair 2 input: non-rectangular, row 3 has 2 cells, row 0 has 3"),
    ("value 11", mutated(_set(("train", 0, "output", 1, 0), 11)),
     r"task 00000001: train pair 0 output: value 11 at row 1 column 0 is not an int 0\.\.9"),
    ("negative value", mutated(_set(("test", 0, "input", 0, 1), -1)),
     r"task 00000001: test pair 0 input: value -1 at row 0 column 1 is not an int 0\.\.9"),
    ("float value", mutated(_set(("train", 1, "input", 0, 0), 1.0)),
     r"train pair 1 input: value 1\.0 at row 0 column 0 is not an int 0\.\.9"),
    ("bool value", mutated(_set(("train", 1, "output", 0, 0), True)),
     r"train pair 1 output: value True at row 0 column 0 is not an int 0\.\.9"),
    ("null value", mutated(_set(("train", 0, "input", 0, 0), None)),
     r"train pair 0 input: value None at row 0 column 0"),
    ("empty grid", mutated(_set(("train", 0, "input"), [])),
     r"train pair 0 input: expected a non-empty list of rows, got list \(empty\)"),
    ("empty row", mutated(_set(("train", 0, "output"), [[]])),
     r"train pair 0 output: row 0 has 0 cells, expected 1\.\.30"),
    ("31 rows", mutated(_set(("train", 1, "input"), [[0]] * 31)),
     r"train pair 1 input: 31 rows, at most 30 allowed"),
    ("31 columns", mutated(_set(("test", 0, "input"), [[0] * 31])),
     r"test pair 0 input: row 0 has 31 cells, expected 1\.\.30"),
    ("empty test list", mutated(_set(("test",), [])), r"task 00000001: empty test list"),
    ("empty train list", mutated(_set(("train",), [])), r"task 00000001: empty train list"),
    ("missing test", mutated(_delete(("test",))), r"task 00000001: missing 'test' list"),
    ("train not a list", mutated(_set(("train",), {"input": [[1]]})), r"'train' is dict, expected a list"),
    ("missing output in train", mutated(_delete(("train", 1, "output"))), r"train pair 1 has no 'output'"),
    ("missing input in test", mutated(_delete(("test", 0, "input"))), r"test pair 0 has no 'input'"),
    ("string grid", mutated(_set(("train", 0, "input"), "[[1,2],[3,4]]")),
     r"train pair 0 input: expected a non-empty list of rows, got str"),
    ("string row", mutated(_set(("train", 0, "input"), ["12", "34"])), r"train pair 0 input: row 0 is str"),
    ("task not an object", {"00000001": [good_task()]},
     r"task 00000001: expected an object with 'train' and 'test', got list"),
    ("empty task id", {"": good_task()}, r"task id must be a non-empty string"),
]


@pytest.mark.parametrize("name,obj,message", MALFORMED_TASKS, ids=[m[0] for m in MALFORMED_TASKS])
def test_malformed_task_is_refused_with_its_specific_message(tmp_path, name, obj, message):
    path = write(tmp_path, obj)
    with pytest.raises(TaskError, match=message):
        load_challenges(path)


def test_corpus_is_large_and_every_message_is_distinct():
    assert len(MALFORMED_TASKS) >= 12
    assert len({m[2] for m in MALFORMED_TASKS}) == len(MALFORMED_TASKS)


def test_duplicate_task_id_is_refused(tmp_path):
    t = json.dumps(good_task())
    path = write(tmp_path, '{"0000000a": %s,\n "0000000a": %s}' % (t, t))
    with pytest.raises(TaskError, match=r"task 0000000a: duplicate task id in .*c\.json"):
        load_challenges(path)


def test_duplicate_key_inside_a_task_is_not_a_duplicate_task_id(tmp_path):
    text = json.dumps({"0000000a": good_task()}).replace('"test":', '"test": [{"input": [[1]]}], "test":')
    path = write(tmp_path, text)
    with pytest.raises(TaskError, match=r"task 0000000a: duplicate key 'test' in the task object"):
        load_challenges(path)


def test_invalid_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{"0000000a": {"train": [\n{"input": [[1]],\n "output": [[1]]}\n], "test": [}\n}')
    with pytest.raises(ValueError, match=r"c\.json: invalid JSON at line 4 column 13"):
        load_challenges(path)


def test_top_level_not_an_object(tmp_path):
    path = write(tmp_path, [good_task()])
    with pytest.raises(ValueError, match=r"c\.json: expected an object of task_id -> task, got list"):
        load_challenges(path)


def test_to_grid_rejects_non_2d_array():
    with pytest.raises(ValueError, match=r"grid: expected a 2-D grid, got an array of shape \(2, 2, 2\)"):
        to_grid(np.zeros((2, 2, 2), dtype=np.uint8))


def test_lenient_loader_keeps_good_tasks_and_lists_rejected_with_reasons(tmp_path):
    bad_value = copy.deepcopy(good_task())
    bad_value["train"][0]["input"][0][0] = 11
    no_test = copy.deepcopy(good_task())
    no_test["test"] = []
    t = json.dumps(good_task())
    text = ('{"0000000a": %s, "0000000b": %s, "0000000c": %s, "0000000d": %s, "0000000d": %s}'
            % (t, json.dumps(bad_value), json.dumps(no_test), t, t))
    loaded = load_challenges(write(tmp_path, text), strict=False)
    assert list(loaded.tasks) == ["0000000a"]
    reasons = {r.task_id: r.reason for r in loaded.rejected}
    assert set(reasons) == {"0000000b", "0000000c", "0000000d"}
    assert re.search(r"value 11 at row 0 column 0", reasons["0000000b"])
    assert reasons["0000000c"] == "empty test list"
    assert reasons["0000000d"].startswith("duplicate task id")


def test_lenient_loader_still_raises_on_unparsable_file(tmp_path):
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        load_challenges(write(tmp_path, "{not json"), strict=False)


def test_solutions_with_wrong_count_are_refused(tmp_path):
    ch = write(tmp_path, {"0000000a": good_task()})
    sol = write(tmp_path, {"0000000a": [[[1]], [[2]]]}, "s.json")
    with pytest.raises(TaskError, match=r"task 0000000a: 2 solution grids for 1 test inputs"):
        load_challenges(ch, solutions=sol)
    loaded = load_challenges(ch, solutions=sol, strict=False)
    assert not loaded.tasks and loaded.rejected[0].task_id == "0000000a"


def test_solutions_with_bad_grid_are_refused(tmp_path):
    with pytest.raises(TaskError, match=r"task 0000000a: solution 0: value 10 at row 0 column 0"):
        load_solutions(write(tmp_path, {"0000000a": [[[10]]]}))


def test_round_trip_to_dict(tmp_path):
    path = write(tmp_path, {"0000000a": good_task()})
    task = load_challenges(path).tasks["0000000a"]
    assert task.to_dict() == good_task()
    again = Task.from_dict("0000000a", task.to_dict())
    assert [grid_key(p.input) for p in again.train] == [grid_key(p.input) for p in task.train]
    solved = task.with_solutions([np.array([[3]], dtype=np.uint8)])
    assert solved.to_dict(with_test_outputs=True)["test"] == [{"input": [[7, 7], [8, 8]], "output": [[3]]}]


def test_grids_are_uint8_arrays(sample_tasks):
    for t in sample_tasks.values():
        for p in t.train + t.test:
            assert p.input.dtype == np.uint8 and p.input.ndim == 2
            assert p.output is not None and p.output.dtype == np.uint8


def test_readable_repr(tmp_path):
    task = load_challenges(write(tmp_path, {"0000000a": good_task()})).tasks["0000000a"]
    assert repr(task) == "Task('0000000a', train=3 [2x2,1x1,4x3], test=1 [2x2])"
    assert repr(task.with_solutions([np.zeros((1, 1), np.uint8)])).endswith(" solved)")


def test_package_sample_round_trips_exactly():
    d = package_sample_dir()
    raw = json.loads((d / "arc-agi_test_challenges.json").read_text())
    loaded = load_challenges(d / "arc-agi_test_challenges.json")
    assert {tid: t.to_dict() for tid, t in loaded.tasks.items()} == raw


def test_every_shared_file_loads(shared_data):
    files = sorted(shared_data.rglob("*_challenges.json"))
    assert len(files) >= 4
    for ch in files:
        sol = ch.with_name(ch.name.replace("_challenges", "_solutions"))
        loaded = load_challenges(ch, solutions=sol if sol.exists() else None)
        assert loaded.tasks and not loaded.rejected, ch
        raw = json.loads(ch.read_text())
        assert list(loaded.tasks) == list(raw)
        assert all(t.to_dict() == raw[tid] for tid, t in loaded.tasks.items()), ch
