"""The dry-run tests' shared pieces: the shipped sample and a fault run through the notebook, with the checks every
fault run must pass (a valid submission for the file the run read, the run ended before its deadline, the exit
code follows the preflight policy). The dry-run tests are split over several files so pytest-xdist (``--dist
loadfile``) hands each file, and its module-scoped run, to one worker, and the files balance over the two."""

from __future__ import annotations

import json
from pathlib import Path

from arcttt_kaggle.arc.data import package_sample_dir
from arcttt_kaggle.arc.submission import validate_submission_file
from arcttt_kaggle.kaggle.dryrun import dry_run

SAMPLE = package_sample_dir()
CHALLENGES = SAMPLE / "arc-agi_test_challenges.json"
SOLUTIONS = SAMPLE / "arc-agi_test_solutions.json"
# Faults run on 4 tasks with fewer steps and views, and no joint stage unless the fault is in it: the point is the
# failure path, not the answer.
FAST = {"max_tasks": 4, "train.steps": 6, "decode.views_per_test": 2, "programs.seconds_per_task": 1.0,
        "joint.enabled": False}
# The joint stage on, short, checkpointing every 3 s (what its faults need).
JOINT_SHORT = {"joint.enabled": True, "joint.max_minutes": 0.5, "joint.checkpoint_minutes": 0.05}


def reasons(report: dict) -> list[str]:
    return [r for t in report["per_task"].values() for r in t.get("fallback_reasons", [])]


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def fault_run(tmp_path: Path, fault: str, overrides: dict | None = None, budget: float = 240.0) -> dict:
    """A fault's dry run: the submission is valid for the file the run read and the run ends before its deadline.
    The dry run's exit code follows the preflight policy (the CLI's rule): non-zero only for a fallback-only run."""
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=budget, out_dir=tmp_path,
                     fault=fault, overrides={**FAST, **(overrides or {})})
    assert validate_submission_file(tmp_path / "submission.json", Path(report["dry_run"]["challenges"])) == []
    assert report["budget"]["finished_before_deadline"], report["budget"]
    assert bool(report["dry_run"]["failed"]) == (report["status"] == "fallback-only"), report["dry_run"]
    return report
