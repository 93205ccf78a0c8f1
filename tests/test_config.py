"""The config tree: presets derived from dials, validation, dotted overrides, JSON round trip, Kaggle env."""

from __future__ import annotations

import json
import os
import time

import pytest

from arcttt_kaggle.run.config import PRESETS, RunConfig, budget_overrides, preset
from arcttt_kaggle.kaggle.notebook import SHORT_MODE_TASKS, notebook_config


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_consistent(name):
    cfg = preset(name)
    assert cfg.decode.max_lora_rank >= cfg.train.lora_rank  # vLLM must be able to load every adapter
    assert cfg.train.lora_alpha == 2 * cfg.train.lora_rank
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_gpu_presets_use_the_right_dtype_and_gpu_count():
    t4, l4 = preset("t4x2"), preset("l4x4")
    assert (t4.workers, t4.device, t4.train.dtype, t4.decode.dtype) == (2, "cuda", "float16", "float16")  # no bf16 on T4
    assert (l4.workers, l4.device, l4.train.dtype, l4.decode.dtype) == (4, "cuda", "bfloat16", "bfloat16")
    tiny = preset("cpu-tiny")
    assert (tiny.device, tiny.model, tiny.train.backend, tiny.decode.backend, tiny.train.dtype) == \
        ("cpu", "tiny", "unsloth", "vllm", "float32")


def test_overrides_are_validated():
    cfg = preset("cpu-tiny").with_overrides({"train.steps": 3, "decode.views_per_test": 2})
    assert cfg.train.steps == 3 and cfg.decode.views_per_test == 2
    with pytest.raises(ValueError, match="unknown config key"):
        preset("cpu-tiny").with_overrides({"train.nonsense": 1})
    with pytest.raises(ValueError, match="max_lora_rank"):
        preset("cpu-tiny").with_overrides({"train.lora_rank": 64})
    with pytest.raises(ValueError, match="unknown fault"):
        preset("cpu-tiny").with_overrides({"fault": "meteor"})


def test_budget_override_keeps_a_margin():
    cfg = budget_overrides(preset("t4x2"), 600)
    assert cfg.budget.limit_seconds == 600 and 5 <= cfg.budget.safety_margin_seconds < 600


def test_resolved_config_is_written_as_json(tmp_path):
    cfg = preset("l4x4")
    cfg.write(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["decode"]["dtype"] == "bfloat16"


def test_notebook_config_reads_dry_run_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCTTT_PRESET", "cpu-tiny")
    monkeypatch.setenv("ARCTTT_CHALLENGES", "c.json")
    monkeypatch.setenv("ARCTTT_OUT", str(tmp_path))
    monkeypatch.setenv("ARCTTT_BUDGET_SECONDS", "321")
    monkeypatch.setenv("ARCTTT_OVERRIDES", '{"train.steps": 5}')
    cfg = notebook_config()
    assert (cfg.preset, cfg.challenges, cfg.out_dir, cfg.budget.limit_seconds, cfg.train.steps) == \
        ("cpu-tiny", "c.json", str(tmp_path), 321, 5)


def test_kaggle_public_run_is_short_and_rerun_is_full(monkeypatch):
    for k in ("ARCTTT_PRESET", "ARCTTT_CHALLENGES", "ARCTTT_OUT", "ARCTTT_BUDGET_SECONDS", "ARCTTT_OVERRIDES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    public = notebook_config(default_preset="t4x2")
    assert public.max_tasks == SHORT_MODE_TASKS and public.budget.limit_seconds < 3600
    assert public.challenges == "/kaggle/input/arc-prize-2026-arc-agi-2/arc-agi_test_challenges.json"
    assert public.out_dir == "/kaggle/working"
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "True")
    rerun = notebook_config(default_preset="t4x2")
    assert rerun.max_tasks == 0 and rerun.budget.limit_seconds == 12 * 3600


def _kaggle_input(root, layout: str, slug: str = "arc-prize-2026-arc-agi-2"):
    comp = root / ("competitions" if layout == "competitions" else "") / slug
    comp.mkdir(parents=True)
    (comp / "arc-agi_test_challenges.json").write_text("{}")
    model = root / "datasets" / "me" / "qwen-arc" if layout == "competitions" else root / "qwen-arc"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    bundle = root / "arcttt-kaggle-bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"kit": "arcttt-kaggle", "model_dataset": "me/qwen-arc"}))
    return comp / "arc-agi_test_challenges.json", model


@pytest.mark.parametrize("layout", ["flat", "competitions"])
def test_notebook_setup_finds_inputs_in_both_kaggle_layouts(layout, tmp_path, monkeypatch):
    """2024/2025 mount /kaggle/input/<slug>/, the 2026 track /kaggle/input/competitions/<slug>/; the model is the
    folder the bundle's manifest names. No GPU here: the preset is the CPU one and the preflight says why."""
    from arcttt_kaggle.kaggle.notebook import notebook_setup

    for k in ("ARCTTT_PRESET", "ARCTTT_CHALLENGES", "ARCTTT_MODEL", "ARCTTT_BUDGET_SECONDS", "ARCTTT_OVERRIDES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ARCTTT_OUT", str(tmp_path / "out"))
    challenges, model = _kaggle_input(tmp_path / "input", layout)
    cfg, pre = notebook_setup(input_root=tmp_path / "input")
    assert cfg.challenges == str(challenges) and pre.challenges == str(challenges)
    assert cfg.preset == "cpu-tiny" and pre.preset.reason == "no GPU found"
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["VLLM_NO_USAGE_STATS"] == "1"
    assert pre.kernel_start <= time.time()
    from arcttt_kaggle.kaggle.notebook import find_model

    assert find_model(tmp_path / "input", "me/qwen-arc") == model


def test_a_preset_the_hardware_cannot_run_is_refused_on_a_save_run(tmp_path, monkeypatch):
    from arcttt_kaggle.kaggle.notebook import notebook_setup
    from arcttt_kaggle.run.preflight import PreflightError

    monkeypatch.setenv("ARCTTT_PRESET", "t4x2")
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    _kaggle_input(tmp_path / "input", "flat")
    with pytest.raises(PreflightError, match="needs 2 GPU"):
        notebook_setup(input_root=tmp_path / "input")
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")  # the rerun degrades instead of raising
    monkeypatch.setenv("ARCTTT_OUT", str(tmp_path / "out"))
    cfg, pre = notebook_setup(input_root=tmp_path / "input")
    assert cfg.preset == "cpu-tiny" and "needs 2 GPU" in pre.preset.refused
