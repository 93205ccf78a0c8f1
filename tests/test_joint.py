"""The joint test-time stage as a specification: it learns from the demonstrations of every task at once and from
nothing else (never a test output), its loss falls and its weights move, a large model's LoRA is merged into a
plain folder, and a fault in its process costs the stage, never the run: the run goes on from its last
checkpoint, else from the base model, and says so."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
from arcttt_kaggle.pretrain.shapes import build_arc_model
from arcttt_kaggle.run.joint import JointConfig, choose_mode, demonstrations_only, run_joint_stage, train_joint

SAMPLE = package_sample_dir()


@pytest.fixture(scope="module")
def tasks():
    """Four sample tasks with their solutions loaded: the stage must drop the outputs itself."""
    loaded = load_challenges(SAMPLE / "arc-agi_test_challenges.json",
                             solutions=SAMPLE / "arc-agi_test_solutions.json").tasks
    return [loaded[t] for t in sorted(loaded)[:4]]


@pytest.fixture(scope="module")
def nano(tmp_path_factory) -> Path:
    return build_arc_model(tmp_path_factory.mktemp("nano") / "model", "arc-nano", "kit", seed=0)


FAST = JointConfig(enabled=True, epochs=3, examples_per_task=8, learning_rate=3e-3, max_seq_len=1024,
                   tokens_per_batch=2048, checkpoint_minutes=1e-6)


def test_the_stage_sees_demonstrations_only(tasks):
    stripped = demonstrations_only(tasks)
    assert all(p.output is not None for t in tasks for p in t.test)  # the input had them
    assert all(p.output is None for t in stripped for p in t.test)
    assert [t.train for t in stripped] == [t.train for t in tasks]


def test_auto_mode_trains_small_models_whole_and_large_ones_through_a_lora():
    cfg = JointConfig()
    assert choose_mode(cfg, 3_000_000) == "full"
    assert choose_mode(cfg, 4_000_000_000) == "lora"
    assert choose_mode(cfg, 200_000_000, gpu_memory_gib=2.0) == "lora"  # 16 B/param does not fit 2 GiB
    assert choose_mode(replace(cfg, mode="full"), 4_000_000_000) == "full"
    with pytest.raises(ValueError, match="budget_share"):
        JointConfig(budget_share=1.0)
    assert cfg.seconds(1000) == 250 and replace(cfg, max_minutes=1).seconds(1000) == 60


def test_full_parameter_stage_learns_from_every_task_and_never_reads_a_test_output(tasks, nano, tmp_path, monkeypatch):
    from arcttt_kaggle.pretrain import corpus

    seen = []
    real = corpus.sample_examples

    def spy(task, n, views, rng, max_tokens, count_tokens):
        seen.append(task)
        return real(task, n, views, rng, max_tokens, count_tokens)

    monkeypatch.setattr(corpus, "sample_examples", spy)
    rec = train_joint(tasks, nano, tmp_path / "joint", FAST, seconds=600)
    assert {t.id for t in seen} == {t.id for t in tasks}
    truths = {t.test[0].output.tobytes() for t in tasks}
    assert all(p.output is None for t in seen for p in t.test)
    assert not {p.output.tobytes() for t in seen for p in t.train} & truths
    assert rec["mode"] == "full" and rec["tokens_seen"] >= 3 * rec["data"]["tokens_per_epoch"]
    curve = [c[3] for c in rec["curve"]]
    assert curve[-1] < curve[0], curve  # the loss fell
    from safetensors.numpy import load_file

    a, b = load_file(nano / "model.safetensors"), load_file(tmp_path / "joint" / "model.safetensors")
    assert all(not np.allclose(a[k], b[k]) for k in a if k.endswith("proj.weight"))  # every matrix moved
    assert (tmp_path / "joint" / "arc_model.json").exists()  # a whole model folder


def test_lora_mode_saves_a_plain_folder_with_the_adapter_merged(tasks, nano, tmp_path):
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    rec = train_joint(tasks, nano, tmp_path / "joint", replace(FAST, mode="lora", lora_rank=4, epochs=1), seconds=600)
    assert rec["mode"] == "lora"
    a, b = load_file(nano / "model.safetensors"), load_file(tmp_path / "joint" / "model.safetensors")
    assert set(a) == set(b)  # no adapter keys: a plain folder
    moved = [k for k in a if k.endswith("proj.weight") and not np.allclose(a[k], b[k])]
    assert moved and all(np.allclose(a[k], b[k]) for k in a if "norm" in k)  # the LoRA moved linear layers only
    AutoModelForCausalLM.from_pretrained(tmp_path / "joint")  # loads as it is


def test_a_crash_in_the_stage_goes_on_from_its_last_checkpoint_and_says_so(tasks, nano, tmp_path):
    import os

    said = []
    out = run_joint_stage(tasks, nano, tmp_path / "joint" / "model", FAST, 60, env=dict(os.environ),
                          fault="joint-crash", log=lambda phase, msg: said.append(msg))
    assert out.source == "checkpoint" and "checkpoint at step" in out.reason and "code -9" in out.reason
    assert Path(out.model) == tmp_path / "joint" / "model" / "checkpoint" and said
    assert json.loads((Path(out.model) / "state.json").read_text())["state"]["step"] >= 1
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out.model)  # the folder the workers would load


def test_a_stage_that_fails_before_any_checkpoint_leaves_the_base_model(tasks, tmp_path):
    import os

    broken = tmp_path / "not-a-model"
    broken.mkdir()
    out = run_joint_stage(tasks, broken, tmp_path / "joint" / "model", FAST, 30, env=dict(os.environ),
                          log=lambda *a: None)
    assert out.source == "base" and Path(out.model) == broken and "base model" in out.reason
