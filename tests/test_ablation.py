"""The ablation benchmark's task list is what its docstring says, and it is held out from the starter model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import ablation  # noqa: E402

from arcttt_kaggle.arc.data import load_challenges  # noqa: E402


def test_the_default_list_is_the_first_60_evaluation_tasks_that_fit_1024_tokens(shared_data):
    ev = shared_data / "arc-agi-1"
    ids = ablation.default_tasks(ev / "arc-agi_evaluation_challenges.json", ev / "arc-agi_evaluation_solutions.json")
    assert list(ablation.DEFAULT_TASKS) == ids and len(ids) == 60


def test_the_starter_model_never_saw_the_ablation_tasks(shared_data):
    starter = REPO / "models" / "arc-starter"
    if not (starter / "pretrain.json").exists():
        pytest.skip("models/arc-starter is not in this checkout")
    ev = shared_data / "arc-agi-1"
    tasks = load_challenges(ev / "arc-agi_evaluation_challenges.json",
                            solutions=ev / "arc-agi_evaluation_solutions.json").tasks
    msg = ablation.check_held_out(starter, [tasks[t] for t in ablation.DEFAULT_TASKS])
    assert msg.startswith("held out by id and content")
    # and the check does bite: a task the starter trained on is refused
    train = load_challenges(shared_data / "arc-agi-1" / "arc-agi_training_challenges.json").tasks
    with pytest.raises(SystemExit, match="not held out"):
        ablation.check_held_out(starter, [next(iter(train.values()))])
