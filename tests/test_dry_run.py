"""The dry run: the notebook itself, executed by nbclient with the real Unsloth trainer and vLLM decoder on
the tiny model, on the shipped sample (one run serves five assertions); a DFS run and a second run into its
folder; a missing model; an ARChitects-profile model.

Slow (minutes on 2 cores): marked ``slow``; CI runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arcttt_kaggle.arc.submission import validate_submission_file
from arcttt_kaggle.kaggle.dryrun import REPO, dry_run

from dry_run_common import CHALLENGES, SOLUTIONS, events, fault_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("dry-run")
    # The joint stage on (as the starter's run_settings.json turns it on), two epochs of the tiny model.
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=600, out_dir=out,
                     overrides={"joint.enabled": True, "joint.epochs": 2})
    return report, out


def test_dry_run_is_valid_complete_and_in_budget(main_run):
    report, out = main_run
    assert validate_submission_file(out / "submission.json", CHALLENGES) == []
    assert len(json.loads((out / "submission.json").read_text())) == 10
    assert report["budget"]["finished_before_deadline"] and report["budget"]["wall_s"] < 600
    assert report["dry_run"]["wall_s"] < 600 + 60  # kernel start-up and teardown on top of the run
    assert (out / "timeline.png").stat().st_size > 5000 and (out / "config.json").exists()
    assert (out / "notebook_executed.ipynb").exists()


def test_dry_run_trains_the_joint_stage_first_and_reports_its_phase(main_run):
    """The joint stage, on: its own phase, predicted and measured, and the workers start from its weights."""
    report, out = main_run
    joint = report["phases"]["joint"]
    assert report["joint"]["source"] == "joint" and joint["measured_s"] > 0 and joint["predicted_s"] > 0
    assert list(report["phases"])[0] == "joint"  # before the workers' phases
    assert report["joint"]["model"] == str(out / "work" / "joint" / "model")
    spec = json.loads((out / "work" / "worker0-0" / "spec.json").read_text())
    assert spec["model_path"] == report["joint"]["model"]  # the workers start from its weights
    assert report["status"] == "ok", report["status_reasons"]


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


def test_a_dfs_run_then_a_second_run_into_the_same_folder_that_reads_nothing_of_the_first(tmp_path):
    """decode.method=dfs through the notebook: valid, in budget, and the report counts DFS candidates per task;
    a token cap small enough to cut the search is named per task, never silent. Then a second (sampling) run
    into the same folder: it clears the first run's work and events and reads nothing of them."""
    first = fault_run(tmp_path, "", {"max_tasks": 2, "decode.method": "dfs", "decode.dfs_threshold": 0.02,
                                      "decode.dfs_max_tokens": 60})
    assert first["dfs"] is not None
    attempted = [t for t, v in first["per_task"].items() if v["attempted"]]
    assert len(attempted) == 2 and all("dfs_candidates" in first["per_task"][t] for t in attempted)
    assert first["dfs"]["truncated"] and all("max_tokens" in why for why in first["dfs"]["truncated"].values())

    second = fault_run(tmp_path, "", {"max_tasks": 1})
    assert second["dfs"] is None
    assert "work" in second["cleared_previous_run"] and "events.jsonl" in second["cleared_previous_run"]
    assert sum(1 for v in second["per_task"].values() if v.get("candidates")) == 1
    assert {e.get("attempt", 0) for e in events(tmp_path) if e["phase"] == "worker"} == {0}
    assert len([e for e in events(tmp_path) if e["phase"] == "worker" and e["status"] == "start"]) == 1


@pytest.mark.parametrize("rerun", [False, True])
def test_a_missing_model_fails_the_save_run_after_writing_the_program_answers(rerun, tmp_path, monkeypatch):
    """The preflight finds no model: the program expert (started before anything needs the model) still answers,
    the submission is valid and holds its answers; the save run (and the dry run, like it) exits non-zero so
    nobody submits it, the competition rerun exits 0 and degrades."""
    if rerun:
        monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    else:
        monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "build_submission.py"), "dry-run", "--out", str(out), "--budget-seconds", "120",
           "--overrides", json.dumps({"model": str(tmp_path / "no-model"), "programs.seconds_per_task": 1.0})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == (0 if rerun else 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "fallback-only"
    assert any("model" in f and "does not exist" in f for f in report["preflight"]["fatal"])
    assert validate_submission_file(out / "submission.json", CHALLENGES) == []
    assert report["score"]["correct"] >= 1  # the program expert's answers are in it
    assert any(t.get("outcome") == "program" for t in report["per_task"].values()), report["per_task"]
    assert report["workers"] == []  # no worker was started without a model
    if not rerun:
        assert "status fallback-only" in proc.stdout + proc.stderr


def test_a_dry_run_with_an_architects_model_shows_its_model_card(tmp_path):
    """A random-weight model with the ARChitects' reduced vocabulary (the form their checkpoints arrive in) and
    format.profile=architects: trained, decoded and scored through the notebook, in budget, and the report's
    model card names the profile and the vocabulary."""
    pytest.importorskip("mistral_common", reason="the Mistral NeMo tokenizer comes from the mistral-common package")
    from arcttt_kaggle.engines import realshape

    model = realshape.ensure_profile_model("architects", tmp_path / "models")
    report = fault_run(tmp_path / "run", "", {"model": str(model), "format.profile": "architects"})
    card = report["model_card"]
    assert card["profile"] == "architects" and card["vocab_size"] < 100
    assert report["backends"]["train"].startswith("unsloth") and report["backends"]["decode"].startswith("vllm")
    assert all(t["candidates"] > 0 for t in report["per_task"].values() if t["attempted"])
