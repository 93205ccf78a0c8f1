"""The run's control plane without the engines: fresh state, thread budgets, process groups, the in-run re-plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from arcttt_kaggle.run.budget import Settings, Throughput
from arcttt_kaggle.run.config import CPU_TINY_THROUGHPUT, preset
from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
from arcttt_kaggle.run.pipeline import RUN_ARTIFACTS, _kill_group, clear_previous_run, thread_budget, thread_env
from arcttt_kaggle.run.planning import replan, task_works
from arcttt_kaggle.run.worker import WorkerSpec, _apply_replan

TASKS = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json").tasks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _pid_from(pidfile: Path, seconds: float) -> int:
    """The pid a child writes into ``pidfile`` once it is ready, waiting up to ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    return int(pidfile.read_text())


def _gone(pid: int, seconds: float = 5.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


# -- fresh state --------------------------------------------------------------------------------------------------

def test_a_new_run_removes_every_artifact_of_the_previous_one_and_nothing_else(tmp_path):
    for name in RUN_ARTIFACTS:
        if name == "work":
            (tmp_path / "work" / "worker0-0").mkdir(parents=True)
            (tmp_path / "work" / "worker0-0" / "candidates.json").write_text("{}")
        else:
            (tmp_path / name).write_text("old")
    (tmp_path / "tiny-model").mkdir()
    (tmp_path / "notes.txt").write_text("the user's")
    removed = clear_previous_run(tmp_path)
    assert sorted(removed) == sorted(RUN_ARTIFACTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "tiny-model"]
    assert clear_previous_run(tmp_path) == []


# -- CPU budget ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cores, workers, expert, device, want", [
    (2, 1, 1, "cpu", {"worker": 2, "expert": 1}),   # this box: the worker keeps both cores, the expert one thread
    (4, 2, 2, "cuda", {"worker": 1, "expert": 1}),  # Kaggle 2xT4: 4 vCPUs, two GPU workers beside a 2-process expert
    (8, 4, 2, "cuda", {"worker": 1, "expert": 1}),  # 4xL4
    (1, 2, 1, "cuda", {"worker": 1, "expert": 1}),  # never below one thread
    (16, 2, 2, "cuda", {"worker": 7, "expert": 1}),
])
def test_thread_budget(cores, workers, expert, device, want):
    assert thread_budget(cores, workers, expert, device) == want


def test_thread_env_caps_every_threading_library():
    env = thread_env(3)
    assert {env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ARCTTT_THREADS")} == {"3"}
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


# -- processes ----------------------------------------------------------------------------------------------------

def test_killing_a_worker_group_kills_its_children(tmp_path):
    """A worker leads its own session; the group kill reaches a child it started (a training child)."""
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time, pathlib\n"
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"pathlib.Path({str(pidfile)!r}).write_text(str(c.pid))\n"
        "time.sleep(600)\n")], start_new_session=True)
    child = _pid_from(pidfile, 10.0)
    assert _alive(child)
    _kill_group(proc)
    proc.wait(timeout=10)
    assert _gone(child)
    _kill_group(proc)  # a second kill of a gone group is harmless


def test_a_training_child_dies_with_its_sigkilled_worker(tmp_path):
    """PR_SET_PDEATHSIG: even outside the parent's group kill, a SIGKILLed worker leaves no training child."""
    pidfile = tmp_path / "child.pid"
    code = (
        "import multiprocessing as mp, pathlib, time\n"
        "from arcttt_kaggle.run.worker import _die_with_parent\n"
        "import os\n"
        "def child():\n"
        "    _die_with_parent()\n"
        f"    pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid()))  # ready: the death signal is armed\n"
        "    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=child)\n"
        "    p.start()\n"
        "    time.sleep(600)\n")
    script = tmp_path / "w.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)])
    child = _pid_from(pidfile, 60.0)  # a spawned child imports the package before it is ready
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _gone(child)


# -- in-run re-planning -------------------------------------------------------------------------------------------

def _train_events(throughput: Throughput, tasks, steps: int, slow: float, t0: float = 1000.0) -> list[dict]:
    """Train events of the first two tasks as a machine ``slow`` times slower than ``throughput`` would log."""
    cfg = preset("cpu-tiny")
    works = task_works({t.id: t for t in tasks}, cfg.ttt, cfg.train.batch_size * cfg.train.grad_accum,
                       Settings(steps, 4, 2, 4))
    out, t = [{"worker": 0, "phase": "startup_train", "status": "ok", "task": "", "start": t0,
               "end": t0 + throughput.train_startup_s * slow}], t0 + throughput.train_startup_s * slow
    for w in works:
        secs = (w.train_tokens / throughput.train_tokens_per_s + w.train_steps * throughput.train_step_s
                + throughput.per_task_overhead_s) * slow
        out.append({"worker": 0, "phase": "train", "status": "ok", "task": w.task_id, "start": t, "end": t + secs,
                    "steps": w.train_steps, "tokens": w.train_tokens})
        t += secs
    return out


def _replan_after(slow: float, available: float):
    cfg = preset("cpu-tiny")
    ids = sorted(TASKS)
    events = _train_events(CPU_TINY_THROUGHPUT, [TASKS[i] for i in ids[:2]], 24, slow)
    now = events[-1]["end"]
    current = Settings(24, 4, 2, 4, 1.0)
    return replan(events, CPU_TINY_THROUGHPUT, TASKS, ids[2:], cfg.ttt, 1, current, now, now + available, 0.6), now


def test_replan_keeps_the_settings_when_the_priors_were_right():
    rp, now = _replan_after(slow=1.0, available=120.0)
    assert rp.fits and rp.settings.rung == "full" and rp.settings.train_steps == 24
    assert now < rp.train_deadline <= rp.decode_deadline <= now + 120.0


def test_replan_cuts_effort_when_the_machine_is_three_times_slower_than_the_priors():
    """Priors 3x too optimistic: the fitted model sees it from two trained tasks and walks down the ladder, and
    decoding (not yet measured) is assumed 3x slower too."""
    fast, now_fast = _replan_after(slow=1.0, available=30.0)
    slow, now_slow = _replan_after(slow=3.0, available=30.0)
    assert fast.settings.rung == "full"
    assert slow.settings.rung != "full" and slow.settings.train_steps < 24
    assert slow.throughput.train_tokens_per_s == pytest.approx(CPU_TINY_THROUGHPUT.train_tokens_per_s / 3, rel=0.05)
    assert slow.throughput.decode_output_tokens_per_s == pytest.approx(
        CPU_TINY_THROUGHPUT.decode_output_tokens_per_s / 3, rel=0.05)
    assert sum(slow.predicted.values()) <= 30.0 or not slow.fits


def test_a_slow_first_task_alone_does_not_slow_the_forecast():
    """The first trained task pays the trainer's warm-up: 10x slow, then a second task at the priors' speed. The
    forecast for what is not measured yet (decoding) stays at the priors'."""
    cfg = preset("cpu-tiny")
    ids = sorted(TASKS)
    warm = _train_events(CPU_TINY_THROUGHPUT, [TASKS[ids[0]]], 24, 10.0)
    rest = _train_events(CPU_TINY_THROUGHPUT, [TASKS[ids[1]]], 24, 1.0, t0=warm[-1]["end"])[1:]
    events = warm + rest
    now = events[-1]["end"]
    rp = replan(events, CPU_TINY_THROUGHPUT, TASKS, ids[2:], cfg.ttt, 1, Settings(24, 4, 2, 4, 1.0), now, now + 120.0,
                0.6)
    assert rp.throughput.decode_output_tokens_per_s == pytest.approx(CPU_TINY_THROUGHPUT.decode_output_tokens_per_s)
    assert rp.settings.rung == "full"


def test_a_replan_event_applies_to_views_the_second_pass_scoring_and_the_decode_deadline():
    cfg = preset("cpu-tiny")
    ids = sorted(TASKS)[:3]
    tasks = {i: TASKS[i] for i in ids}
    tests = sum(len(t.test) for t in tasks.values())
    now = time.time()
    spec = WorkerSpec(0, ids, cfg.to_dict(), "m", "w", 24, 4, now + 10, now + 50, now + 60, extra_view_units=4.0 * tests)
    after = Settings(0, 2, 2, 4, 0.5, rung="no-ttt,views=2").to_dict()
    ev = [{"phase": "replan", "status": "ok", "after": after, "decode_deadline": now + 40}]
    spec2, cfg2 = _apply_replan(spec, cfg, tasks, ev)
    assert spec2.views_per_test == 2 and spec2.extra_view_units == pytest.approx(0.5 * 2 * tests)
    assert spec2.decode_deadline == pytest.approx(now + 40)
    assert cfg2.select.poe_views == 2 and cfg2.select.poe_top_c == 4
    assert _apply_replan(spec, cfg, tasks, []) == (spec, cfg)
    late = [{"phase": "replan", "status": "ok", "after": after, "decode_deadline": now + 999}]
    assert _apply_replan(spec, cfg, tasks, late)[0].decode_deadline == spec.deadline  # never past the worker's end


def test_a_slow_trainer_start_alone_already_slows_the_forecast():
    """Before any task: a trainer start-up 3x the prior is taken as a 3x slower machine for what is not measured
    (decoding, scoring); a faster start-up never makes the forecast more optimistic."""
    cfg = preset("cpu-tiny")
    p = CPU_TINY_THROUGHPUT
    for factor, want in ((3.0, 3.0), (0.5, 1.0)):
        ev = [{"worker": 0, "phase": "startup_train", "status": "ok", "task": "", "start": 0.0,
               "end": p.train_startup_s * factor}]
        rp = replan(ev, p, TASKS, sorted(TASKS), cfg.ttt, 1, Settings(24, 4, 2, 4, 1.0), 100.0, 700.0, 0.6)
        assert rp.throughput.decode_output_tokens_per_s == pytest.approx(p.decode_output_tokens_per_s / want)
        assert rp.throughput.decode_startup_s == pytest.approx(p.decode_startup_s * want)
