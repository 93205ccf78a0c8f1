"""Specification (issue 19, item 7): NVARC-style adapters, LoRA on ``embed_tokens`` and ``lm_head`` too.

Allowed where transformers decodes and scores; refused, by name, only where vLLM would have to serve them (the
run config with ``decode.backend="vllm"``, and the vLLM decoder given such an adapter); the planner counts their
parameters (checked against the parameters PEFT really creates)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.augment import sample_augmentations
from arcttt_kaggle.engines.engine_base import AdapterError
from arcttt_kaggle.engines.memory import ModelShape
from arcttt_kaggle.engines.train import TARGET_MODULES, TrainConfig, Trainer
from arcttt_kaggle.run.config import RunConfig

sys.path.insert(0, str(Path(__file__).parent))
from reference import reference_scores  # noqa: E402
from test_train import FAST, leave_one_out, recolor_task  # noqa: E402

VOCAB_TARGETS = TARGET_MODULES + ("embed_tokens", "lm_head")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory):
    """A peft-backend Trainer with LoRA on the projections, the embeddings and the head; one task trained."""
    t = Trainer(model_dir, TrainConfig(backend="peft", load_in_4bit=False, target_modules=VOCAB_TARGETS, **FAST))
    task = recolor_task("vocab", seed=5)
    before = t.lora_state()
    result = t.train_task(task.id, leave_one_out(task), tmp_path_factory.mktemp("adapters") / task.id, steps=24)
    yield t, task, before, result
    t.close()


def test_vocab_lora_trains_and_its_embedding_and_head_weights_move(trained):
    t, task, before, result = trained
    assert result.adapter_dir is not None and result.finite
    assert np.mean(result.losses[-4:]) < 0.5 * np.mean(result.losses[:4]), result.losses
    after = t.lora_state()
    moved = {n for n in after if not np.allclose(after[n], before[n])}
    assert any("embed_tokens" in n and "lora_embedding" in n for n in moved), sorted(moved)[:8]
    assert any("lm_head" in n for n in moved), sorted(moved)[:8]


def test_the_saved_adapter_holds_them_and_transformers_scores_with_them_like_a_plain_forward(trained, model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from arcttt_kaggle.engines.score_candidates import Scorer

    t, task, _, result = trained
    cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert {"embed_tokens", "lm_head"} <= set(cfg["target_modules"])
    from safetensors import safe_open

    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("embed_tokens" in k for k in keys) and any("lm_head" in k for k in keys)

    grids = [task.test[0].output, np.zeros_like(task.test[0].output)]
    views = sample_augmentations(2, 0, len(task.train))
    with Scorer(model_dir, dtype="float32", device="cpu") as scorer:
        got = scorer.score(task, 0, grids, views, result.adapter_dir)
        base = scorer.score(task, 0, grids, views, None)
        fmt = scorer.fmt
    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                                          str(result.adapter_dir)).eval()
    np.testing.assert_allclose(got, reference_scores(ref_model, fmt, task, grids, views), rtol=0, atol=1e-4)
    assert got[0].mean() > base[0].mean()  # the trained adapter makes the right answer likelier


def test_the_vllm_decoder_refuses_such_an_adapter_by_name(trained):
    from arcttt_kaggle.engines.decode_vllm import VllmBackend

    _, _, _, result = trained
    with pytest.raises(AdapterError, match="vLLM cannot serve LoRA") as e:
        VllmBackend._refuse_vocab_lora(result.adapter_dir)
    assert e.value.adapter == result.adapter_dir


def test_the_run_config_refuses_vocab_lora_only_with_vllm_decoding():
    cfg = RunConfig()
    with pytest.raises(ValueError, match="vLLM cannot serve LoRA"):
        cfg.with_overrides({"train.target_modules": list(VOCAB_TARGETS), "decode.backend": "vllm"})
    ok = cfg.with_overrides({"train.target_modules": list(VOCAB_TARGETS), "decode.backend": "hf"})
    assert "lm_head" in ok.train.target_modules


def test_the_planner_counts_vocab_lora_parameters_as_peft_creates_them(model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = ModelShape.from_dir(model_dir)
    for targets in (TARGET_MODULES, VOCAB_TARGETS):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                               LoraConfig(r=8, lora_alpha=16, target_modules=list(targets)))
        created = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert shape.lora_params(8, targets) == created, targets
    with pytest.raises(ValueError, match="not modules"):
        shape.lora_params(8, ("q_proj", "wte"))
