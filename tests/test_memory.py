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
The hand computations below are written out as arithmetic, not through the module's helpers.
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
    # decode on the T4: 0.9 x 15 GiB; weights all 16-bit, KV for 8 views x 8192 tokens
    d = dict(decode_memory(shape, t4_run()).terms)
    assert d["weights"] == 494_032_768 * 2
    assert d["kv cache"] == 12_288 * 8192 * 8 == 0.75 * GIB
    assert d["lora slots"] == 8 * 17_596_416 * 2
    assert decode_memory(shape, t4_run()).capacity == 0.9 * 15 * GIB


def test_qwen3_4b_training_on_a_t4_by_hand():
    shape = ModelShape.from_config(QWEN3_4B)
    linear = 36 * (2560 * 4096 + 2 * 2560 * 1024 + 4096 * 2560 + 3 * 2560 * 9728)
    other = 151936 * 2560 + 36 * (2 * 2560 + 2 * 128) + 2560
    weights = linear * NF4 + other * 2
    lora_adam = 32 * 36 * ((2560 + 4096) * 2 + (2560 + 1024) * 2 + (2560 + 9728) * 3) * 16
    layer = 2 * 8192 * (4 * 2560 + 2 * 4096 + 2 * 1024 + 3 * 9728) * 2
    logits_unsloth = 8192 * 151936 * 2
    unsloth = 0.5 * GIB + weights + lora_adam + 0 + layer + logits_unsloth  # checkpoints offloaded to host
    got = train_memory(shape, t4_run())
    assert got.total == pytest.approx(unsloth, rel=1e-12)
    assert got.total / GIB == pytest.approx(7.79, abs=0.01) and got.fits
    # PEFT keeps the checkpoints on the GPU and the fp32 logits + their gradient: does not fit at 8192 ...
    checkpoints = 36 * 8192 * 2560 * 2
    peft = 0.5 * GIB + weights + lora_adam + checkpoints + layer + 8192 * 151936 * 10
    assert train_memory(shape, t4_run(train_backend="peft")).total == pytest.approx(peft, rel=1e-12)
    assert peft > 15 * GIB
    # ... and the ladder halves max_seq_len: at 4096 every sequence-linear term halves
    half = 0.5 * GIB + weights + lora_adam + checkpoints / 2 + layer / 2 + 4096 * 151936 * 10
    assert half <= 15 * GIB
    plan = plan_memory(shape, t4_run(train_backend="peft"))
    assert plan.run.train_max_seq_len == 4096 and plan.verdict == DEGRADED
    assert "train.max_seq_len 8192 -> 4096" in plan.changes


def test_minitron_8b_decodes_on_an_l4_only_in_4bit():
    shape = ModelShape.from_config(MINITRON_8B)
    sixteen = 8_414_105_600 * 2
    slots = 8 * 32 * 40 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 11520) * 3) * 2
    activations = 8192 * (2 * 11520 + 4096 + 2 * 1024 + 2 * 4096) * 2 + 256 * 131072 * 4
    kv = 2 * 40 * 1024 * 2 * 8192 * 8
    overhead = 0.5 * GIB + 0.5 * GIB  # CUDA context + CUDA graphs
    as_configured = overhead + sixteen + slots + activations + kv
    assert decode_memory(shape, l4_run()).total == as_configured == 30_890_663_936  # 28.77 GiB
    assert as_configured > 0.9 * 22.5 * GIB  # 20.25 GiB: vLLM in 16-bit cannot start
    linear = 40 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 11520)
    four_bit = linear * NF4 + (8_414_105_600 - linear) * 2
    assert four_bit == 5_934_643_200  # 5.53 GiB
    plan = plan_memory(shape, l4_run())
    assert plan.verdict == DEGRADED
    assert (plan.run.quantization, plan.run.max_loras, plan.run.max_model_len) == ("bitsandbytes", 8, 8192)
    assert decode_memory(shape, plan.run).total == overhead + four_bit + slots + activations + kv <= 0.9 * 22.5 * GIB
    # the 16-bit scorer still fits the whole L4 (no vLLM beside it): PoE stays on
    assert plan.run.poe_scoring and score_memory(shape, plan.run).fits


def test_minitron_8b_on_a_t4_needs_every_rung():
    shape = ModelShape.from_config(MINITRON_8B)
    plan = plan_memory(shape, t4_run())
    cap = 0.9 * 15 * GIB
    linear = 40 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 11520)
    four_bit = linear * NF4 + (8_414_105_600 - linear) * 2
    activations = 8192 * (2 * 11520 + 4096 + 2 * 1024 + 2 * 4096) * 2 + 256 * 131072 * 4
    slot = 32 * 40 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 11520) * 3) * 2  # one adapter slot
    kv_token = 2 * 40 * 1024 * 2
    total = lambda length, loras: GIB + four_bit + loras * slot + activations + kv_token * length * 8  # noqa: E731
    assert total(8192, 1) > cap  # even 4-bit with one slot cannot hold 8 sequences of 8192 tokens
    assert total(4096, 8) > cap >= total(4096, 4)  # at 4096 tokens, 4 slots fit and 8 do not
    assert (plan.run.quantization, plan.run.max_model_len, plan.run.max_loras) == ("bitsandbytes", 4096, 4)
    assert decode_memory(shape, plan.run).total == total(4096, 4)
    # the scorer loads 16-bit weights (16.8 GB) on a 15 GiB card: product-of-experts scoring is dropped
    assert not plan.run.poe_scoring and any("no PoE scoring" in c for c in plan.changes)


def test_disk_peak_caps_the_adapters_alive():
    shape = ModelShape.from_config(MINITRON_8B)
    adapter = 32 * 40 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 11520) * 3) * 2  # 16-bit bytes
    assert adapter == 188_088_320
    d = disk_plan(shape, l4_run())
    assert d.peak_bytes == 120 * adapter + 0.5e9 > 20e9  # every task's adapter alive: 23.07 GB
    assert d.max_adapters_alive == int((20e9 - 0.5e9) // adapter) == 103
    plan = plan_memory(shape, l4_run())
    assert plan.disk.adapters_alive == 103 and plan.disk.fits and plan.settings()["max_adapters_alive"] == 103


def test_downgrades_are_what_runs_differently_with_the_stage_that_did_not_fit():
    """Minitron-8B on an L4: the plan changes the decoder's weights to 4-bit and caps the adapters on disk; only
    the first runs differently (workers delete each adapter after its task anyway), so only it is a downgrade,
    and its reason is the 16-bit decoder's need against vLLM's share of the card."""
    plan = plan_memory(ModelShape.from_config(MINITRON_8B), l4_run())
    assert any(c.startswith("at most 103 adapters on disk") for c in plan.changes)
    (down,) = plan.downgrades()
    assert (down["setting"], down["was"], down["now"]) == ("decode.quantization", "none", "bitsandbytes")
    assert "vLLM needs 28.77 GiB of 20.25 (0.9 of the card): weights 15.67" in down["why"]  # 30_890_663_936 bytes
    assert plan.to_dict()["downgrades"] == [down]
    assert plan_memory(ModelShape.from_config(QWEN25_05B), t4_run()).downgrades() == []  # fits: nothing lowered


def test_a_model_too_big_for_any_rung_does_not_fit():
    huge = ModelShape.from_config({**MINITRON_8B, "num_hidden_layers": 200})  # ~38B
    plan = plan_memory(huge, t4_run())
    assert plan.verdict == NO_FIT and "decoding does not fit at any setting of the ladder" in plan.changes


def test_cpu_presets_are_not_planned_and_settings_read_the_config():
    shape = ModelShape.from_config(QWEN25_05B)
    assert plan_memory(shape, run_from_config(preset("cpu-tiny"))).verdict == NOT_PLANNED
    r = run_from_config(preset("l4x4"))
    assert (r.gpu_memory_gib, r.train_max_seq_len, r.max_model_len, r.max_loras, r.concurrent_sequences,
            r.quantization) == (22.5, 8192, 8192, 8, 8, "none")


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
    has no bitsandbytes), shorter sequences, fewer LoRA slots, and voting instead of PoE; a plan that fits as
    configured changes nothing."""
    from arcttt_kaggle.run.preflight import memory_overrides

    cfg = preset("t4x2")
    plan = plan_memory(ModelShape.from_config(MINITRON_8B, "minitron"), run_from_config(cfg))
    out = memory_overrides(plan, cfg)
    assert out["decode.quantization"] == "bitsandbytes" and out["decode.backend"] == "hf"
    assert out["decode.max_model_len"] == 4096 and out["decode.max_loras"] == 4
    assert out["select.method"] == "two_level"
    cfg.with_overrides(out)  # every key is a real config key, and the result validates
    small = plan_memory(ModelShape.from_config(QWEN25_05B, "qwen"), run_from_config(cfg))
    assert memory_overrides(small, cfg) == {}


def test_the_public_arc_checkpoints_reduced_vocabularies_relax_the_plan():
    """The ARChitects' and NVARC's checkpoints arrive with their vocabulary cut (~77 single characters; 16 tokens):
    planned as they are, Minitron-8B keeps all 8 LoRA slots on a T4 (its 2 x 131072 x 4096 embedding and head,
    2.1 GB in 16-bit, are gone) and Qwen3-4B keeps its 8; Llama-3.2-3B (3.21B published) needs only a 4-bit base
    on a T4 and fits an L4 as configured."""
    per_layer = 3072 * 3072 * 2 + 2 * 3072 * 1024 + 3 * 3072 * 8192 + 2 * 3072
    assert ModelShape.from_config(LLAMA32_3B).params == 128256 * 3072 + 28 * per_layer + 3072 == 3_212_749_824
    full, cut = (plan_memory(ModelShape.from_config({**MINITRON_8B, "vocab_size": v}), t4_run()) for v in (131072, 77))
    assert full.run.max_loras == 4 and cut.run.max_loras == 8
    assert cut.run.quantization == "bitsandbytes" and cut.run.max_model_len == 4096 and not cut.run.poe_scoring
    qwen = plan_memory(ModelShape.from_config({**QWEN3_4B, "vocab_size": 16}), t4_run())
    assert qwen.run.max_loras == 8 and qwen.run.quantization == "bitsandbytes"
    llama = [plan_memory(ModelShape.from_config({**LLAMA32_3B, "vocab_size": 77}), r) for r in (t4_run(), l4_run())]
    assert llama[0].verdict == DEGRADED and llama[0].run.quantization == "bitsandbytes" and llama[0].run.max_loras == 8
    assert llama[1].verdict == FITS and not llama[1].changes
