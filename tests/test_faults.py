"""Specification of the fault spec (``run/faults.py``): names, moments, and where each training fault strikes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from arcttt_kaggle.run.config import RunConfig
from arcttt_kaggle.run.faults import FAULTS, MOMENTS, FaultPlan
from arcttt_kaggle.run.worker import Events, _train_faults


def test_without_moments_each_fault_strikes_where_the_fault_matrix_puts_it():
    plan = FaultPlan.parse("worker-crash,task-exception,step-exception,enospc,nonfinite-loss,corrupt-adapter,"
                           "decode-hang,unparsable,programs-killed,deadline,joint-crash,bad-task")
    assert [n for n in range(4) if plan.strikes("task-exception", n)] == [0]
    assert [n for n in range(4) if plan.strikes("step-exception", n)] == [0]
    assert [n for n in range(4) if plan.strikes("enospc", n)] == [1]
    assert [n for n in range(4) if plan.strikes("nonfinite-loss", n)] == [2]
    assert [n for n in range(4) if plan.strikes("worker-crash", n)] == [1]
    assert plan.at("corrupt-adapter") == -1 and plan.at("programs-killed") == 1.0 and plan.at("joint-crash") == 1
    assert plan.strikes_in_pass("decode-hang", 1) and not plan.strikes_in_pass("decode-hang", 2)
    assert plan.strikes_in_pass("unparsable", 1) and plan.strikes_in_pass("unparsable", 2)  # every pass
    assert plan.at("deadline") is None and "bad-task" in plan and "train-hang" not in plan


def test_a_moment_moves_the_fault():
    plan = FaultPlan.parse("worker-crash@7, unparsable@2 ,deadline@0.4,programs-killed@30")
    assert [n for n in range(20) if plan.strikes("worker-crash", n)] == [7]
    assert not plan.strikes_in_pass("unparsable", 1) and plan.strikes_in_pass("unparsable", 2)
    assert plan.at("deadline") == 0.4 and plan.at("programs-killed") == 30.0


def test_a_plan_less_some_faults_keeps_the_others_with_their_moments():
    plan = FaultPlan.parse("worker-crash@7,bad-task,unparsable@2,programs-killed@2.5")
    assert plan.spec_without({"worker-crash"}) == "bad-task,unparsable@2,programs-killed@2.5"
    assert FaultPlan.parse(plan.spec_without(set())) == plan


@pytest.mark.parametrize("spec, match", [
    ("worker-crush", "unknown fault 'worker-crush'"),
    ("worker-crash@soon", "not a number"),
    ("worker-crash@1.5", "not a valid task moment"),
    ("unparsable@3", "not a valid pass moment"),
    ("deadline@0", "not a valid share moment"),
    ("joint-crash@0", "not a valid checkpoint moment"),
    ("bad-task@2", "takes no moment"),
    ("enospc,enospc@2", "given twice"),
])
def test_a_bad_spec_is_refused_naming_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        FaultPlan.parse(spec)
    with pytest.raises(ValueError, match=match):  # the run's config refuses it before anything starts
        RunConfig(fault=spec)


@given(st.lists(st.sampled_from(FAULTS), unique=True), st.integers(0, 50))
def test_any_set_of_faults_with_valid_moments_parses_back(names, n):
    moment = {"task": str(n), "adapter": str(n), "pass": str(n % 3), "seconds": f"{n / 2}", "share": "0.5",
              "checkpoint": str(n + 1), "-": ""}
    spec = ",".join(f"{f}@{moment[MOMENTS[f][0]]}" if moment[MOMENTS[f][0]] else f for f in names)
    plan = FaultPlan.parse(spec)
    assert list(plan.moments) == names
    assert all(plan.at(f) is not None or MOMENTS[f][1] is None for f in names)


def test_training_faults_attach_to_their_task_and_record_that_they_struck(tmp_path):
    events = Events(tmp_path / "events.jsonl", 0)
    plan = FaultPlan.parse("step-exception@3,enospc@3,nonfinite-loss@5")
    assert _train_faults(plan, 2, events, "a") == {}
    at3 = _train_faults(plan, 3, events, "b")
    assert set(at3) == {"step_hook", "save_hook"}
    with pytest.raises(RuntimeError, match="injected fault: CUDA out of memory in training step 1"):
        at3["step_hook"](1, 0.5)
    with pytest.raises(OSError, match="No space left on device"):
        at3["save_hook"](tmp_path)
    at5 = _train_faults(plan, 5, events, "c")
    assert at5["step_hook"](0, 1.0) != at5["step_hook"](1, 1.0)  # NaN: the loss is not finite
    struck = [(e["fault"], e["task"], e["moment"]) for e in map(json.loads, (tmp_path / "events.jsonl").open())]
    assert struck == [("step-exception", "b", 3), ("enospc", "b", 3), ("nonfinite-loss", "c", 5)]


def test_a_step_fault_that_never_reaches_its_step_is_not_recorded_as_struck(tmp_path):
    events = Events(tmp_path / "events.jsonl", 0)
    hook = _train_faults(FaultPlan.parse("step-exception@0"), 0, events, "a")["step_hook"]
    assert hook(0, 0.5) == 0.5  # a task trained for one step: step 1 never comes
    assert not (tmp_path / "events.jsonl").exists()
