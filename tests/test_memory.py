"""The memory and disk planner against hand-computed numbers from real config.json files.

Fixtures are the real config.json values (the fields the planner reads), typed in from:
- Qwen2.5-0.5B: huggingface.co/Qwen/Qwen2.5-0.5B config.json (docs corpus page "Qwen/Qwen2.5-0.5B, model config";
  the same shape in github.com/rwth-i6/i6_experiments .../qwen2/qwen2_configs.py); published 0.49B params,
  0.36B non-embedding (its model card).
- Qwen3-4B: huggingface.co/MultiRL/qwen3_4b_instruct_sft/blob/main/config.json and
  huggingface.co/jaman21/Qwen3-4B-Instruct/blob/main/config.json (Qwen3ForCausalLM, both the Qwen3-4B shape);
  published 4.0B params, 3.6B non-embedding (github.com/Robojiang/qwen_mlsys Qwen3-4B-Base/README.md).
- Mistral-NeMo-Minitron-8B: huggingface.co/nvidia/Mistral-NeMo-Minitron-8B-Instruct/blob/main/config.json
  (and fine-tunes of -Base, e.g. huggingface.co/G-reen/Duet_Minitron8b_v0.51 config.json: same numbers).
- Qwen2.5-1.5B (for the issue's "~148 MB per fp32 adapter" figure): hidden 1536, 28 layers, 12/2 heads,
  intermediate 8960 (the Qwen2.5-Coder-1.5B preset in the code corpus), vocab 151936, tied.
Parameter counts are checked against the published ones; the stage formulas are held to measurement in
test_memory_measured.py, and here only to the behaviour they must have (what fits, what the ladder tries first).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from arcttt_kaggle.run.config import preset
from arcttt_kaggle.engines.memory import (DEGRADED, FITS, GIB, NO_FIT, NOT_PLANNED, MemoryRun, ModelShape, decode_memory,
                                  disk_plan, plan_memory, run_from_config, score_memory, train_memory)
from build_submission import main as cli

QWEN25_05B = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
              "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
              "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
              "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
QWEN3_4B = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
            "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
            "hidden_size": 2560, "initializer_range": 0.02, "intermediate_size": 9728,
            "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
            "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
            "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
MINITRON_8B = {"architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
               "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
               "initializer_range": 0.02, "intermediate_size": 11520, "max_position_embeddings": 8192,
               "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 40,
               "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
               "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 131072}
LLAMA32_3B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 3072,
              "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
              "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": True}
QWEN25_15B = {"model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
              "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": True}

T4 = 15.0  # GiB usable per the team's guide
L4 = 22.5
NF4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # bytes per 4-bit weight with double-quantized absmax (written out again)


def t4_run(**kw) -> MemoryRun:
    return replace(run_from_config(preset("t4x2")), **kw)


def l4_run(**kw) -> MemoryRun:
    return replace(run_from_config(preset("l4x4")), **kw)


def test_parameter_counts_match_the_published_ones():
    q05, q3, m8 = (ModelShape.from_config(c) for c in (QWEN25_05B, QWEN3_4B, MINITRON_8B))
    # Qwen2.5-0.5B: tied embeddings, q/k/v biases; per layer q 896x896+896, k and v 896x128+128, o 896x896,
    # MLP 3x896x4864, 2 norms of 896; + embeddings 151936x896 + final norm 896.
    per_layer = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    assert per_layer == 14_912_384
    assert q05.params == 151936 * 896 + 24 * per_layer + 896 == 494_032_768  # "0.49B"
    assert q05.params - 151936 * 896 == 357_898_112  # "0.36B non-embedding"
    # Qwen3-4B: head_dim 128 (32 heads -> q 4096 wide, not 2560), q/k norms of 128, tied.
    per_layer = 2560 * 4096 + 2 * 2560 * 1024 + 4096 * 2560 + 3 * 2560 * 9728 + 2 * 2560 + 2 * 128
    assert q3.params == 151936 * 2560 + 36 * per_layer + 2560 == 4_022_468_096  # "4.0B", 3.6B non-embedding
    # Minitron-8B: untied lm_head.
    per_layer = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 11520 + 2 * 4096
    assert m8.params == 2 * 131072 * 4096 + 40 * per_layer + 4096 == 8_414_105_600


def test_kv_cache_and_lora_sizes():
    q05 = ModelShape.from_config(QWEN25_05B)
    assert q05.kv_bytes_per_token() == 2 * 24 * (2 * 64) * 2 == 12_288  # K and V, 24 layers, 2 kv heads x 64, 16-bit
    # LoRA r=32 on q,k,v,o,gate,up,down: r x (d_in + d_out) summed, per layer
    per_layer = (896 + 896) + (896 + 128) * 2 + (896 + 896) + (896 + 4864) * 2 + (4864 + 896)
    assert q05.lora_params(32) == 32 * 24 * per_layer == 17_596_416


def test_the_issue_figure_of_148_mb_per_fp32_adapter_of_a_15b_model():
    shape = ModelShape.from_config(QWEN25_15B)
    per_layer = (1536 + 1536) + (1536 + 256) * 2 + (1536 + 1536) + (1536 + 8960) * 3
    fp32 = disk_plan(shape, t4_run(adapter_bytes_per_param=4)).adapter_bytes
    assert fp32 == 32 * 28 * per_layer * 4 == 147_718_144  # ~148 MB today
    assert disk_plan(shape, t4_run()).adapter_bytes == fp32 / 2  # saved in 16-bit: half


def test_qwen25_05b_fits_a_t4_as_configured():
    shape = ModelShape.from_config(QWEN25_05B)
    plan = plan_memory(shape, t4_run())
    assert plan.verdict == FITS and not plan.changes
    assert decode_memory(shape, t4_run()).capacity == 0.9 * 15 * GIB  # vLLM's share of the card
    assert decode_memory(shape, t4_run(decode_backend="hf")).capacity == 15 * GIB  # transformers: all of it


def test_vllm_needs_one_full_sequence_and_the_transformers_decoder_its_whole_batch():
    """vLLM starts with room for one max_model_len sequence (more KV blocks only buy concurrency): its need does
    not depend on how many views are decoded together. The transformers decoder holds a whole left-padded batch,
    so its need grows with the rows decoded at once."""
    shape = ModelShape.from_config(QWEN3_4B)
    few, many = (run_from_config(preset("t4x2").with_overrides({"decode.views_per_test": v})) for v in (2, 16))
    assert decode_memory(shape, few).total == decode_memory(shape, many).total
    rows = [decode_memory(shape, t4_run(decode_backend="hf", hf_batch_rows=n)).total for n in (1, 4, 8)]
    assert rows[0] < rows[1] < rows[2]


def test_training_with_the_label_row_loss_fits_where_full_logits_did_not():
    """Qwen3-4B on a T4 at 8192 tokens: Unsloth fits, and so does PEFT now that the kit's loss runs the head on one
    chunk of label rows at a time (the full-vocabulary logits at every position, 8192 x 151,936 x 10 bytes =
    11.6 GiB, do not fit beside the rest). Fewer label rows need less; a longer sequence more."""
    shape = ModelShape.from_config(QWEN3_4B)
    for backend in ("unsloth", "peft"):
        plan = plan_memory(shape, t4_run(train_backend=backend))
        assert plan.verdict == FITS and plan.run.train_max_seq_len == 8192, (backend, plan.changes)
    peft = train_memory(shape, t4_run(train_backend="peft"))
    assert peft.total + 8192 * 151936 * 10 > 15 * GIB  # the logits alone would not fit beside the rest
    assert train_memory(shape, t4_run(train_backend="peft", label_rows=500)).total < peft.total
    assert train_memory(shape, t4_run(train_backend="peft", train_max_seq_len=16384)).total > peft.total


def test_a_model_that_does_not_fit_at_full_length_trains_shorter_then_not_at_all():
    big = ModelShape.from_config({**QWEN3_4B, "num_hidden_layers": 110})  # ~11B
    plan = plan_memory(big, t4_run(train_backend="peft"))
    assert plan.run.run_ttt and plan.run.train_max_seq_len < 8192 and train_memory(big, plan.run).fits
    assert not train_memory(big, replace(plan.run, train_max_seq_len=2 * plan.run.train_max_seq_len)).fits
    huge = ModelShape.from_config({**QWEN3_4B, "num_hidden_layers": 200})
    assert not plan_memory(huge, t4_run()).run.run_ttt


def test_the_decoder_ladder_tries_vllms_own_knobs_before_a_4bit_transformers_decoder():
    """Minitron-8B (16.8 GB of 16-bit weights): on an L4 vLLM runs it in 16-bit as configured (one sequence's KV
    beside 8 LoRA slots fits 0.9 of the card); with 2 GiB less, fewer LoRA slots come first, then shorter
    contexts; on a T4 the 16-bit weights alone pass vLLM's share, so the base goes 4-bit, which only the
    transformers decoder loads, and its whole batch then needs a shorter context."""
    shape = ModelShape.from_config(MINITRON_8B)
    assert plan_memory(shape, l4_run()).run.decode_backend == "vllm"
    tight = plan_memory(shape, l4_run(gpu_memory_gib=21.0))
    assert (tight.run.decode_backend, tight.run.quantization) == ("vllm", "none")
    assert tight.run.max_loras < 8 and tight.run.max_model_len == 8192
    assert not decode_memory(shape, replace(tight.run, max_loras=2 * tight.run.max_loras)).fits
    t4 = plan_memory(shape, t4_run())
    assert (t4.run.decode_backend, t4.run.quantization) == ("hf", "bitsandbytes")
    assert not any(decode_memory(shape, t4_run(max_model_len=n, max_loras=k)).fits
                   for n in (8192, 4096, 2048) for k in (8, 4, 2, 1))  # no vLLM rung fits: the backend changes
    assert decode_memory(shape, t4.run).fits and not decode_memory(shape, replace(t4.run, max_model_len=8192)).fits
    # the 16-bit scorer (16.8 GB) does not fit a 15 GiB card: product-of-experts scoring is dropped
    assert not t4.run.poe_scoring and any("no PoE scoring" in c for c in t4.changes)


def test_disk_peak_caps_the_adapters_alive():
    shape = ModelShape.from_config(MINITRON_8B)
    adapter = 32 * 40 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 11520) * 3) * 2  # 16-bit bytes
    assert adapter == 188_088_320
    d = disk_plan(shape, l4_run())
    assert d.peak_bytes == 120 * adapter + 0.5e9 > 20e9  # every task's adapter alive: 23.07 GB
    assert d.max_adapters_alive == int((20e9 - 0.5e9) // adapter) == 103
    plan = plan_memory(shape, l4_run())
    assert plan.disk.adapters_alive == 103 and plan.disk.fits and plan.settings()["max_adapters"] == 103


def test_downgrades_are_what_runs_differently_with_the_stage_that_did_not_fit():
    """Minitron-8B on a T4: the plan moves decoding to a 4-bit base on transformers at 4096 tokens, drops PoE
    scoring and caps the adapters on disk (103 of the 120 tasks get one): each runs differently, so each is a
    downgrade, with the stage that did not fit as configured."""
    plan = plan_memory(ModelShape.from_config(MINITRON_8B), t4_run())
    assert any(c.startswith("at most 103 adapters on disk") for c in plan.changes)
    downs = {d["setting"]: d for d in plan.downgrades()}
    assert set(downs) == {"decode.backend", "decode.quantization", "decode.max_model_len", "poe_scoring",
                          "max_adapters"}
    assert (downs["max_adapters"]["was"], downs["max_adapters"]["now"]) == (0, 103)
    assert downs["max_adapters"]["what"].startswith("TTT adapters for 103 of 120 tasks")
    assert "120 adapters of 188 MB need 23.1 GB of the 20.0 GB disk at once" in downs["max_adapters"]["why"]
    assert (downs["decode.backend"]["was"], downs["decode.backend"]["now"]) == ("vllm", "hf")
    assert "instead of vLLM" in downs["decode.backend"]["what"]
    assert "8 LoRA slots and 8192-token sequences vLLM needs" in downs["decode.backend"]["why"]
    assert "GiB of 13.50 (0.9 of the card)" in downs["decode.backend"]["why"]
    assert "the scorer with 16-bit weights needs" in downs["poe_scoring"]["why"]
    assert plan.to_dict()["downgrades"] == plan.downgrades()
    assert plan_memory(ModelShape.from_config(QWEN25_05B), t4_run()).downgrades() == []  # fits: nothing lowered


def test_a_model_too_big_for_any_rung_does_not_fit():
    huge = ModelShape.from_config({**MINITRON_8B, "num_hidden_layers": 200})  # ~38B
    plan = plan_memory(huge, t4_run())
    assert plan.verdict == NO_FIT and "decoding does not fit at any setting of the ladder" in plan.changes


def test_cpu_presets_are_not_planned_and_settings_read_the_config():
    shape = ModelShape.from_config(QWEN25_05B)
    assert plan_memory(shape, run_from_config(preset("cpu-tiny"))).verdict == NOT_PLANNED
    r = run_from_config(preset("l4x4"))
    assert (r.gpu_memory_gib, r.train_max_seq_len, r.max_model_len, r.max_loras, r.quantization, r.decode_backend,
            r.hf_batch_rows) == (22.5, 8192, 8192, 8, "none", "vllm", 8)


def test_bad_config_json_names_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="missing .*num_hidden_layers"):
        ModelShape.from_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        ModelShape.from_dir(tmp_path / "nowhere")


def test_plan_command_prints_the_memory_plan_from_a_model_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(MINITRON_8B))
    assert cli(["plan", "--model", str(tmp_path), "--preset", "t4x2"]) == 0
    out = capsys.readouterr().out
    assert "8.41B params" in out and "fits after degrading" in out and "decode.quantization none -> bitsandbytes" in out
    assert "decode.backend vllm -> hf" in out
    assert cli(["plan", "--preset", "t4x2"]) == 2  # neither --challenges nor --model
    # with the challenges too, the time plan counts tokens in the model folder's profile and says which
    from arcttt_kaggle.arc.data import package_sample_dir

    (tmp_path / "arc_format.json").write_text(json.dumps({"profile": "architects"}))
    challenges = str(package_sample_dir() / "arc-agi_test_challenges.json")
    assert cli(["plan", "--challenges", challenges, "--model", str(tmp_path), "--preset", "l4x4"]) == 0
    out = capsys.readouterr().out
    assert "format profile architects; decode dfs" in out and "8.41B params" in out


def test_the_run_applies_what_the_memory_plan_degraded():
    """``preflight.memory_overrides``: Minitron-8B on a T4 becomes a 4-bit base decoded by transformers (vLLM 0.32
    has no bitsandbytes), shorter sequences, and voting instead of PoE; a plan that fits as configured changes
    nothing."""
    from arcttt_kaggle.run.preflight import memory_overrides

    cfg = preset("t4x2")
    plan = plan_memory(ModelShape.from_config(MINITRON_8B, "minitron"), run_from_config(cfg))
    out = memory_overrides(plan, cfg)
    assert out["decode.quantization"] == "bitsandbytes" and out["decode.backend"] == "hf"
    assert out["decode.max_model_len"] == 4096 and "decode.max_loras" not in out  # one adapter at a time in hf
    assert out["select.method"] == "two_level"
    cfg.with_overrides(out)  # every key is a real config key, and the result validates
    small = plan_memory(ModelShape.from_config(QWEN25_05B, "qwen"), run_from_config(cfg))
    assert memory_overrides(small, cfg) == {}


def test_the_public_arc_checkpoints_reduced_vocabularies_relax_the_plan():
    """The ARChitects' and NVARC's checkpoints arrive with their vocabulary cut (~77 single characters; 16 tokens):
    planned as they are, every stage needs less (Minitron-8B's 2 x 131072 x 4096 embedding and head, 2.1 GB in
    16-bit, are gone), and on a tighter L4 share the cut Minitron keeps all 8 LoRA slots where the full one
    gives some up. Llama-3.2-3B (3.21B published) fits a T4 and an L4 as configured either way."""
    per_layer = 3072 * 3072 * 2 + 2 * 3072 * 1024 + 3 * 3072 * 8192 + 2 * 3072
    assert ModelShape.from_config(LLAMA32_3B).params == 128256 * 3072 + 28 * per_layer + 3072 == 3_212_749_824
    full, cut = (ModelShape.from_config({**MINITRON_8B, "vocab_size": v}) for v in (131072, 77))
    for stage in (train_memory, decode_memory, score_memory):
        assert stage(cut, l4_run()).total < stage(full, l4_run()).total
    tight = l4_run(gpu_memory_gib=21.0)
    assert plan_memory(full, tight).run.max_loras < 8 and plan_memory(cut, tight).run.max_loras == 8
    qwen = plan_memory(ModelShape.from_config({**QWEN3_4B, "vocab_size": 16}), t4_run())
    assert qwen.verdict == FITS
    for r in (t4_run(), l4_run()):
        llama = plan_memory(ModelShape.from_config({**LLAMA32_3B, "vocab_size": 77}), r)
        assert llama.verdict == FITS and not llama.changes
