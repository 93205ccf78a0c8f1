"""The dry run when engines and training fail: the engine ladder, training-step faults, a hung and a crashed
training child.

Slow (minutes on 2 cores): marked ``slow``; CI runs them.
"""

from __future__ import annotations

import json

import pytest

from arcttt_kaggle.arc.submission import validate_submission_file
from arcttt_kaggle.kaggle.dryrun import dry_run

from dry_run_common import CHALLENGES, FAST, SOLUTIONS, events, fault_run, reasons

pytestmark = pytest.mark.slow


def test_engine_ladder_a_killed_program_expert_and_an_adapter_cap(tmp_path):
    """vLLM and Unsloth really fail to import (a broken package first on the path): the workers train with PEFT
    and decode with transformers, and the report names each rung and the exact import error. The program
    expert is SIGKILLed: no program answers, and the report says so. The run may keep 2 adapters at once
    (``max_adapters``, what the memory plan sets when the disk holds no more): the worker trains the 2 cheapest
    tasks and the others decode with the base model, each with the reason."""
    report = fault_run(tmp_path, "no-vllm,no-unsloth,programs-killed", {"max_adapters": 2})
    assert report["backends"]["train"].startswith("peft") and report["backends"]["decode"].startswith("transformers")
    rungs = {(e["stage"], e["rung"]) for e in events(tmp_path) if e["phase"] == "engine" and e["status"] == "ok"}
    assert rungs == {("train", "peft"), ("decode", "hf")}
    trained = [e["task"] for e in events(tmp_path) if e["phase"] == "train" and e["status"] == "ok"]
    capped = [e["task"] for e in events(tmp_path) if e["phase"] == "train" and e["status"] == "skipped"
              and e["reason"].startswith("disk: this worker's 2 adapter(s) are trained")]
    assert len(trained) == 2 and sorted(trained + capped) == sorted(t for t, v in report["per_task"].items()
                                                                    if v["attempted"])
    assert sorted(t for t, v in report["per_task"].items() if v["adapter"]) == sorted(trained)
    assert all(t["candidates"] > 0 for tid, t in report["per_task"].items() if t["attempted"])
    assert report["status"] == "degraded"
    text = "\n".join(report["status_reasons"])
    assert "train engine fell back (rung unsloth)" in text and "injected fault no-unsloth" in text
    assert "decode engine fell back (rung vllm)" in text and "injected fault no-vllm" in text
    assert "program expert" in text
    assert report["programs"]["tasks_with_verified_program"] == 0


def test_training_faults_share_one_run(tmp_path):
    """An exception inside a training step (as an OOM), a non-finite loss, ENOSPC while saving an adapter and a
    corrupt adapter file, each on its own task: every task still decodes (with the base model where its
    adapter is unusable), the worker is not replaced, and each fault is named."""
    report = fault_run(tmp_path, "step-exception,enospc,nonfinite-loss,corrupt-adapter")
    assert report["status"] == "degraded"
    assert [w["returncode"] for w in report["workers"]] == [0]
    assert all(t["candidates"] > 0 for t in report["per_task"].values() if t["attempted"])
    text = "\n".join(report["status_reasons"] + reasons(report))
    assert "CUDA out of memory in training step 1" in text
    assert "No space left on device" in text
    assert "non-finite" in text.lower()
    isolated = [e for e in events(tmp_path) if e["phase"] == "decode" and e["status"] == "isolated"]
    assert isolated and "base model" in isolated[0]["reason"], isolated


@pytest.mark.parametrize("isolated", [True, False], ids=["in-a-child", "in-the-worker"])
def test_a_hung_training_is_killed_and_decoding_goes_on(tmp_path, isolated):
    """A training step that never returns. In a child process (GPU presets) the worker kills the child after its
    training deadline and decodes. In the worker itself (the CPU preset) the parent's watchdog kills the worker
    once it has been silent for 60 s and a replacement decodes its tasks without TTT (found by the soak: the hung worker used to hold
    its tasks to the work deadline, with no model answer). The hang lasts to the training deadline; 150 s
    leaves decoding room after the kill on a loaded machine."""
    report = fault_run(tmp_path, "train-hang", {"isolate_training": isolated}, budget=150.0 if isolated else 200.0)
    if isolated:
        assert [w["returncode"] for w in report["workers"]] == [0]
        assert any("killed" in e.get("reason", "") for e in events(tmp_path) if e["phase"] == "train")
    else:
        assert [(w["attempt"], w["returncode"]) for w in report["workers"]] == [(0, -9), (1, 0)]
        assert any("worker 0 silent for" in r and "while training (hung): killed" in r
                   for r in report["status_reasons"]), report["status_reasons"]
    assert all(t["candidates"] > 0 for t in report["per_task"].values() if t["attempted"])


def test_isolated_training_survives_a_training_crash(tmp_path):
    """GPU presets train in a child process; a crash there costs only the adapters not yet saved."""
    report = dry_run(challenges=CHALLENGES, solutions=SOLUTIONS, budget_seconds=240, out_dir=tmp_path,
                     fault="worker-crash", overrides={**FAST, "isolate_training": True})
    assert validate_submission_file(tmp_path / "submission.json", CHALLENGES) == []
    assert [w["returncode"] for w in report["workers"]] == [0]  # the worker itself lived on and decoded
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e["phase"] == "train" and "training process exited with code" in e.get("reason", "") for e in events)
    assert sum(t["adapter"] for t in report["per_task"].values()) == 1  # the adapter saved before the kill is used