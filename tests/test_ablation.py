"""The ablation benchmark's task list is what its docstring says, and it is held out from the starter model."""

from __future__ import annotations

import argparse
import json
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


def test_the_chain_trains_with_the_model_folders_settings_and_the_command_line_wins(tmp_path):
    """The starter's TTT settings (its run_settings.json) are the ones its ablation rows are measured with."""
    starter = REPO / "models" / "arc-starter"
    if not (starter / "run_settings.json").exists():
        pytest.skip("models/arc-starter is not in this checkout")
    shipped = json.loads((starter / "run_settings.json").read_text())
    none = argparse.Namespace(ttt_steps=None, ttt_lr=None, rank=None)
    got = ablation.ttt_settings(starter, none)
    assert (got["steps"], got["lr"], got["rank"]) == (shipped["train.steps"], shipped["train.learning_rate"],
                                                      shipped["train.lora_rank"])
    assert "run_settings.json" in got["source"]
    cli = ablation.ttt_settings(starter, argparse.Namespace(ttt_steps=5, ttt_lr=None, rank=4))
    assert (cli["steps"], cli["lr"], cli["rank"]) == (5, shipped["train.learning_rate"], 4)
    assert "command line" in cli["source"]
    plain = ablation.ttt_settings(tmp_path, none)  # a folder without settings: the ablation's own defaults
    assert (plain["steps"], plain["rank"]) == (48, 16) and "defaults" in plain["source"]


def test_partial_credit_counts_shapes_on_attempt_one_and_cells_on_the_better_attempt():
    import numpy as np

    from arcttt_kaggle.arc.data import Pair, Task

    truth = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    task = Task("t", train=(Pair(truth, truth),), test=(Pair(truth, truth), Pair(truth, truth)))
    row = ablation.Row("r", {("t", 0): [np.zeros((3, 3), np.uint8), np.array([[1, 2], [0, 0]], np.uint8)],
                             ("t", 1): [truth, np.zeros((2, 2), np.uint8)]})
    assert row.solved({"t": task}) == 1
    assert row.shape_right({"t": task}) == 1  # output 0's attempt 1 is 3x3
    assert row.cells_right({"t": task}) == (0.5 + 1.0) / 2  # output 0: its 2nd attempt has half the cells


def test_the_ttt_sweep_tunes_on_tasks_the_ablation_does_not_report(shared_data):
    import ttt_sweep

    from arcttt_kaggle.pretrain.corpus import Exclusion

    ev = shared_data / "arc-agi-1"
    ch, so = ev / "arc-agi_evaluation_challenges.json", ev / "arc-agi_evaluation_solutions.json"
    val = ttt_sweep.validation_ids(ch, so, 16)
    assert len(val) == 16 and not set(val) & set(ablation.DEFAULT_TASKS)
    tasks = load_challenges(ch, solutions=so).tasks
    # disjoint by content too: no validation task shares an (input, output) pair with a reported one
    reported = Exclusion.from_tasks([tasks[t] for t in ablation.DEFAULT_TASKS])
    assert not [t for t in val if reported.reason(tasks[t])]
    assert sorted(val) == val and val[0] > ablation.DEFAULT_TASKS[-1]
