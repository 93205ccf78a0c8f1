"""Specification of the soak (``benchmarks/soak.py``): its watcher catches what it claims to catch, its fault
draw gives valid specs, and its short form runs the notebook under random faults with nothing lost, invalid,
late or unnamed."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.data import package_sample_dir
from arcttt_kaggle.arc.submission import build_submission, fallback_attempts
from arcttt_kaggle.arc.data import load_challenges
from arcttt_kaggle.run.faults import FaultPlan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak  # noqa: E402

CHALLENGES = package_sample_dir() / "arc-agi_test_challenges.json"


def test_fault_draws_are_valid_specs_with_distinct_task_moments():
    for seed in range(30):
        drawn = soak.draw_faults(np.random.default_rng(seed), 6, 40)
        plan = FaultPlan.parse(",".join(drawn))
        assert len(plan.moments) == 6
        tasks = [plan.at(f) for f in plan.moments if soak.MOMENTS[f][0] == "task"]
        assert len(tasks) == len(set(tasks)) and all(0 <= t < 40 for t in tasks)
    assert set(soak.NAMED) == set(soak.FAULTS)  # every fault has what the kit says of it


def test_the_watcher_counts_invalid_reads_and_answers_that_go_back_to_the_fallback(tmp_path):
    tasks = load_challenges(CHALLENGES).tasks
    first = next(iter(tasks.values()))
    answer = np.full((2, 2), 7, dtype=np.uint8)
    assert not any(np.array_equal(answer, g) for g in fallback_attempts(first)[0])
    sub = tmp_path / "submission.json"
    ctx = mp.get_context("spawn")
    stop, result = ctx.Event(), tmp_path / "watcher.json"
    w = ctx.Process(target=soak.watch, args=(str(sub), str(CHALLENGES), stop, str(result), 0.05))
    w.start()
    steps = [build_submission(tasks), build_submission(tasks, {first.id: [(answer, None)]}), "{not json",
             build_submission(tasks), build_submission(tasks, {first.id: [(answer, None)]})]
    time.sleep(1.0)  # the watcher is reading before the first write: those reads do not count
    for step in steps:
        sub.write_text(step if isinstance(step, str) else json.dumps(step))
        time.sleep(0.6)
    stop.set()
    w.join(20)
    seen = json.loads(result.read_text())
    assert seen["first_write_s"] is not None and seen["reads"] >= 8
    assert len(seen["invalid"]) >= 1 and "JSONDecodeError" in seen["invalid"][0]["error"]
    assert [r["outputs"] for r in seen["regressed"]] == [[f"{first.id}[0]"]]  # once: the fourth write
    assert seen["answered_max"] == 1


@pytest.mark.slow
def test_the_short_soak_loses_nothing_and_names_every_fault(tmp_path, capsys):
    """Seed 0 on 12 tasks: six faults drawn (a training child killed, a step exception, ENOSPC, a corrupt adapter,
    a training hang, a decoding hang); the hang in the first decoding pass leaves the adapter unread."""
    rc = soak.main(["--seeds", "1", "--tasks", "12", "--faults", "4", "--budget", "150", "--out", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("soak: 1 seeds, 12 tasks, ") and last.endswith(
        " 0 lost, 0 invalid reads, 0 late, 0 unnamed"), last
    assert int(last.split(", ")[2].split()[0]) >= 3  # faults that struck
    assert rc == 0
