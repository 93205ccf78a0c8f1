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


def test_the_ablation_reports_on_its_reporting_set_and_checks_it_held_out_from_the_starter(shared_data):
    starter = REPO / "models" / "arc-starter"
    if not (starter / "pretrain.json").exists():
        pytest.skip("models/arc-starter is not in this checkout")
    ev = shared_data / "arc-agi-1"
    tasks = load_challenges(ev / "arc-agi_evaluation_challenges.json",
                            solutions=ev / "arc-agi_evaluation_solutions.json").tasks
    sets = ablation.task_sets(tasks)
    assert len(sets.reporting) == 60 and all(ablation.fits(tasks[t]) for t in sets.reporting)
    msg = ablation.check_held_out(starter, [tasks[t] for t in sets.reporting + sets.validation])
    assert msg.startswith("held out by id and content") and "synthetic tasks" in msg
    # and the check does bite: a task the starter trained on is refused, and so is a copy of it under
    # another id, rotated and recoloured (what the augmentations make of it)
    from arcttt_kaggle.arc.augment import Augmentation
    from arcttt_kaggle.arc.data import Task

    train = load_challenges(shared_data / "arc-agi-1" / "arc-agi_training_challenges.json").tasks
    seen = next(iter(train.values()))
    with pytest.raises(SystemExit, match="not held out"):
        ablation.check_held_out(starter, [seen])
    view = Augmentation("rot90", (0, 2, 3, 4, 5, 6, 7, 8, 9, 1))
    disguised = Task("ffffffff", view.apply_task(seen).train, view.apply_task(seen).test)
    with pytest.raises(SystemExit, match="not held out"):
        ablation.check_held_out(starter, [disguised])


def test_the_synthetic_curriculum_is_rebuilt_and_checked(tmp_path):
    """A model folder whose pretrain.json names a synthetic curriculum: a task holding one of its pairs is refused."""
    from arcttt_kaggle.arc.data import package_sample_dir
    from arcttt_kaggle.engines.ttt_data import stable_seed
    from arcttt_kaggle.pretrain.synthetic import synthetic_tasks

    sample = package_sample_dir() / "arc-agi_test_challenges.json"
    record = {"data": {"files": [str(sample)]}, "exclude": [], "epoch": 1,
              "config": {"corpus": {"synthetic_tasks": 16, "seed": 3}}}
    (tmp_path / "pretrain.json").write_text(json.dumps(record))
    drawn = synthetic_tasks(16, stable_seed(3 + 1, "synthetic"))  # epoch 1's curriculum
    with pytest.raises(SystemExit, match="synthetic curriculum"):
        ablation.check_held_out(tmp_path, [drawn[5]])
    other = synthetic_tasks(16, stable_seed(3 + 7, "synthetic"))  # an epoch it never reached
    assert ablation.check_held_out(tmp_path, [other[5]]).startswith("held out")


def test_a_continued_model_is_checked_against_what_its_init_trained_on(tmp_path):
    """A model continued with --init names its init's record (``init_record``): the held-out check walks the
    chain, so a pair of the init's curriculum is refused though the continued run never drew it."""
    from arcttt_kaggle.arc.data import package_sample_dir
    from arcttt_kaggle.engines.ttt_data import stable_seed
    from arcttt_kaggle.pretrain.synthetic import synthetic_tasks

    sample = str(package_sample_dir() / "arc-agi_test_challenges.json")
    first = {"data": {"files": [sample]}, "exclude": [], "epoch": 0,
             "config": {"corpus": {"synthetic_tasks": 16, "seed": 5}}}
    record = {"data": {"files": [sample]}, "exclude": [], "epoch": 0, "init_record": first,
              "config": {"corpus": {"synthetic_tasks": 16, "seed": 9}}}
    (tmp_path / "pretrain.json").write_text(json.dumps(record))
    from_init = synthetic_tasks(16, stable_seed(5, "synthetic"))
    with pytest.raises(SystemExit, match="synthetic curriculum"):
        ablation.check_held_out(tmp_path, [from_init[3]])
    msg = ablation.check_held_out(tmp_path, [synthetic_tasks(16, stable_seed(40, "synthetic"))[3]])
    both = len(from_init) + len(synthetic_tasks(16, stable_seed(9, "synthetic")))
    assert f"{both} synthetic tasks" in msg and "from the 10 tasks" in msg  # both links, the real tasks once


def test_the_chain_trains_with_the_model_folders_settings_and_the_command_line_wins(tmp_path):
    """The starter's TTT settings (its run_settings.json) are the ones its ablation rows are measured with."""
    starter = REPO / "models" / "arc-starter"
    if not (starter / "run_settings.json").exists():
        pytest.skip("models/arc-starter is not in this checkout")
    shipped = json.loads((starter / "run_settings.json").read_text())
    none = argparse.Namespace(ttt_steps=None, ttt_lr=None, rank=None, joint_epochs=None, joint_lr=None,
                              joint_batch=None)
    got = ablation.settings(starter, none)
    assert (got["steps"], got["lr"], got["rank"]) == (shipped["train.steps"], shipped["train.learning_rate"],
                                                      shipped["train.lora_rank"])
    assert "run_settings.json" in got["source"]
    cli = ablation.settings(starter, argparse.Namespace(ttt_steps=5, ttt_lr=None, rank=4, joint_epochs=2,
                                                        joint_lr=None, joint_batch=None))
    assert (cli["steps"], cli["lr"], cli["rank"], cli["joint_epochs"]) == (5, shipped["train.learning_rate"], 4, 2)
    assert "command line" in cli["source"]
    plain = ablation.settings(tmp_path, none)  # a folder without settings: the ablation's own defaults
    assert (plain["steps"], plain["rank"]) == (48, 16) and "defaults" in plain["source"]


def test_partial_credit_counts_shapes_on_attempt_one_and_cells_on_the_better_attempt_over_every_output():
    import numpy as np

    from arcttt_kaggle.arc.data import Pair, Task

    truth = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    task = Task("t", train=(Pair(truth, truth),), test=(Pair(truth, truth), Pair(truth, truth), Pair(truth, truth)))
    row = ablation.Row("r", {("t", 0): [np.zeros((3, 3), np.uint8), np.array([[1, 2], [0, 0]], np.uint8)],
                             ("t", 1): [truth, np.zeros((2, 2), np.uint8)]})  # output 2: no attempt at all
    assert row.solved({"t": task}) == 1
    assert row.shape_right({"t": task}) == 1  # output 0's attempt 1 is 3x3
    assert row.single_colour({"t": task}) == 1  # output 0's attempt 1 is all zeros
    assert row.cells_right({"t": task}) == (0.5 + 1.0 + 0.0) / 3  # over every output, the missing one too


def test_the_ttt_sweep_chooses_on_the_validation_set_disjoint_from_the_reporting_set(shared_data):
    import ttt_sweep

    from arcttt_kaggle.arc.heldout import shared_content

    ev = shared_data / "arc-agi-1"
    tasks = load_challenges(ev / "arc-agi_evaluation_challenges.json",
                            solutions=ev / "arc-agi_evaluation_solutions.json").tasks
    sets = ablation.task_sets(tasks)
    assert ttt_sweep.task_sets is ablation.task_sets  # the sweep reads the same sets
    assert len(sets.validation) == 24 and not set(sets.validation) & set(sets.reporting)
    assert not shared_content([tasks[t] for t in sets.validation], [tasks[t] for t in sets.reporting])
