"""Every downgrade is in the status: what the preflight, the memory plan or a worker's engine ladder decided to run
instead of what was configured makes the run ``degraded``, and a reason names what ran instead of what. A run
whose only answers are the program expert's is ``fallback-only``.

Each test drives a real ``pipeline.Run`` on CPU without engines: the tasks load from the shipped sample, the
preflight's findings are built from a simulated GPU inventory (``nvidia-smi`` lines), a real memory plan on a
real model shape, or an engine ladder whose top rung failed; what a worker leaves (its candidate file, its
events) is written with the worker's own writers; ``Run.finish`` writes report.json, the status and report.html.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from arcttt_kaggle.arc.candidates import Candidate, write_candidate_file
from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
from arcttt_kaggle.engines.memory import DEGRADED, FITS, ModelShape, plan_memory, run_from_config
from arcttt_kaggle.run.config import preset
from arcttt_kaggle.run.pipeline import Run
from arcttt_kaggle.run.preflight import (EngineLadder, ModelCheck, PreflightResult, choose_preset, config_for,
                                         parse_nvidia_smi)
from arcttt_kaggle.run.report import run_status
from arcttt_kaggle.run.worker import Events, _ladder, planned_for_rung
from test_memory import MINITRON_8B, QWEN25_05B

SAMPLE = package_sample_dir()
RIGHT, MIXED = "00576224", "31d5ba1a"  # 1 and 2 test inputs
T4_LINE = "Tesla T4, 7.5, 15360, 550.54.15"  # nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version
L4_LINE = "NVIDIA L4, 8.9, 23034, 550.54.15"


def solved_tasks() -> dict:
    return load_challenges(SAMPLE / "arc-agi_test_challenges.json",
                           solutions=SAMPLE / "arc-agi_test_solutions.json").tasks


def write_challenges(folder: Path) -> str:
    solved = solved_tasks()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "challenges.json"
    path.write_text(json.dumps({t: solved[t].to_dict() for t in (RIGHT, MIXED)}))
    return str(path)


def gpu_run(tmp_path: Path, *nvidia_smi: str, requested: str | None = None) -> Run:
    """A run as the notebook starts it on these GPUs: the preset the preflight chooses, the tasks loaded, and the
    first half of the preflight (hardware, preset, challenges) done."""
    gpus = parse_nvidia_smi("\n".join(nvidia_smi))
    choice = choose_preset(gpus, requested)
    cfg = config_for(choice, gpus, challenges=write_challenges(tmp_path), out_dir=str(tmp_path / "out"),
                     model="/kaggle/input/arc-base-model", run_programs=False)
    r = Run(cfg)
    r.preflight = PreflightResult.build(preset=choice, gpus=tuple(gpus), gpu_source="nvidia-smi", device=cfg.device,
                                        kernel_start=time.time() - 60, offline_env_changed={},
                                        engines_imported_before=(), challenges=cfg.challenges)
    r.load()
    return r


def model_check(r: Run, config_json: dict) -> ModelCheck:
    """The model check of a model of this shape on the run's smallest GPU (its tokenizer passed)."""
    shape = ModelShape.from_config(config_json)
    gpu_mem = min(g.memory_gib for g in r.preflight.gpus)
    return ModelCheck(r.cfg.model, True, shape=shape,
                      memory=plan_memory(shape, run_from_config(r.cfg, gpu_mem, tasks=len(r.tasks))))


def top_rungs_work() -> EngineLadder:
    return EngineLadder(train=("unsloth", ""), decode=("vllm", ""), probes=())


def worker_answered(r: Run, events=None) -> None:
    """Worker 0 decoded every task and wrote the right answers (its candidate file, by the worker's writer);
    ``events(Events)`` writes its events first."""
    wdir = r.out / "work" / "worker0-0"
    wdir.mkdir(parents=True, exist_ok=True)
    if events is not None:
        events(Events(wdir / "events.jsonl", 0))
    solved = solved_tasks()
    ttt = {t: [[Candidate(pair.output, view="id")] for pair in solved[t].test] for t in r.tasks}
    write_candidate_file(wdir / "candidates.json", ttt, "ttt", {"worker": 0})
    r.workers.append({"worker": 0, "attempt": 0, "dir": wdir, "tasks": list(r.tasks), "returncode": 0, "reason": "",
                      "train_steps": 1, "views": 1})


def finished(r: Run) -> dict:
    """``Run.finish``'s report, read back from report.json (the status must be recomputable from the file)."""
    r.finish()
    report = json.loads((r.out / "report.json").read_text())
    assert run_status(report) == (report["status"], report["status_reasons"])
    return report


# -- a clean run stays ok ---------------------------------------------------------------------------------------

def test_a_model_that_fits_and_engines_that_start_change_nothing_and_the_run_is_ok(tmp_path):
    r = gpu_run(tmp_path, T4_LINE, T4_LINE)
    configured = r.cfg
    check = model_check(r, QWEN25_05B)
    assert check.memory.verdict == FITS
    r.apply_checks(check, top_rungs_work())
    assert r.cfg == configured and r.downgrades == []
    worker_answered(r)
    report = finished(r)
    assert (report["status"], report["status_reasons"], report["downgrades"]) == ("ok", [], [])


# -- one test per source of a downgrade ------------------------------------------------------------------------

def test_a_memory_plan_that_degrades_makes_the_run_degraded_and_names_each_change(tmp_path):
    """Minitron-8B on 2 x T4: its 16-bit weights alone pass vLLM's share of the card at every slot count and
    context, so the plan takes a 4-bit base, which vLLM 0.32 cannot load: decoding runs on transformers, whose
    whole batch fits only at 4096 tokens; the 16-bit scorer does not fit the card: voting instead of PoE. The run
    is degraded and says so, one reason per cause."""
    r = gpu_run(tmp_path, T4_LINE, T4_LINE)
    assert (r.cfg.preset, r.cfg.decode.backend, r.cfg.decode.quantization) == ("t4x2", "vllm", "none")
    check = model_check(r, MINITRON_8B)
    assert check.memory.verdict == DEGRADED
    r.apply_checks(check, top_rungs_work())
    assert (r.cfg.decode.backend, r.cfg.decode.quantization, r.cfg.decode.max_model_len, r.cfg.select.method) == (
        "hf", "bitsandbytes", 4096, "two_level")  # what the workers run
    worker_answered(r)
    report = finished(r)
    assert report["status"] == "degraded"
    memory = [x for x in report["status_reasons"] if x.startswith("memory plan: ")]
    assert len(memory) == 2, report["status_reasons"]  # two causes: the decoder and the scorer do not fit
    assert memory[0].startswith("memory plan: decoding on transformers instead of vLLM")
    assert "a 4-bit (bitsandbytes NF4) base model instead of its 16-bit weights" in memory[0]
    assert "a 4096-token decoding context instead of 8192" in memory[0]
    assert "with 16-bit weights, 8 LoRA slots and 8192-token sequences vLLM needs" in memory[0]
    assert memory[1].startswith("memory plan: voting alone instead of product-of-experts scoring (the scorer with "
                                "16-bit weights needs")
    assert [(d["source"], d["setting"], d["was"], d["now"]) for d in report["downgrades"]] == [
        ("memory plan", "decode.backend", "vllm", "hf"), ("memory plan", "decode.quantization", "none", "bitsandbytes"),
        ("memory plan", "decode.max_model_len", 8192, 4096), ("memory plan", "select.method", True, "two_level")]
    assert json.loads((r.out / "config.json").read_text())["decode"]["backend"] == "hf"
    page = (r.out / "report.html").read_text(encoding="utf-8")
    assert '<table class="downgrades">' in page and page.count("<td>memory plan</td>") == 4


def test_a_memory_plan_that_lowers_vllms_own_knobs_keeps_vllm_and_names_them(tmp_path):
    """A 45-layer Minitron (9.4B) on 4 x L4: fewer LoRA slots and a shorter context, vLLM kept (its own knobs come
    before a change of backend): each named."""
    r = gpu_run(tmp_path, *[L4_LINE] * 4)
    r.apply_checks(model_check(r, {**MINITRON_8B, "num_hidden_layers": 45}), top_rungs_work())
    assert (r.cfg.decode.backend, r.cfg.decode.max_loras, r.cfg.decode.max_model_len) == ("vllm", 2, 4096)
    worker_answered(r)
    report = finished(r)
    assert report["status"] == "degraded"
    text = "\n".join(report["status_reasons"])
    assert "2 LoRA slot(s) in the decoder instead of 8" in text
    assert "a 4096-token decoding context instead of 8192" in text
    assert "transformers" not in text


def test_a_disk_that_holds_fewer_adapters_than_tasks_caps_them_and_the_run_says_so(tmp_path):
    """Minitron-8B on 4 x L4 with a disk that holds one of its 188 MB adapters besides the reserve: the plan lets
    one task train (``max_adapters``; each worker then trains its share, cheapest first: ``adapter_quotas`` and
    the dry-run test of the cap) and the status names it."""
    r = gpu_run(tmp_path, *[L4_LINE] * 4)
    shape = ModelShape.from_config(MINITRON_8B)
    run = run_from_config(r.cfg, 22.5, tasks=len(r.tasks))
    memory = plan_memory(shape, replace(run, disk_capacity_bytes=0.5e9 + 1.5 * 188_088_320))
    assert memory.verdict == DEGRADED and memory.disk.fits and memory.disk.adapters_alive == 1
    r.apply_checks(ModelCheck(r.cfg.model, True, shape=shape, memory=memory), top_rungs_work())
    assert r.cfg.max_adapters == 1 and r.cfg.run_ttt
    worker_answered(r)
    report = finished(r)
    assert report["status"] == "degraded"
    assert [(d["source"], d["setting"], d["was"], d["now"]) for d in report["downgrades"]
            if d["setting"] == "max_adapters"] == [("memory plan", "max_adapters", 0, 1)]
    assert any(x.startswith("memory plan: TTT adapters for 1 of 2 tasks (the cheapest; the others decode with the "
                            "base model) (2 adapters of 188 MB need 0.9 GB of the 0.8 GB disk at once")
               for x in report["status_reasons"]), report["status_reasons"]


def test_an_engine_fallback_at_the_preflight_is_planned_again_for_the_engine_that_runs(tmp_path):
    """Qwen3-4B on 2 x T4 fits vLLM as planned; the preflight finds vLLM broken, so transformers decodes, and its
    whole left-padded batch of 8192-token rows does not fit the card: the run plans again for the engines that
    run and decodes at 4096 tokens, and the status names both the fallback and what the new plan lowered."""
    from test_memory import QWEN3_4B

    r = gpu_run(tmp_path, T4_LINE, T4_LINE)
    check = model_check(r, QWEN3_4B)
    assert check.memory.verdict == FITS
    error = "vllm: ImportError: libcudart.so.13: cannot open shared object file"
    r.apply_checks(check, EngineLadder(train=("unsloth", ""), decode=("hf", error), probes=()))
    assert (r.cfg.decode.backend, r.cfg.decode.max_model_len) == ("hf", 4096)
    worker_answered(r)
    report = finished(r)
    assert report["status"] == "degraded"
    text = "\n".join(report["status_reasons"])
    assert f"preflight: decoding on transformers instead of vLLM ({error})" in text
    assert "a 4096-token decoding context instead of 8192 (re-planned for Unsloth training and transformers " \
           "decoding: with 16-bit weights and 8192-token sequences the transformers decoder (8 rows at once) needs" \
           in text, text


def test_an_engine_the_preflight_found_broken_makes_the_run_degraded(tmp_path):
    """The preflight's probe could not start Unsloth: every worker trains with PEFT instead, decided before any
    worker started (the workers' own ladders then never fall, so no incident says it)."""
    r = gpu_run(tmp_path, T4_LINE, T4_LINE)
    error = "unsloth: ImportError: libcuda.so.1: cannot open shared object file"
    r.apply_checks(model_check(r, QWEN25_05B), EngineLadder(train=("peft", error), decode=("vllm", ""), probes=()))
    assert r.cfg.train.backend == "peft"
    worker_answered(r)
    report = finished(r)
    assert report["status"] == "degraded" and report["incidents"] == []
    assert f"preflight: training on PEFT instead of Unsloth ({error})" in report["status_reasons"]


def test_no_training_engine_at_the_preflight_means_no_ttt_and_says_so(tmp_path):
    r = gpu_run(tmp_path, T4_LINE, T4_LINE)
    error = "unsloth: ImportError: x; peft: ImportError: y"
    r.apply_checks(model_check(r, QWEN25_05B), EngineLadder(train=(None, error), decode=("vllm", ""), probes=()))
    assert r.cfg.run_ttt is False
    worker_answered(r)
    report = finished(r)
    assert report["status"] == "degraded"
    assert ("preflight: no TTT: the base model decodes every task instead of per-task adapters "
            f"(no training engine works: {error})") in report["status_reasons"]


def test_a_refused_preset_in_the_rerun_is_a_downgrade(tmp_path):
    """ARCTTT_PRESET=t4x2 on one T4: the save run refuses it up front; the competition rerun takes the preset the
    GPUs allow, and its status says which preset ran instead of the one asked for."""
    r = gpu_run(tmp_path, T4_LINE, requested="t4x2")
    r.apply_checks(model_check(r, QWEN25_05B), top_rungs_work())
    worker_answered(r)
    report = finished(r)
    assert report["status"] == "degraded"
    assert "preflight: preset gpu-auto instead of t4x2 (preset t4x2 needs 2 GPU(s), 1 found)" in report["status_reasons"]


def test_a_worker_whose_decoding_ladder_falls_is_degraded_and_names_what_ran(tmp_path):
    """vLLM fails to start inside the worker (the fault); its ladder decodes with transformers."""
    r = Run(replace(preset("cpu-tiny"), challenges=write_challenges(tmp_path), out_dir=str(tmp_path / "out"),
                    run_programs=False))
    r.load()

    def start(rung: str):
        if rung == "vllm":
            raise RuntimeError("vLLM engine failed to start: no CPU KV cache space")
        return SimpleNamespace(backend="transformers")

    worker_answered(r, lambda events: _ladder("decode", ["vllm", "hf"], start, events, "none"))
    report = finished(r)
    assert report["status"] == "degraded"
    assert ("decode engine fell back (rung vllm) on worker 0: RuntimeError: vLLM engine failed to start: no CPU KV "
            "cache space; decoding on transformers instead of vLLM") in report["status_reasons"]


def test_a_workers_fallback_engine_is_planned_again_and_starts_with_what_fits(tmp_path):
    """On 2 x T4 (simulated inventory) with Qwen3-4B, vLLM fails to start inside a worker. Its ladder plans again
    for transformers, whose whole batch of 8192-token rows does not fit the card, and starts it at 4096 tokens;
    the event names the change and the run's status reports it. On CPU, or for the configured rung, nothing is
    planned again."""
    from test_memory import QWEN3_4B

    r = gpu_run(tmp_path, T4_LINE, T4_LINE)
    model = tmp_path / "qwen3-4b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN3_4B))
    started = {}

    def start(rung: str):
        if rung == "vllm":
            raise RuntimeError("vLLM engine failed to start: CUDA out of memory")
        started.update(planned_for_rung(str(model), r.cfg, "decode", rung, events_of["w"]))
        return SimpleNamespace(backend="transformers")

    events_of = {}

    def worker_events(events):
        events_of["w"] = events
        assert planned_for_rung(str(model), r.cfg, "decode", "vllm", events) == {}  # the rung planned for
        _ladder("decode", ["vllm", "hf"], start, events, "none")

    worker_answered(r, worker_events)
    assert started == {"max_model_len": 4096}
    report = finished(r)
    assert report["status"] == "degraded"
    (line,) = [x for x in report["status_reasons"] if "re-planned" in x]
    assert line.startswith("decode engine re-planned for transformers on worker 0: decode.max_model_len 8192 -> 4096")
    cpu = replace(preset("cpu-tiny"), challenges=r.cfg.challenges, out_dir=str(tmp_path / "cpu"))
    assert planned_for_rung(str(model), cpu, "decode", "hf", Events(tmp_path / "cpu-events.jsonl", 0)) == {}


# -- no model answer at all ------------------------------------------------------------------------------------

def program_run(tmp_path: Path, ttt: dict) -> Run:
    """A CPU run in which the program expert verified a program for MIXED's first test input (the right
    answer) and the worker wrote ``ttt`` (the worker's writer)."""
    r = Run(replace(preset("cpu-tiny"), challenges=write_challenges(tmp_path), out_dir=str(tmp_path / "out")))
    r.load()
    solved = solved_tasks()
    write_candidate_file(r.out / "programs.json", {MIXED: [[Candidate(
        solved[MIXED].test[0].output, source="program", program="recolor(2->5)", verified=True)], []]}, "programs")
    wdir = r.out / "work" / "worker0-0"
    write_candidate_file(wdir / "candidates.json", ttt, "ttt", {"worker": 0})
    r.workers.append({"worker": 0, "attempt": 0, "dir": wdir, "tasks": list(r.tasks), "returncode": 0, "reason": "",
                      "train_steps": 1, "views": 1})
    return r


def test_a_run_whose_only_answers_are_the_program_experts_is_fallback_only(tmp_path):
    """Every model candidate was unparsable: the program expert's answer to one test input is the only one in the
    submission. That is not a model run: fallback-only (a save run raises), and the reason says why."""
    unparsable = {RIGHT: [[Candidate(None, view="id")]], MIXED: [[Candidate(None, view="id")], [Candidate(None)]]}
    report = finished(program_run(tmp_path, unparsable))
    assert report["per_task"][MIXED]["attempt_sources"] == [["program", "fallback"], ["fallback", "fallback"]]
    assert report["per_task"][RIGHT]["attempt_sources"] == [["fallback", "fallback"]]
    assert report["status"] == "fallback-only"
    assert report["status_reasons"][0] == ("no task got a model answer: every attempt is the program expert's "
                                           f"(1 task(s): {MIXED}) or the fallback")


def test_one_model_answer_beside_the_program_experts_is_not_fallback_only(tmp_path):
    """The same run with one parsed model answer (RIGHT's): a model run, degraded by the test inputs left on the
    fallback."""
    wrong = np.zeros((2, 2), np.uint8)
    ttt = {RIGHT: [[Candidate(wrong, view="id")]], MIXED: [[Candidate(None, view="id")], [Candidate(None)]]}
    report = finished(program_run(tmp_path, ttt))
    assert report["per_task"][RIGHT]["attempt_sources"] == [["model", "fallback"]]
    assert report["status"] == "degraded"


# -- training data cut for length --------------------------------------------------------------------------------

def test_ttt_examples_left_out_for_length_are_counted_per_task_and_named(tmp_path):
    """A task whose TTT examples were partly longer than train.max_seq_len (the trainer leaves them out,
    ``TrainResult.examples_skipped``; the worker's train event carries the count): the report counts them per
    task and the status names the cut."""
    r = Run(replace(preset("cpu-tiny"), challenges=write_challenges(tmp_path), out_dir=str(tmp_path / "out"),
                    run_programs=False))
    r.load()

    def trained(events: Events) -> None:
        events.emit("train", "ok", task=RIGHT, start=time.time(), steps=4, examples_used=5, examples_skipped=3)
        events.emit("train", "ok", task=MIXED, start=time.time(), steps=4, examples_used=8, examples_skipped=0)

    worker_answered(r, trained)
    report = finished(r)
    assert report["per_task"][RIGHT]["examples_skipped_for_length"] == 3
    assert report["per_task"][MIXED]["examples_skipped_for_length"] == 0
    assert report["status"] == "degraded"
    assert (f"TTT examples longer than train.max_seq_len were left out: 3 in 1 task(s) ({RIGHT}: 3)"
            in report["status_reasons"])
