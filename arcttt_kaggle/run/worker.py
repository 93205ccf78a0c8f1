"""One worker process per GPU (or CPU slot): train adapters, decode with all of them in one engine, score.

    python -m arcttt_kaggle.run.worker WORK_DIR/spec.json

The parent (``pipeline.run``) sets ``CUDA_VISIBLE_DEVICES`` in this process's environment before it starts,
so Unsloth (single-GPU) and vLLM see exactly one device; this module imports neither at import time.
Results travel as files in the worker's folder, each written atomically, so a worker that dies loses only
what it had not yet written:

- ``events.jsonl``: one line per phase/task event (start, end, status, reason): the timeline and the report.
- ``adapters/<task_id>/``: PEFT adapters.
- ``candidates.json``: the candidate file of its tasks, rewritten after each decoding pass.
- ``scores.json``: product-of-experts log-likelihoods (candidates carrying ``extra["view_logprobs"]``).
- ``allocation.json``: first-pass difficulty estimates and the extra views each task got.

Faults (``spec["fault"]``) are injected here for the fault matrix; each is a real failure (a SIGKILL, a raise,
a sleep past the deadline, garbage token ids through the real parser), never a stand-in for an engine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from arcttt_kaggle.arc.candidates import atomic_write_text
from arcttt_kaggle.engines.engine_base import EngineBroken, cuda_context_error  # engine_base loads no engine at import
from .faults import FaultPlan


@dataclass(frozen=True)
class WorkerSpec:
    """What the parent hands one worker (written as JSON next to its outputs)."""

    worker: int
    task_ids: list[str]
    config: dict  # RunConfig.to_dict()
    model_path: str
    work_dir: str
    train_steps: int  # from the plan's rung; 0 = no TTT
    views_per_test: int
    train_deadline: float  # time.time() by which training must stop
    decode_deadline: float  # by which decoding must stop (scoring has the rest)
    deadline: float  # hard end of this worker's work
    extra_view_units: float = 0.0  # planned second-pass budget: extra (view x test input) decodes
    fault: str = ""
    attempt: int = 0  # 0 = first launch; a replacement worker has attempt 1 (with the faults not yet struck)
    profile: str = "kit"  # the prepared model's format profile: the re-plan counts tokens in its layout
    max_adapters: int = 0  # at most this many adapters (the disk's share of this worker; 0 = one per task)

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.__dict__, indent=1))

    @classmethod
    def read(cls, path: str | Path) -> "WorkerSpec":
        return cls(**json.loads(Path(path).read_text()))


class Events:
    """Append-only JSON lines; one short write per event, so a killed worker leaves whole lines."""

    def __init__(self, path: Path, worker: int):
        self.path, self.worker = path, worker

    def emit(self, phase: str, status: str, task: str = "", start: float | None = None, **info: Any) -> None:
        now = time.time()
        rec = {"worker": self.worker, "phase": phase, "status": status, "task": task,
               "start": now if start is None else start, "end": now, **info}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()


EXIT_NO_DECODER = 3  # the worker's exit code when no decoding engine rung started: the parent replaces it
EXIT_ENGINE_BROKEN = 4  # a CUDA error broke the engine's context: nothing more can run here; the parent replaces it


def run_worker(spec: WorkerSpec) -> int:
    # Imports here, after the parent set CUDA_VISIBLE_DEVICES: Unsloth must be imported before transformers
    # and peft to patch them, so the trainer module is the first engine import of this process.
    from .config import RunConfig
    from arcttt_kaggle.arc.data import load_challenges

    cfg = RunConfig.from_dict(spec.config)
    _limit_threads()
    work = Path(spec.work_dir)
    events = Events(work / "events.jsonl", spec.worker)
    faults = FaultPlan.parse(spec.fault)  # a replacement carries only the faults that had not struck yet
    events.emit("worker", "start", pid=os.getpid(), tasks=len(spec.task_ids), attempt=spec.attempt,
                cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    loaded = load_challenges(cfg.challenges, strict=False).tasks
    tasks = {tid: loaded[tid] for tid in spec.task_ids if tid in loaded}

    try:
        return _run_phases(spec, cfg, tasks, events, faults)
    except EngineBroken as e:
        events.emit("worker", "error", reason=f"{e}; the worker ends so the run can replace it")
        return EXIT_ENGINE_BROKEN


def _run_phases(spec: WorkerSpec, cfg, tasks: dict, events: Events, faults: FaultPlan) -> int:
    adapters: dict[str, str] = {}
    if spec.train_steps > 0 and cfg.run_ttt:
        adapters = (_train_isolated if cfg.isolate_training else _train_phase)(spec, cfg, tasks, events, faults)
        spec, cfg = _apply_replan(spec, cfg, tasks, read_events(events.path))
    if "corrupt-adapter" in faults and adapters:
        tid, path = sorted(adapters.items())[int(faults.at("corrupt-adapter")) % len(adapters)]
        _injected(events, "corrupt-adapter", faults, task=tid)
        _corrupt(Path(path))
    events.emit("worker", "decoding")  # training is over: the parent's training watchdog stands down
    candidates = _decode_phase(spec, cfg, tasks, adapters, events, faults)
    if candidates is None:
        events.emit("worker", "error", reason="no decoding engine started (every rung of the ladder failed)")
        return EXIT_NO_DECODER
    if cfg.select.method == "poe" and candidates:
        if cfg.select.poe_views > 0 and time.time() < spec.deadline:
            _score_phase(spec, cfg, tasks, adapters, candidates, events)
        else:
            for tid in tasks:
                events.emit("score", "skipped", task=tid, reason="re-plan left no time for scoring" if
                            cfg.select.poe_views == 0 else "deadline reached before scoring")
    if not cfg.keep_adapters:
        # Disk: /kaggle/working holds ~20 GB; a task's adapter is not needed once it is decoded and scored.
        shutil.rmtree(Path(spec.work_dir) / "adapters", ignore_errors=True)
    events.emit("worker", "done")
    return 0


def _limit_threads() -> None:
    """torch's intra-op threads to the parent's budget (``ARCTTT_THREADS``; OpenMP/BLAS read their env)."""
    n = os.environ.get("ARCTTT_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def _start_trainer(spec: WorkerSpec, cfg, events: Events):
    """The training engine ladder: the configured backend, then PEFT. Each failed rung is an ``engine`` event
    with its exact error; returns None when no rung starts (every task then decodes with the base model)."""
    from arcttt_kaggle.engines.train import Trainer

    rungs = [cfg.train.backend] + (["peft"] if cfg.train.backend != "peft" else [])
    trainer = _ladder("train", rungs, lambda rung: Trainer(spec.model_path, replace(
        cfg.train, backend=rung, steps=spec.train_steps, **planned_for_rung(spec.model_path, cfg, "train", rung, events))),
        events, "none (decode with the base model)")
    if trainer is None:
        events.emit("train", "error", reason="no training engine started: every task decodes with the base model")
    return trainer


def planned_for_rung(model_path: str, cfg, stage: str, rung: str, events: Events) -> dict:
    """The settings a fallback rung starts with. The run's memory plan was made for the configured engines and
    does not hold for another (the transformers decoder holds a whole padded batch's KV cache; PEFT keeps its
    checkpoints on the GPU), so on a GPU the worker plans again for ``rung`` and starts it with what that plan
    lowers in ``stage``'s section (``preflight.memory_overrides``, as the run applies the first plan); an
    ``engine`` ``replanned`` event names each change (the run's status reports it). {} for the configured rung,
    on CPU, or when nothing changes."""
    if rung == getattr(cfg, stage).backend or cfg.device != "cuda" or not cfg.gpu_memory_gib:
        return {}
    from arcttt_kaggle.engines.memory import NO_FIT, ModelShape, plan_memory, run_from_config

    from .preflight import memory_overrides

    plan = plan_memory(ModelShape.from_dir(model_path), replace(run_from_config(cfg), **{f"{stage}_backend": rung}))
    out = {name: value for key, value in memory_overrides(plan, cfg).items()
           for section, _, name in [key.partition(".")] if section == stage and name != "backend"}  # rung is set
    if out or plan.verdict == NO_FIT:
        events.emit("engine", "replanned", stage=stage, rung=rung, settings=out, verdict=plan.verdict,
                    reason="; ".join(plan.changes))
    return out


def _ladder(stage: str, rungs: list[str], start, events: Events, last: str):
    """Walk an engine ladder: ``start(rung)`` for each rung until one starts. Each rung that fails to start is an
    ``engine``/``fallback`` event with its exact error; the one that runs is ``engine``/``ok`` (and the stage's
    ``startup_*`` event). None when no rung starts (``last`` says what happens then)."""
    for i, rung in enumerate(rungs):
        t0 = time.time()
        try:
            engine = start(rung)
        except Exception as e:  # noqa: BLE001 - an engine that fails to start: take the next rung
            events.emit("engine", "fallback", start=t0, stage=stage, rung=rung,
                        next=rungs[i + 1] if i + 1 < len(rungs) else last, error=f"{type(e).__name__}: {e}")
            continue
        events.emit(f"startup_{stage}", "ok", start=t0, backend=engine.backend)
        events.emit("engine", "ok", stage=stage, rung=rung, backend=engine.backend)
        return engine
    return None


def _train_phase(spec: WorkerSpec, cfg, tasks: dict, events: Events, faults: FaultPlan) -> dict[str, str]:
    from .budget import Settings, Throughput
    from .planning import TokenModel, replan
    from arcttt_kaggle.engines.ttt_data import build_ttt_examples

    trainer = _start_trainer(spec, cfg, events)
    if trainer is None:
        return {}
    adapters: dict[str, str] = {}
    steps = spec.train_steps
    train_deadline = spec.train_deadline
    trained, replanned = 0, 0  # re-plans: once the trainer started, once after the first trained tasks
    settings = Settings(steps, spec.views_per_test, cfg.select.poe_views if cfg.select.method == "poe" else 0,
                        cfg.select.poe_top_c, _extra_ratio(spec, tasks))
    try:
        # Cheapest tasks first: under a deadline this trains the most adapters.
        order = sorted(tasks.values(), key=lambda t: (t.num_cells, t.id))
        for n, task in enumerate(order):
            if (n == 0 or trained >= cfg.budget.calibrate_after_tasks) and replanned < 1 + (trained > 0):
                # Re-plan what is left from this run's own measurements (the priors may be far off).
                current = replace(settings, train_steps=steps)
                rp = replan(read_events(events.path), Throughput(**cfg.throughput.__dict__), tasks,
                            [t.id for t in order[n:]], cfg.ttt, cfg.train.batch_size * cfg.train.grad_accum, current,
                            time.time(), spec.deadline, cfg.budget.max_train_share, TokenModel.of(cfg, spec.profile))
                settings, steps, train_deadline = rp.settings, rp.settings.train_steps, rp.train_deadline
                events.emit("replan", "ok", **rp.to_event(current), train_deadline=rp.train_deadline,
                            decode_deadline=rp.decode_deadline)
                replanned += 1
            if spec.max_adapters and trained >= spec.max_adapters:
                # The disk holds no more adapters at once (memory plan): this task decodes with the base model.
                events.emit("train", "skipped", task=task.id, reason=f"disk: this worker's {spec.max_adapters} "
                            f"adapter(s) are trained (the memory plan's limit on adapters alive at once)")
                continue
            if steps == 0 or time.time() >= train_deadline:
                why = "re-plan: no TTT for the remaining tasks" if steps == 0 else "training phase deadline reached"
                events.emit("train", "skipped", task=task.id, reason=why)
                continue
            if faults.strikes("worker-crash", n):
                _injected(events, "worker-crash", faults, task=task.id)
                os.kill(os.getpid(), signal.SIGKILL)  # a worker killed mid-training
            if faults.strikes("train-hang", n):
                _injected(events, "train-hang", faults, task=task.id)
                events.emit("train", "hang", task=task.id, reason="injected fault: train-hang")
                time.sleep(10 ** 6)  # the training child never returns; the worker kills it at its deadline
            ts = time.time()
            try:
                if faults.strikes("task-exception", n):
                    _injected(events, "task-exception", faults, task=task.id)
                    raise RuntimeError("injected fault: task-exception")
                examples = build_ttt_examples(task, cfg.ttt, count_tokens=trainer.fmt.token_count)
                if not examples:
                    raise ValueError("no TTT examples fit the token budget")
                # Per-task cap: twice a fair share of the phase time left, so one large task cannot starve the rest.
                cap = ts + 2.0 * max(0.0, train_deadline - ts) / (len(order) - n)
                res = trainer.train_task(task.id, examples, Path(spec.work_dir) / "adapters" / task.id,
                                         steps=steps, seed=cfg.seed, deadline=min(train_deadline, cap),
                                         **_train_faults(faults, n, events, task.id))
                trained += 1
                info = dict(steps=res.steps_done, tokens=res.tokens_seen, stopped_early=res.stopped_early,
                            loss_first=res.losses[0] if res.losses else None,
                            loss_last=res.losses[-1] if res.losses else None,
                            skipped_steps=getattr(res, "skipped_steps", 0),
                            examples_used=getattr(res, "examples_used", 0),
                            examples_skipped=getattr(res, "examples_skipped", 0))  # longer than train.max_seq_len
                if not getattr(res, "finite", True):
                    events.emit("train", "error", task=task.id, start=ts, **info,
                                reason=f"adapter not used: {getattr(res, 'reason', '') or 'non-finite loss or weights'}")
                    continue
                adapters[task.id] = str(res.adapter_dir)
                events.emit("train", "ok", task=task.id, start=ts, **info)
            except Exception as e:  # noqa: BLE001 - per-task edge: this task decodes with the base model
                if cuda_context_error(e):  # every later step would fail the same way: end the worker
                    raise EngineBroken(f"a CUDA error ended training on task {task.id}: {type(e).__name__}: "
                                       f"{e}"[:600]) from e
                events.emit("train", "error", task=task.id, start=ts, reason=f"{type(e).__name__}: {e}")
    finally:
        trainer.close()
    return adapters


def _train_faults(faults: FaultPlan, n: int, events: Events, task_id: str) -> dict:
    """Keyword arguments of ``Trainer.train_task`` that inject a training fault into task ``n`` when its moment
    is ``n`` (by default each its own task, so several share one run: an exception in a step of task 0, ENOSPC
    saving task 1, a non-finite loss in task 2). Each hook records that its fault struck when it acts (a task
    trained for one step never reaches step 1). Two step faults drawn for one task: the exception wins."""
    import errno

    def struck(name: str) -> None:
        _injected(events, name, faults, task=task_id)

    kw: dict[str, Any] = {}
    if faults.strikes("nonfinite-loss", n):
        def nan_loss(step, loss):
            if step == 0:
                struck("nonfinite-loss")
            return loss * float("nan")
        kw["step_hook"] = nan_loss
    if faults.strikes("step-exception", n):
        def raise_in_step(step, loss):
            if step == 1:
                struck("step-exception")
                raise RuntimeError("injected fault: CUDA out of memory in training step 1 (step-exception)")
            return loss
        kw["step_hook"] = raise_in_step
    if faults.strikes("enospc", n):
        def no_space(path):
            struck("enospc")
            raise OSError(errno.ENOSPC, "injected fault: No space left on device", str(path))
        kw["save_hook"] = no_space
    return kw


def _injected(events: Events, name: str, faults: FaultPlan, **info: Any) -> None:
    """The record that an injected fault struck, written before it acts (a SIGKILL leaves no later chance)."""
    events.emit("fault", "injected", fault=name, moment=faults.at(name), **info)


def _extra_ratio(spec: WorkerSpec, tasks: dict) -> float:
    tests = sum(len(t.test) for t in tasks.values())
    return spec.extra_view_units / max(1, spec.views_per_test * tests)


def _apply_replan(spec: WorkerSpec, cfg, tasks: dict, events: list[dict]):
    """The last in-run re-plan (made in this process or in the training child) applied to what comes next:
    views, the second pass, scoring, and the decode deadline."""
    rp = [e for e in events if e["phase"] == "replan" and e["status"] == "ok"]
    if not rp:
        return spec, cfg
    after, tests = rp[-1]["after"], sum(len(t.test) for t in tasks.values())
    spec = replace(spec, views_per_test=int(after["views_per_test"]),
                   extra_view_units=float(after["extra_view_ratio"]) * int(after["views_per_test"]) * tests,
                   decode_deadline=min(spec.deadline, max(time.time(), float(rp[-1]["decode_deadline"]))))
    if cfg.select.method == "poe":
        cfg = replace(cfg, select=replace(cfg.select, poe_views=int(after["score_views"]),
                                          poe_top_c=int(after["score_top_c"])))
    return spec, cfg


def _corrupt(adapter_dir: Path) -> None:
    """Injected fault 'corrupt-adapter': the weights file of one trained adapter is overwritten with garbage."""
    for f in adapter_dir.glob("*.safetensors"):
        f.write_bytes(b"\x00garbage, not safetensors" * 4)


def _train_child(spec: WorkerSpec, cfg, tasks: dict, events: Events, faults: FaultPlan, out: str) -> None:
    _die_with_parent()
    _limit_threads()
    adapters = _train_phase(spec, cfg, tasks, events, faults)
    atomic_write_text(Path(out), json.dumps(adapters))


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a SIGKILLed worker leaves no child on the GPU)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # not Linux: the parent's process-group kill still covers it


def _train_isolated(spec: WorkerSpec, cfg, tasks: dict, events: Events, faults: FaultPlan) -> dict[str, str]:
    """``_train_phase`` in a spawned child: when it exits the GPU is empty for vLLM. If the child dies or hangs,
    the adapters it saved before are still used (each is written whole before its event)."""
    import multiprocessing as mp

    out = Path(spec.work_dir) / "adapters.json"
    child = mp.get_context("spawn").Process(target=_train_child, args=(spec, cfg, tasks, events, faults, str(out)))
    child.start()
    grace = training_grace(spec.train_deadline, spec.decode_deadline)
    child.join(max(1.0, min(spec.train_deadline + grace, spec.decode_deadline) - time.time()))
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join(10)
    if out.exists() and not hung:
        return json.loads(out.read_text())
    done = [e["task"] for e in read_events(events.path) if e["phase"] == "train" and e["status"] == "ok"]
    why = (f"training process still running {grace:.0f}s after the training deadline: killed"
           if hung else f"training process exited with code {child.exitcode}")
    events.emit("train", "error", reason=f"{why}; keeping the {len(done)} adapters it saved")
    return {t: str(Path(spec.work_dir) / "adapters" / t) for t in done}


def training_grace(train_deadline: float, decode_deadline: float) -> float:
    """Seconds past the training deadline left to the task in flight and its save: a quarter of the decoding
    span, within [5, 60] s. The worker kills its isolated training child then; the parent's watchdog
    (``pipeline.Run._training_watchdog``) waits 30 s longer before it kills the whole worker."""
    return min(60.0, max(5.0, 0.25 * (decode_deadline - train_deadline)))


def read_events(path: Path) -> list[dict]:
    """Events of a worker's ``events.jsonl``; a line cut by a kill is skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _start_decoder(spec: WorkerSpec, cfg, adapters: dict[str, str], events: Events):
    """The decoding engine ladder: the configured backend, then transformers. Each failed rung is an ``engine``
    event with its exact error; None when no rung starts."""
    from arcttt_kaggle.engines.decode import Decoder

    # Every adapter of this worker (plus the zero adapter base-model requests use on CPU) must fit the CPU
    # LoRA cache: with fewer slots vLLM evicts and re-reads adapters from disk, 10-25x slower (measured).
    slots = max(cfg.decode.max_cpu_loras or 0, len(adapters) + 1, cfg.decode.max_loras)
    rungs = [cfg.decode.backend] + (["hf"] if cfg.decode.backend != "hf" else [])
    return _ladder("decode", rungs, lambda rung: Decoder(spec.model_path, replace(
        cfg.decode, backend=rung, max_cpu_loras=slots, **planned_for_rung(spec.model_path, cfg, "decode", rung, events))),
        events, "none (every task keeps its fallback and program answers)")


def _decode_phase(spec: WorkerSpec, cfg, tasks: dict, adapters: dict[str, str], events: Events, faults: FaultPlan):
    """Two decoding passes; returns the candidates, or None when no decoding engine started."""
    from arcttt_kaggle.selection.allocate import allocate, allocation_report, estimate_difficulty
    from arcttt_kaggle.arc.candidates import merge_candidate_sets, write_candidate_file
    from arcttt_kaggle.engines.decode import plan_requests

    decoder = _start_decoder(spec, cfg, adapters, events)
    if decoder is None:
        return None
    cands_path = Path(spec.work_dir) / "candidates.json"
    try:
        _decode_faults(decoder, events, faults, 1)
        m = spec.views_per_test
        reqs = [r for tid, task in tasks.items()
                for r in plan_requests(task, _path(adapters.get(tid)), m, cfg.seed, cfg.decode.keep_background)]
        ts = time.time()
        outs = decoder.generate(reqs, progress=True, deadline=spec.decode_deadline)
        if faults.strikes_in_pass("unparsable", 1):
            _injected(events, "unparsable", faults, pass_=1)
            outs = _garbage(decoder, outs, cfg.seed)
        _failure_events(decoder, events, 1, adapters)
        first = _collect(tasks, reqs, outs)
        _unparsable_pass(events, first, 1)
        pass1_s = time.time() - ts
        write_candidate_file(cands_path, first, "ttt", {"worker": spec.worker, "pass": 1, "adapters": adapters})
        events.emit("decode", "ok", start=ts, pass_=1, requests=len(reqs), adapters=len(adapters),
                    method=cfg.decode.method, **_stats(decoder))

        # Compute-optimal second pass: the planned extra views go to the uncertain tasks (the allocation policy);
        # fewer when the time left before the decode deadline, at the first pass's measured speed, affords fewer.
        est = {tid: estimate_difficulty(tid, first.get(tid, []), m, cfg.allocation) for tid in tasks}
        per_view_s = pass1_s / max(1, len(reqs))
        affordable = max(0.0, (spec.decode_deadline - time.time()) * 0.8 / per_view_s) if reqs else 0.0
        units = min(spec.extra_view_units, affordable)
        extra = allocate(est, units, cfg.allocation)
        atomic_write_text(Path(spec.work_dir) / "allocation.json",
                          json.dumps(allocation_report(est, extra, units), default=str))
        reqs2 = [r for tid, n in extra.items() if n > 0
                 for r in plan_requests(tasks[tid], _path(adapters.get(tid)), n, cfg.seed, cfg.decode.keep_background,
                                        skip=m)]
        if reqs2 and time.time() < spec.decode_deadline:
            _decode_faults(decoder, events, faults, 2)
            ts = time.time()
            outs2 = decoder.generate(reqs2, progress=True, deadline=spec.decode_deadline)
            if faults.strikes_in_pass("unparsable", 2):
                _injected(events, "unparsable", faults, pass_=2)
                outs2 = _garbage(decoder, outs2, cfg.seed + 1)
            _failure_events(decoder, events, 2, adapters)
            second = _collect(tasks, reqs2, outs2)
            _unparsable_pass(events, second, 2)
            merged = merge_candidate_sets(first, second)
            write_candidate_file(cands_path, merged, "ttt", {"worker": spec.worker, "pass": 2, "adapters": adapters})
            events.emit("decode", "ok", start=ts, pass_=2, requests=len(reqs2), method=cfg.decode.method,
                        **_stats(decoder))
            return merged
        return first
    finally:
        decoder.close()


def _score_phase(spec: WorkerSpec, cfg, tasks: dict, adapters: dict[str, str], candidates, events: Events) -> None:
    """Product-of-experts scores of the top voted grids, written as ``extra["view_logprobs"]`` for the parent."""
    from .budget import Settings, task_work, view_tokens
    from arcttt_kaggle.arc.candidates import Candidate, write_candidate_file
    from arcttt_kaggle.engines.format import FormatSpec, layout_of
    from arcttt_kaggle.engines.score_candidates import Scorer
    from arcttt_kaggle.selection.select import select_attempts

    t0 = time.time()
    try:
        scorer = Scorer(spec.model_path, dtype=cfg.decode.dtype, device="cuda" if cfg.device == "cuda" else "cpu",
                        quantization=cfg.decode.quantization)
    except Exception as e:  # noqa: BLE001 - no scorer: selection falls back to voting
        events.emit("score", "error", start=t0, reason=f"scorer failed to start: {type(e).__name__}: {e}")
        return
    events.emit("startup_score", "ok", start=t0)
    scores: dict[str, list[list[Candidate]]] = {}
    try:
        for tid, task in tasks.items():
            if time.time() >= spec.deadline:
                events.emit("score", "skipped", task=tid, reason="deadline reached")
                continue
            ts = time.time()
            per_test: list[list[Candidate]] = [[] for _ in task.test]

            def record(task_, i, grids, views, _per_test=per_test, _adapter=adapters.get(tid)):
                ll = scorer.score(task_, i, grids, views, _path(_adapter))
                for g, row in zip(grids, ll):
                    _per_test[i].append(Candidate(g, source="scorer", extra={
                        "view_logprobs": {v.to_string(): float(x) for v, x in zip(views, row)}}))
                return ll

            try:
                for i in range(len(task.test)):
                    select_attempts(task, i, list(candidates.get(tid, [[]] * len(task.test))[i]), cfg.select,
                                    score_fn=record)
            except Exception as e:  # noqa: BLE001 - per-task edge: this task is selected by voting alone
                events.emit("score", "error", task=tid, start=ts, reason=f"{type(e).__name__}: {e}")
                continue
            scores[tid] = per_test
            # The plan's token count for this task (fewer distinct candidates than C: the rate fit absorbs it)
            prompts, outputs = view_tokens(task, layout_of(FormatSpec(profile=spec.profile)))
            planned = task_work(task, Settings(0, 1, cfg.select.poe_views, cfg.select.poe_top_c), example_tokens=0,
                                batch=1, prompt_tokens_per_view=prompts, output_tokens_per_view=outputs)
            # Written after every task (atomically): the parent's SIGTERM at the deadline loses at most one task.
            write_candidate_file(Path(spec.work_dir) / "scores.json", scores, "scorer", {"worker": spec.worker})
            events.emit("score", "ok", task=tid, start=ts, scored=sum(len(p) for p in per_test),
                        planned_prompt_tokens=planned.score_tokens, planned_output_tokens=planned.score_output_tokens)
    finally:
        scorer.close()


def _failure_events(decoder, events: Events, pass_: int, adapters: dict[str, str]) -> None:
    """The last call's isolated failures (``decode.Decoder.last_failures``: a bad adapter's requests decoded with
    the base model, a request dropped after bisection), one ``decode``/``isolated`` event each for the report.
    A task whose adapter failed leaves ``adapters``: its later passes and its scoring use the base model too."""
    for f in getattr(decoder, "last_failures", []):
        what = "decoded with the base model" if f.action == "base" else "dropped (no candidates)"
        events.emit("decode", "isolated", task=f.task, pass_=pass_, test_index=f.test_index, requests=f.requests,
                    reason=f"{f.reason}; {what}")
        if f.action == "base" and f.adapter is not None:
            adapters.pop(f.task, None)


def _path(p: str | None) -> Path | None:
    return None if p is None else Path(p)


def _collect(tasks: dict, reqs, outs) -> dict:
    out: dict = {tid: [[] for _ in t.test] for tid, t in tasks.items()}
    for r, cands in zip(reqs, outs):
        out[r.task.id][r.test_index].extend(cands)
    return out


def _stats(decoder) -> dict:
    s = getattr(decoder, "stats", None)
    return dict(s) if isinstance(s, dict) else (s.__dict__ if s is not None else {})


def _garbage(decoder, outs, seed: int):
    """Injected fault 'unparsable': replace each output by random token ids run through the real parser."""
    from arcttt_kaggle.arc.candidates import Candidate

    rng = np.random.default_rng(seed)
    fmt = decoder.fmt
    vocab = fmt.digit_ids + [fmt.input_id, fmt.output_id]
    res = []
    for cands in outs:
        new = []
        for c in cands:
            parsed = fmt.parse([int(v) for v in rng.choice(vocab, size=12)] + [fmt.input_id])
            new.append(Candidate(parsed.grid, source=c.source, view=c.view, logprob=c.logprob,
                                 extra={"parse_error": parsed.error, "fault": "unparsable"}))
        res.append(new)
    return res


def _unparsable_pass(events: Events, candidates: dict, decoding_pass: int) -> None:
    """A pass whose every output failed to parse (a broken engine, a tokenizer that does not match the model)
    is an incident; a few unparsable outputs are a weak model's ordinary noise and are only counted per task."""
    grids = [c.grid for per_test in candidates.values() for cs in per_test for c in cs]
    if grids and all(g is None for g in grids):
        events.emit("decode", "unparsable", pass_=decoding_pass,
                    reason=f"all {len(grids)} outputs of decoding pass {decoding_pass} were unparsable")


def _decode_faults(decoder, events: Events, faults: FaultPlan, decoding_pass: int) -> None:
    """Faults that strike before a decoding pass's generate call: a hang, or a broken CUDA context."""
    if faults.strikes_in_pass("decode-hang", decoding_pass):
        _injected(events, "decode-hang", faults, pass_=decoding_pass)
        events.emit("decode", "hang", reason=f"injected fault: decode-hang (pass {decoding_pass})")
        time.sleep(10 ** 6)  # decoding never returns; the parent terminates this worker at its deadline
    if faults.strikes_in_pass("cuda-error", decoding_pass):
        _injected(events, "cuda-error", faults, pass_=decoding_pass)
        _inject_cuda_error(decoder)


def _inject_cuda_error(decoder) -> None:
    """Injected fault 'cuda-error': the decode engine's next call raises what a broken CUDA context raises."""
    real = decoder._engine.run

    def broken(*args, **kw):
        decoder._engine.run = real
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected fault: cuda-error)")

    decoder._engine.run = broken


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m arcttt_kaggle.run.worker SPEC.json", file=sys.stderr)
        return 2
    spec = WorkerSpec.read(argv[0])
    try:
        return run_worker(spec)
    except Exception:  # noqa: BLE001 - the process edge: log the traceback where the parent reads it
        Events(Path(spec.work_dir) / "events.jsonl", spec.worker).emit("worker", "error", reason=traceback.format_exc())
        return 1


if __name__ == "__main__":
    sys.exit(main())
