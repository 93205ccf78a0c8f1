"""The dry run: the notebook itself, executed by nbclient with the real Unsloth trainer and vLLM decoder on
the tiny model, on the shipped sample; and the fault matrix, each fault a real failure injected in the run.

Slow (minutes on 2 cores): marked ``slow``; CI runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arcttt_kaggle.data import package_sample_dir
from arcttt_kaggle.dryrun import BAD_TASK_ID, dry_run
from arcttt_kaggle.submission import validate_submission_file

pytestmark = pytest.mark.slow
SAMPLE = package_sample_dir()
CHALLENGES = SAMPLE / "arc-agi_test_challenges.json"
SOLUTIONS = SAMPLE / "arc-agi_test_solutions.json"
# Faults run on 4 tasks with fewer steps and views: the point is the failure path, not the answer.
FAST = {"max_tasks": 4, "train.steps": 6, "decode.views_per_test": 2, "programs.seconds_per_task": 1.0}


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dry-run")
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=600, out_dir=out)
    return report, out


def test_dry_run_is_valid_complete_and_in_budget(main_run):
    report, out = main_run
    assert validate_submission_file(out / "submission.json", CHALLENGES) == []
    assert len(json.loads((out / "submission.json").read_text())) == 10
    assert report["budget"]["finished_before_deadline"] and report["budget"]["wall_s"] < 600
    assert report["dry_run"]["wall_s"] < 600 + 60  # kernel start-up and teardown on top of the run
    assert (out / "timeline.png").stat().st_size > 5000 and (out / "config.json").exists()
    assert (out / "notebook_executed.ipynb").exists()


def test_dry_run_used_the_real_engines(main_run):
    report, _ = main_run
    assert report["backends"]["train"].startswith("unsloth")
    assert report["backends"]["decode"].startswith("vllm")
    assert sum(1 for t in report["per_task"].values() if t["adapter"]) >= 1


def test_dry_run_reports_selection_allocation_programs_and_score(main_run):
    report, _ = main_run
    assert report["selection_method"] == "poe"
    alloc = report["allocation"]["tasks"]
    assert alloc and all("uncertainty" in a and "extra_views" in a for a in alloc.values())
    assert "tasks_decided" in report["programs"] and report["programs"]["tasks_with_verified_program"] >= 1
    assert 0.0 <= report["score"]["score"] <= 1.0 and report["score"]["total"] == 13


def test_dry_run_candidates_parse_and_product_of_experts_scores_them(main_run):
    """The grid grammar makes the random tiny model's samples grids, so voting, the allocation and PoE all run
    on real candidates (their accuracy is not the point)."""
    report, _ = main_run
    assert report["backends"]["decode"].endswith("grid grammar")
    assert all(t["candidates"] > 0 and t["unparsable"] == 0 for t in report["per_task"].values())
    assert sum(s["scored"] for t in report["per_task"].values() for s in t["selection"]) > 0
    assert report["phases"]["score"]["measured_s"] > 0
    alloc = report["allocation"]["tasks"]
    assert len({a["extra_views"] for a in alloc.values()}) > 1, alloc  # some tasks got more than others
    assert all(a["extra_views"] == 0 for a in alloc.values() if a["unanimous"])


def test_plan_predictions_are_reported_next_to_measurements(main_run):
    report, _ = main_run
    for phase in ("startup", "train", "decode"):
        assert report["phases"][phase]["predicted_s"] > 0 and report["phases"][phase]["measured_s"] > 0
    assert report["phases_total"]["ratio"] is not None


@pytest.mark.parametrize("fault, expect", [
    ("worker-crash", "exited with code"),
    ("task-exception", "injected fault: task-exception"),
    ("decode-hang", "terminated at the deadline"),
    ("unparsable", "all candidates unparsable"),
    ("deadline", "deadline"),
    ("bad-task", "rejected at load"),
])
def test_fault_matrix(fault, expect, tmp_path):
    budget = 240.0
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=budget, out_dir=tmp_path,
                     fault=fault, overrides=FAST)
    challenges = tmp_path / "challenges_with_bad_task.json" if fault == "bad-task" else CHALLENGES
    assert validate_submission_file(tmp_path / "submission.json", challenges) == []
    assert report["budget"]["finished_before_deadline"], report["budget"]
    reasons = [r for t in report["per_task"].values() for r in t.get("fallback_reasons", [])]
    assert any(expect in r for r in reasons), reasons
    if fault == "bad-task":
        assert report["per_task"][BAD_TASK_ID]["outcome"] == "placeholder"


def test_isolated_training_survives_a_training_crash(tmp_path):
    """GPU presets train in a child process; a crash there costs only the adapters not yet saved."""
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=240, out_dir=tmp_path,
                     fault="worker-crash", overrides={**FAST, "isolate_training": True})
    assert validate_submission_file(tmp_path / "submission.json", CHALLENGES) == []
    assert [w["returncode"] for w in report["workers"]] == [0]  # the worker itself lived on and decoded
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e["phase"] == "train" and "training process exited with code" in e.get("reason", "") for e in events)
    assert sum(t["adapter"] for t in report["per_task"].values()) == 1  # the adapter saved before the kill is used
