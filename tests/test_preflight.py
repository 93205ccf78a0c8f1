"""Preflight: GPU inventory → preset, challenges in every Kaggle layout, offline variables, the kernel clock,
engine probes in child processes (a real import failure injected), the model check, and the must-fail policy."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from arcttt_kaggle.run.config import preset
from arcttt_kaggle.engines.memory import FITS, NOT_PLANNED
from arcttt_kaggle.run.preflight import (CHALLENGE_SLUGS, OFFLINE_ENV, GpuInfo, PreflightResult, PresetChoice,
                                     check_model, choose_preset, config_for, engines_imported, find_challenges,
                                     kernel_start_time, must_fail, parse_nvidia_smi, parse_start_time, probe_code, probe_engines,
                                     set_offline_env)
from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

# Literal `nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader,nounits` lines.
T4_LINE = "Tesla T4, 7.5, 15360, 550.54.15"
L4_LINE = "NVIDIA L4, 8.9, 23034, 550.54.15"
H100_LINE = "NVIDIA H100 80GB HBM3, 9.0, 81559, 535.104.05"


def gpus(*lines: str) -> list[GpuInfo]:
    return parse_nvidia_smi("\n".join(lines) + "\n")


def test_nvidia_smi_lines_parse():
    t4, l4, h100 = gpus(T4_LINE, L4_LINE, H100_LINE)
    assert (t4.index, t4.name, t4.compute_capability, t4.memory_mib, t4.driver) == (0, "Tesla T4", 7.5, 15360, "550.54.15")
    assert t4.memory_gib == 15.0 and not t4.bf16
    assert (l4.name, l4.compute_capability, round(l4.memory_gib, 2), l4.bf16) == ("NVIDIA L4", 8.9, 22.49, True)
    assert (h100.index, h100.name, h100.compute_capability, h100.memory_mib) == (2, "NVIDIA H100 80GB HBM3", 9.0, 81559)
    assert parse_nvidia_smi("") == []
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi("Tesla T4, 7.5, lots, 550")


def test_preset_follows_the_gpus():
    assert choose_preset(gpus(T4_LINE, T4_LINE)).name == "t4x2"
    assert choose_preset(gpus(*[L4_LINE] * 4)).name == "l4x4"
    assert choose_preset([]) == PresetChoice("cpu-tiny", "no GPU found")
    h100 = gpus(H100_LINE)
    c = choose_preset(h100)
    assert c.name == "gpu-auto" and not c.refused
    cfg = config_for(c, h100)
    assert (cfg.preset, cfg.workers, cfg.device, cfg.train.dtype, cfg.decode.dtype) == \
        ("gpu-auto", 1, "cuda", "bfloat16", "bfloat16")
    assert cfg.gpu_memory_gib == pytest.approx(81559 / 1024)
    one_t4 = config_for(choose_preset(gpus(T4_LINE)), gpus(T4_LINE))
    assert (one_t4.workers, one_t4.train.dtype, one_t4.gpu_memory_gib) == (1, "float16", 15.0)  # no bf16 on Turing


def test_an_explicit_preset_wins_unless_the_hardware_cannot_run_it():
    assert choose_preset(gpus(*[L4_LINE] * 4), "t4x2") == PresetChoice("t4x2", "ARCTTT_PRESET", "", "t4x2")
    c = choose_preset(gpus(T4_LINE), "t4x2")
    assert c.refused == "preset t4x2 needs 2 GPU(s), 1 found" and c.name == "gpu-auto" and c.requested == "t4x2"
    c = choose_preset(gpus(*[T4_LINE] * 4), "l4x4")
    assert "bf16" in c.refused and "Tesla T4 (7.5)" in c.refused
    assert "needs 2 GPU(s), 0 found" in choose_preset([], "t4x2").refused
    assert "unknown preset" in choose_preset(gpus(T4_LINE, T4_LINE), "a100x8").refused
    assert choose_preset(gpus(T4_LINE, T4_LINE), "cpu-tiny").name == "cpu-tiny"  # CPU runs anywhere


def test_the_named_presets_plan_the_guides_memory():
    assert (preset("t4x2").gpu_memory_gib, preset("l4x4").gpu_memory_gib, preset("cpu-tiny").gpu_memory_gib) == \
        (15.0, 22.5, 0.0)


@pytest.mark.parametrize("slug", CHALLENGE_SLUGS)
@pytest.mark.parametrize("layout", ["flat", "competitions"])
def test_challenges_are_found_in_every_layout_and_slug(tmp_path, slug, layout):
    folder = tmp_path / slug if layout == "flat" else tmp_path / "competitions" / slug
    folder.mkdir(parents=True)
    (folder / "arc-agi_test_challenges.json").write_text("{}")
    (tmp_path / "arc-base-model").mkdir()  # other datasets beside it change nothing
    assert find_challenges(input_root=tmp_path) == folder / "arc-agi_test_challenges.json"


def test_newest_competition_first_and_explicit_wins(tmp_path):
    for slug in ("arc-prize-2024", "arc-prize-2026-arc-agi-2"):
        (tmp_path / slug).mkdir()
        (tmp_path / slug / "arc-agi_test_challenges.json").write_text("{}")
    assert find_challenges(input_root=tmp_path).parent.name == "arc-prize-2026-arc-agi-2"
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    assert find_challenges(mine, input_root=tmp_path) == mine
    with pytest.raises(FileNotFoundError, match="named explicitly"):
        find_challenges(tmp_path / "absent.json", input_root=tmp_path)


def test_an_unknown_layout_is_still_found_and_absence_lists_what_was_searched(tmp_path):
    odd = tmp_path / "someone" / "arc-copy"
    odd.mkdir(parents=True)
    (odd / "arc-agi_test_challenges.json").write_text("{}")
    assert find_challenges(input_root=tmp_path) == odd / "arc-agi_test_challenges.json"
    empty = tmp_path / "empty"
    (empty / "arc-base-model").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as e:
        find_challenges(input_root=empty)
    msg = str(e.value)
    for slug in CHALLENGE_SLUGS:
        assert str(empty / slug / "arc-agi_test_challenges.json") in msg
        assert str(empty / "competitions" / slug / "arc-agi_test_challenges.json") in msg
    assert "arc-base-model" in msg  # what /kaggle/input does hold


def test_offline_variables_are_set():
    env = {"HF_HUB_OFFLINE": "0", "PATH": "/bin"}
    changed = set_offline_env(env)
    assert {k: env[k] for k in OFFLINE_ENV} == OFFLINE_ENV
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["UNSLOTH_DISABLE_STATISTICS"] == env["VLLM_NO_USAGE_STATS"] == env["VLLM_DO_NOT_TRACK"] == "1"
    assert changed["HF_HUB_OFFLINE"] == "0" and changed["VLLM_NO_USAGE_STATS"] == "" and "PATH" not in changed
    assert set_offline_env(env) == {}  # idempotent
    assert engines_imported({"vllm": object(), "numpy": object()}) == ["vllm"]


def test_the_budget_clock_starts_when_the_process_started():
    start = kernel_start_time()
    btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime "))
    assert btime <= start <= time.time()
    # a command name with spaces and parentheses does not shift the fields; 250 ticks at 100 Hz = 2.5 s
    stat = "4242 (my (odd) kernel) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 250 1000 200"  # fields 10-21, then 22
    assert parse_start_time(stat, "cpu 1 2 3\nbtime 1700000000\n", 100) == 1_700_000_002.5


def test_a_broken_vllm_hands_decoding_to_transformers_with_the_exact_error(tmp_path):
    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    ladder = probe_engines(None, start=False, timeout=300, env=env, stages=("decode",))
    rung, above = ladder.decode
    assert rung == "hf"
    assert above == "vllm: ImportError: libcudart.so.12: cannot open shared object file"
    assert [p.name for p in ladder.probes] == ["vllm", "hf"] and ladder.probes[1].output.startswith("transformers ")
    assert ladder.train == (None, "not probed")


def _result(**kw) -> PreflightResult:
    base = dict(preset=PresetChoice("t4x2", "2 x T4"), gpus=tuple(gpus(T4_LINE, T4_LINE)), gpu_source="nvidia-smi",
                device="cuda", kernel_start=time.time() - 60, offline_env_changed={}, engines_imported_before=(),
                challenges="/kaggle/input/arc-prize-2025/arc-agi_test_challenges.json")
    return PreflightResult.build(**{**base, **kw})


@pytest.mark.slow  # transformers in a child process: ~1-3 min on the loaded 2-core box
def test_the_tiny_model_passes_the_model_check_and_a_missing_one_is_fatal(tmp_path):
    tiny = ensure_tiny_model(tmp_path / "tiny")
    check = check_model(tiny, preset("cpu-tiny"), timeout=300)
    assert check.ok and check.error == "" and check.tokenizer.ok, check
    assert check.shape.vocab == 17 and check.memory.verdict == NOT_PLANNED  # no GPU to plan on a CPU preset
    on_t4 = check_model(tiny, replace(preset("t4x2"), model=str(tiny)), gpu_memory_gib=15.0, timeout=300)
    assert on_t4.ok and on_t4.memory.verdict == FITS
    missing = check_model(tmp_path / "nope", preset("t4x2"))
    assert not missing.ok and "does not exist" in missing.error
    r = _result(model=missing)
    assert r.fatal and r.fatal[0].startswith("model unusable: model folder") and r.lines()[0].startswith(
        "preflight: FALLBACK-ONLY: model unusable")
    assert r.to_dict()["model"]["ok"] is False


@pytest.mark.slow
def test_a_tokenizer_the_format_refuses_is_reported(tmp_path):
    tiny = ensure_tiny_model(tmp_path / "tiny")
    tok = (tiny / "tokenizer.json").read_text().replace('"I": ', '"Q": ')  # the input marker leaves the vocabulary
    (tiny / "tokenizer.json").write_text(tok)
    check = check_model(tiny, preset("cpu-tiny"), timeout=300)
    assert not check.ok and "TokenizerError: input marker 'I'" in check.error


def test_what_makes_a_run_fallback_only():
    assert _result().fatal == () and _result().lines()[0] == "preflight: OK"
    assert "no GPU on a GPU preset (t4x2)" in _result(gpus=()).fatal
    no_gpu_rerun = _result(gpus=(), device="cpu", preset=PresetChoice("cpu-tiny", "no GPU found",
                                                                     "preset t4x2 needs 2 GPU(s), 0 found", "t4x2"))
    assert "no GPU on a GPU preset (t4x2)" in no_gpu_rerun.fatal
    assert any("no challenges file" in f for f in _result(challenges="", challenges_error="searched x").fatal)


def test_must_fail_policy():
    ok, dud = _result(), _result(gpus=())
    assert dud.fatal and dud.fallback_only
    table = {(False, False): False, (False, True): False, (True, False): True, (True, True): False}
    for (fatal, rerun), expected in table.items():
        assert must_fail(dud if fatal else ok, rerun=rerun) is expected, (fatal, rerun)


def test_the_vllm_probe_starts_the_engine_with_the_runs_decode_settings():
    """The probe is the run's engine in small: a model whose weights pass a fixed half of the card must not be
    refused when the run would give vLLM 0.9 of it, and a context the run cannot hold must fail here first."""
    import ast

    from arcttt_kaggle.engines.decode import DecodeConfig

    dec = DecodeConfig(gpu_memory_utilization=0.85, max_model_len=4096, max_loras=4, max_lora_rank=32)
    tree = ast.parse(probe_code("vllm", "/kaggle/input/m", True, "bfloat16", dec))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "LLM")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert (kw["gpu_memory_utilization"], kw["max_model_len"], kw["max_loras"], kw["max_lora_rank"]) == (0.85, 4096, 4, 32)
    assert kw["model"] == "/kaggle/input/m" and kw["dtype"] == "bfloat16"
    small = next(n for n in ast.walk(ast.parse(probe_code("vllm", "m", True))) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", "") == "LLM")
    assert {k.arg: ast.literal_eval(k.value) for k in small.keywords}["max_model_len"] == 256  # no run config: small


def test_without_nvidia_smi_or_an_nvidia_device_node_no_gpu_is_probed(tmp_path):
    from arcttt_kaggle.run.preflight import detect_gpus

    gpus, how = detect_gpus(dev=tmp_path)  # no nvidia-smi on this machine, no /dev/nvidia* here
    assert gpus == [] and f"no NVIDIA device under {tmp_path}" in how
    (tmp_path / "nvidia0").touch()  # a device node: torch.cuda is asked (it finds none on a CPU machine)
    gpus, how = detect_gpus(dev=tmp_path)
    assert gpus == [] and "torch.cuda" in how and "no NVIDIA device" not in how
