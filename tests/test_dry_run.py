"""The dry run: the notebook itself, executed by nbclient with the real Unsloth trainer and vLLM decoder on
the tiny model, on the shipped sample; and the fault matrix, each fault a real failure injected in the run.

Slow (minutes on 2 cores): marked ``slow``; CI runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arcttt_kaggle.arc.data import package_sample_dir
from arcttt_kaggle.kaggle.dryrun import BAD_TASK_ID, REPO, dry_run
from arcttt_kaggle.arc.submission import validate_submission_file

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


def _reasons(report: dict) -> list[str]:
    return [r for t in report["per_task"].values() for r in t.get("fallback_reasons", [])]


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def _fault_run(tmp_path: Path, fault: str, overrides: dict | None = None, budget: float = 240.0) -> dict:
    """A fault's dry run: the submission is valid for the file the run read and the run ends before its deadline.
    The dry run's exit code follows the preflight policy (the CLI's rule): non-zero only for a fallback-only run."""
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=budget, out_dir=tmp_path,
                     fault=fault, overrides={**FAST, **(overrides or {})})
    assert validate_submission_file(tmp_path / "submission.json", Path(report["dry_run"]["challenges"])) == []
    assert report["budget"]["finished_before_deadline"], report["budget"]
    assert bool(report["dry_run"]["failed"]) == (report["status"] == "fallback-only"), report["dry_run"]
    return report


@pytest.mark.parametrize("fault, expect, status", [
    ("worker-crash", ("exited with code",), "degraded"),
    # Independent faults share one run: an exception in the worker's first task, a malformed task at load, and
    # a CUDA error in the first decode call (the worker ends at once and is replaced).
    ("task-exception,bad-task,cuda-error", ("injected fault: task-exception", "rejected at load",
                                            "a CUDA error ended the decode engine", "worker 0 was replaced"),
     "degraded"),
    ("decode-hang", ("terminated at the deadline",), None),
    ("unparsable", ("all candidates unparsable",), None),
    ("deadline", ("deadline",), None),
])
def test_fault_matrix(fault, expect, status, tmp_path):
    # A hang lasts until the work deadline: a shorter budget tests the same path in half the time.
    report = _fault_run(tmp_path, fault, budget=120.0 if fault == "decode-hang" else 240.0)
    for why in expect:
        said = _reasons(report) + report["status_reasons"]
        assert any(why in r for r in said), (why, said)
    # decode-hang, unparsable and an early deadline can leave no model answer: then the run is fallback-only,
    # whatever the program expert answered; a model answer that made it into an attempt makes it degraded.
    model_answered = any("model" in sources for task in report["per_task"].values()
                         for sources in task.get("attempt_sources", []))
    assert report["status"] == (status or ("degraded" if model_answered else "fallback-only"))
    assert report["status_reasons"]
    if "cuda-error" in fault:  # the first worker stopped after one failed engine call; its replacement decoded
        assert [(w["attempt"], w["returncode"]) for w in report["workers"]] == [(0, 4), (1, 0)]
        assert all(t["candidates"] > 0 for t in report["per_task"].values() if t.get("attempted"))
    if "bad-task" in fault:
        assert report["per_task"][BAD_TASK_ID]["outcome"] == "placeholder"
        assert report["dry_run"]["challenges"].endswith("challenges_with_bad_task.json")


def test_engine_ladder_and_a_killed_program_expert(tmp_path):
    """vLLM and Unsloth really fail to import (a broken package first on the path): the workers train with PEFT
    and decode with transformers, and the report names each rung and the exact import error. The program
    expert is SIGKILLed: no program answers, and the report says so."""
    report = _fault_run(tmp_path, "no-vllm,no-unsloth,programs-killed")
    assert report["backends"]["train"].startswith("peft") and report["backends"]["decode"].startswith("transformers")
    rungs = {(e["stage"], e["rung"]) for e in _events(tmp_path) if e["phase"] == "engine" and e["status"] == "ok"}
    assert rungs == {("train", "peft"), ("decode", "hf")}
    assert sum(1 for t in report["per_task"].values() if t["adapter"]) >= 1
    assert all(t["candidates"] > 0 for tid, t in report["per_task"].items() if t["attempted"])
    assert report["status"] == "degraded"
    text = "\n".join(report["status_reasons"])
    assert "train engine fell back (rung unsloth)" in text and "injected fault no-unsloth" in text
    assert "decode engine fell back (rung vllm)" in text and "injected fault no-vllm" in text
    assert "program expert" in text
    assert report["programs"]["tasks_with_verified_program"] == 0


def test_training_faults_share_one_run(tmp_path):
    """An exception inside a training step (as an OOM), a non-finite loss, ENOSPC while saving an adapter and a
    corrupt adapter file, each on its own task: every task still decodes (with the base model where its
    adapter is unusable), the worker is not replaced, and each fault is named."""
    report = _fault_run(tmp_path, "step-exception,enospc,nonfinite-loss,corrupt-adapter")
    assert report["status"] == "degraded"
    assert [w["returncode"] for w in report["workers"]] == [0]
    assert all(t["candidates"] > 0 for t in report["per_task"].values() if t["attempted"])
    text = "\n".join(report["status_reasons"] + _reasons(report))
    assert "CUDA out of memory in training step 1" in text
    assert "No space left on device" in text
    assert "non-finite" in text.lower()
    isolated = [e for e in _events(tmp_path) if e["phase"] == "decode" and e["status"] == "isolated"]
    assert isolated and "base model" in isolated[0]["reason"], isolated


def test_a_hung_training_child_is_killed_and_decoding_goes_on(tmp_path):
    report = _fault_run(tmp_path, "train-hang", {"isolate_training": True}, budget=120.0)  # the hang lasts to the deadline
    assert [w["returncode"] for w in report["workers"]] == [0]
    assert any("killed" in e.get("reason", "") for e in _events(tmp_path) if e["phase"] == "train")
    assert all(t["candidates"] > 0 for t in report["per_task"].values() if t["attempted"])


def test_a_dfs_run_then_a_second_run_into_the_same_folder_that_reads_nothing_of_the_first(tmp_path):
    """decode.method=dfs through the notebook: valid, in budget, and the report counts DFS candidates per task;
    a token cap small enough to cut the search is named per task, never silent. Then a second (sampling) run
    into the same folder: it clears the first run's work and events and reads nothing of them."""
    first = _fault_run(tmp_path, "", {"max_tasks": 2, "decode.method": "dfs", "decode.dfs_threshold": 0.02,
                                      "decode.dfs_max_tokens": 60})
    assert first["dfs"] is not None
    attempted = [t for t, v in first["per_task"].items() if v["attempted"]]
    assert len(attempted) == 2 and all("dfs_candidates" in first["per_task"][t] for t in attempted)
    assert first["dfs"]["truncated"] and all("max_tokens" in why for why in first["dfs"]["truncated"].values())

    second = _fault_run(tmp_path, "", {"max_tasks": 1})
    assert second["dfs"] is None
    assert "work" in second["cleared_previous_run"] and "events.jsonl" in second["cleared_previous_run"]
    assert sum(1 for v in second["per_task"].values() if v.get("candidates")) == 1
    assert {e.get("attempt", 0) for e in _events(tmp_path) if e["phase"] == "worker"} == {0}
    assert len([e for e in _events(tmp_path) if e["phase"] == "worker" and e["status"] == "start"]) == 1


def test_isolated_training_survives_a_training_crash(tmp_path):
    """GPU presets train in a child process; a crash there costs only the adapters not yet saved."""
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=240, out_dir=tmp_path,
                     fault="worker-crash", overrides={**FAST, "isolate_training": True})
    assert validate_submission_file(tmp_path / "submission.json", CHALLENGES) == []
    assert [w["returncode"] for w in report["workers"]] == [0]  # the worker itself lived on and decoded
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e["phase"] == "train" and "training process exited with code" in e.get("reason", "") for e in events)
    assert sum(t["adapter"] for t in report["per_task"].values()) == 1  # the adapter saved before the kill is used


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
    report = _fault_run(tmp_path / "run", "", {"model": str(model), "format.profile": "architects"})
    card = report["model_card"]
    assert card["profile"] == "architects" and card["vocab_size"] < 100
    assert report["backends"]["train"].startswith("unsloth") and report["backends"]["decode"].startswith("vllm")
    assert all(t["candidates"] > 0 for t in report["per_task"].values() if t["attempted"])
