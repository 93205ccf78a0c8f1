"""Pretraining under torchrun as a specification: the same run at any world size (2 Gloo processes reach the weights
of one plain process, a NaN on one rank is skipped by all), rank 0 alone writes, a rank that dies ends the job by
name and leaves a checkpoint that resumes at another world size, and the joint test-time stage runs the same code
on 2 processes. Every run is arc-nano on the sample tasks, a few thousand tokens; the one-process reference is
shared (module fixture)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
from arcttt_kaggle.pretrain.corpus import Batch
from arcttt_kaggle.pretrain.distributed import FAULT_ENV, Faults, labelled_tokens, rank_batch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = package_sample_dir() / "arc-agi_test_challenges.json"
# ~5 steps of ~1.8k tokens; a checkpoint after every step, so the killed run's last one is known
ARGS = ["pretrain", "--data", str(SAMPLE), "--shape", "arc-nano", "--tokens", "8000", "--max-seq-len",
        "1024", "--tokens-per-batch", "2048", "--examples-per-task", "4", "--lr", "3e-3", "--checkpoint-minutes",
        "1e-6"]
NAN = "nan-at-step-2"  # every run of this file: the last rank's loss of step 2 is NaN (rank 1 of 2, rank 0 of 1)

# Rank != 0 must not write under the run's folder: an audit hook (Python's own events: open for writing, mkdir,
# rename/replace, remove, rmtree) logs every such attempt of each rank to a file beside it.
AUDIT = '''
import os, sys
_out, _rank = os.environ.get("ARCTTT_AUDIT_OUT"), os.environ.get("RANK")
if _out and _rank is not None:
    _out, _log, _busy = os.path.realpath(_out), os.environ["ARCTTT_AUDIT_LOG"] + "." + _rank, []
    def _under(p):
        try:
            return isinstance(p, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(p)).startswith(_out)
        except Exception:
            return False
    def _hook(event, args):
        if _busy:
            return
        if event == "open":
            mode, flags = args[1], args[2] or 0
            write = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            hit = write and _under(args[0])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            hit = _under(args[0])
        elif event == "os.rename":
            hit = _under(args[0]) or _under(args[1])
        else:
            return
        if hit:
            _busy.append(1)
            with open(_log, "a") as f:
                f.write(f"{event} {args[:2]}\\n")
            _busy.pop()
    sys.addaudithook(_hook)
'''


def torchrun(args: list[str], env: dict, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(ROOT / "build_submission.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True,
                          text=True, timeout=timeout)


def in_process(args: list[str]) -> None:
    """build_submission.py in this (plain) process, with the file's NaN fault."""
    sys.path.insert(0, str(ROOT))
    try:
        import build_submission
    finally:
        sys.path.remove(str(ROOT))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAULT_ENV, NAN)
        assert build_submission.main(args) == 0


def weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(folder / "model.safetensors")


def assert_same_weights(a: Path, b: Path, rel: float = 1e-4) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        err = float(np.abs(wa[k] - wb[k]).max() / max(np.abs(wa[k]).max(), 1e-12))
        assert err < rel, f"{k}: relative difference {err:.2e}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run in one plain process (no process group): (folder, record)."""
    import torch.distributed as dist

    out = tmp_path_factory.mktemp("ddp") / "one"
    in_process([*ARGS, "--out", str(out)])
    assert not dist.is_initialized()
    return out, json.loads((out / "pretrain.json").read_text())


def test_each_rank_takes_its_rows_of_every_global_batch_and_an_empty_slice_adds_nothing():
    ids = np.arange(5 * 6).reshape(5, 6)
    mask = np.ones_like(ids)
    mask[0, 4:] = mask[2, 3:] = mask[4, 2:] = 0  # rows 0, 2, 4 are shorter than 6
    labels = np.where(mask == 1, ids, -100)
    batch = Batch(ids, labels, mask, int(mask.sum()))
    parts = [rank_batch(batch, r, 2, pad_id=0) for r in range(2)]
    assert [p.input_ids.shape for p in parts] == [(3, 4), (2, 6)]  # rows 0,2,4 cut to their longest row
    assert sum(p.tokens for p in parts) == batch.tokens
    assert labelled_tokens(batch) == sum(int((p.labels[:, 1:] != -100).sum()) for p in parts)
    assert rank_batch(batch, 0, 1, pad_id=0) is batch
    empty = rank_batch(Batch(ids[:1], labels[:1], mask[:1], 4), 1, 2, pad_id=7)
    assert empty.input_ids.tolist() == [[7]] and empty.labels.tolist() == [[-100]] and empty.tokens == 0


def test_fault_specs_parse_and_unknown_ones_are_refused(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "kill-rank-1-at-step-3, nan-at-step-2")
    assert Faults.from_env() == Faults(((1, 3),), (2,))
    monkeypatch.setenv(FAULT_ENV, "explode")
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        Faults.from_env()


def test_two_gloo_processes_reach_the_one_process_weights_and_only_rank_0_writes(reference, tmp_path):
    ref, one = reference
    assert one["world_size"] == 1 and one["distributed"]["backend"] == "none (one process)"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT)
    out = tmp_path / "two"
    log = tmp_path / "writes"
    r = torchrun([*ARGS, "--out", str(out)], {FAULT_ENV: NAN, "PYTHONPATH": str(hook), "ARCTTT_AUDIT_OUT": str(out),
                                              "ARCTTT_AUDIT_LOG": str(log)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two = json.loads((out / "pretrain.json").read_text())
    assert two["world_size"] == 2 and two["distributed"]["backend"] == "gloo" and not two["distributed"]["fsdp"]
    assert (two["steps"], two["tokens_seen"]) == (one["steps"], one["tokens_seen"]) and two["steps"] >= 4
    assert one["skipped_steps"] == two["skipped_steps"] == 1  # rank 1's NaN at step 2 was skipped by both ranks
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    assert_same_weights(ref, out)
    d = two["distributed"]
    assert d["tokens_per_second_per_rank"] == pytest.approx(d["tokens_per_second"] / 2, rel=1e-3)
    assert [p["rank"] for p in d["per_rank_batch"]] == [0, 1]
    assert sum(p["rows"] for p in d["per_rank_batch"]) == pytest.approx(d["global_batch"]["rows"], abs=0.02)
    assert d["global_batch"] == one["distributed"]["global_batch"]  # the global batch is the world's, not the rank's
    assert (tmp_path / "writes.0").read_text().count("os.rename") >= 5  # the hook sees rank 0's writes ...
    assert not (tmp_path / "writes.1").exists()  # ... and none of rank 1's
    assert "data parallel: 2 ranks (gloo, DDP)" in r.stdout


def test_a_killed_rank_ends_the_job_by_name_and_the_checkpoint_resumes_in_one_process(reference, tmp_path):
    from transformers import AutoModelForCausalLM

    ref, one = reference
    out = tmp_path / "cut"
    r = torchrun([*ARGS, "--out", str(out)], {FAULT_ENV: f"{NAN},kill-rank-1-at-step-3"})
    text = r.stdout + r.stderr
    assert r.returncode != 0
    root = text[text.index("Root Cause"):]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", root) and "SIGKILL" in root, root  # torchrun names the rank
    assert "pretrain: rank 0 of 2 stops" in text  # and the survivor says what is left
    ck = out / "checkpoint"
    state = json.loads((ck / "state.json").read_text())["state"]
    assert state["step"] == 2  # rank 0 could not pass step 3's exchange without rank 1
    AutoModelForCausalLM.from_pretrained(ck)  # the last checkpoint loads
    in_process([*ARGS, "--out", str(out), "--resume"])  # resumed by one process
    resumed = json.loads((out / "pretrain.json").read_text())
    assert resumed["world_size"] == 1
    assert (resumed["steps"], resumed["tokens_seen"]) == (one["steps"], one["tokens_seen"])
    assert_same_weights(ref, out)


def test_the_joint_stage_trains_on_two_gloo_processes_through_torchrun(tmp_path):
    from arcttt_kaggle.pretrain.shapes import build_arc_model
    from arcttt_kaggle.run.joint import JointConfig, run_joint_stage

    d = package_sample_dir()
    loaded = load_challenges(d / "arc-agi_test_challenges.json", solutions=d / "arc-agi_test_solutions.json").tasks
    tasks = [loaded[t] for t in sorted(loaded)[:3]]
    nano = build_arc_model(tmp_path / "nano", "arc-nano", "kit", seed=0)
    cfg = JointConfig(enabled=True, epochs=1, examples_per_task=4, learning_rate=3e-3, max_seq_len=1024,
                      tokens_per_batch=2048, startup_seconds=60)
    logs = []
    outcome = run_joint_stage(tasks, nano, tmp_path / "joint" / "model", cfg, 20, env={**os.environ,
                              "OMP_NUM_THREADS": "1"}, device="cpu", nproc=2, log=lambda *a: logs.append(a))
    assert outcome.source == "joint", (outcome.reason, (tmp_path / "joint" / "joint.log").read_text()[-3000:])
    s = outcome.summary
    assert s["world_size"] == 2 and s["mode"] == "full" and s["steps"] >= 1 and np.isfinite(s["final_loss"])
    rec = json.loads((tmp_path / "joint" / "model" / "pretrain.json").read_text())
    assert rec["distributed"]["backend"] == "gloo" and len(rec["distributed"]["per_rank_batch"]) == 2
    assert (tmp_path / "joint" / "model" / "arc_model.json").exists()  # rank 0 copied the model's records


@pytest.mark.slow
def test_fsdp2_on_two_gloo_processes_reaches_the_same_weights_and_its_checkpoint_is_plain(reference, tmp_path):
    import torch

    ref, one = reference
    out = tmp_path / "fsdp"
    r = torchrun([*ARGS, "--out", str(out), "--fsdp"], {FAULT_ENV: NAN})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads((out / "pretrain.json").read_text())
    assert rec["world_size"] == 2 and rec["distributed"]["fsdp"]
    assert rec["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    assert_same_weights(ref, out)
    a = torch.load(ref / "checkpoint" / "optimizer.pt")
    b = torch.load(out / "checkpoint" / "optimizer.pt")
    assert a["param_groups"] == b["param_groups"] and sorted(a["state"]) == sorted(b["state"])
