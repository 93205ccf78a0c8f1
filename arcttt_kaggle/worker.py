"""One worker process per GPU (or CPU slot): train adapters, decode with all of them in one engine, score.

    python -m arcttt_kaggle.worker WORK_DIR/spec.json

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
import signal
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np


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
    attempt: int = 0  # 0 = first launch; a replacement worker has attempt 1 (faults fire on attempt 0 only)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=1))

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


def run_worker(spec: WorkerSpec) -> int:
    # Imports here, after the parent set CUDA_VISIBLE_DEVICES: Unsloth must be imported before transformers
    # and peft to patch them, so the trainer module is the first engine import of this process.
    from .config import RunConfig
    from .data import load_challenges

    cfg = RunConfig.from_dict(spec.config)
    work = Path(spec.work_dir)
    events = Events(work / "events.jsonl", spec.worker)
    fault = spec.fault if spec.attempt == 0 else ""
    events.emit("worker", "start", pid=os.getpid(), tasks=len(spec.task_ids), attempt=spec.attempt,
                cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    loaded = load_challenges(cfg.challenges, strict=False).tasks
    tasks = {tid: loaded[tid] for tid in spec.task_ids if tid in loaded}

    adapters: dict[str, str] = {}
    if spec.train_steps > 0 and cfg.run_ttt:
        adapters = (_train_isolated if cfg.isolate_training else _train_phase)(spec, cfg, tasks, events, fault)
    candidates = _decode_phase(spec, cfg, tasks, adapters, events, fault)
    if cfg.select.method == "poe" and candidates and time.time() < spec.deadline:
        _score_phase(spec, cfg, tasks, adapters, candidates, events)
    events.emit("worker", "done")
    return 0


def _train_phase(spec: WorkerSpec, cfg, tasks: dict, events: Events, fault: str) -> dict[str, str]:
    from .train import Trainer
    from .ttt_data import build_ttt_examples

    t0 = time.time()
    try:
        trainer = Trainer(spec.model_path, replace(cfg.train, steps=spec.train_steps))
    except Exception as e:  # noqa: BLE001 - the engine failed to start: decode every task with the base model
        events.emit("train", "error", start=t0, reason=f"trainer failed to start: {e!r}")
        return {}
    events.emit("startup_train", "ok", start=t0, backend=trainer.backend)
    adapters: dict[str, str] = {}
    steps = spec.train_steps
    measured: list[tuple[int, float]] = []  # (examples' tokens seen, seconds) of trained tasks
    try:
        # Cheapest tasks first: under a deadline this trains the most adapters.
        order = sorted(tasks.values(), key=lambda t: (t.num_cells, t.id))
        for n, task in enumerate(order):
            if len(measured) == cfg.budget.calibrate_after_tasks:
                steps = _calibrated_steps(steps, measured, order[n:], spec.train_deadline)
                events.emit("calibrate", "ok", steps=steps, tokens_per_s=sum(t for t, _ in measured) / sum(s for _, s in measured))
            if time.time() >= spec.train_deadline:
                events.emit("train", "skipped", task=task.id, reason="training phase deadline reached")
                continue
            if fault == "worker-crash" and n == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # a worker killed mid-training
            ts = time.time()
            try:
                if fault == "task-exception" and n == 0:
                    raise RuntimeError("injected fault: task-exception")
                examples = build_ttt_examples(task, cfg.ttt, count_tokens=trainer.fmt.token_count)
                if not examples:
                    raise ValueError("no TTT examples fit the token budget")
                # Per-task cap: twice a fair share of the phase time left, so one large task cannot starve the rest.
                cap = ts + 2.0 * max(0.0, spec.train_deadline - ts) / (len(order) - n)
                res = trainer.train_task(task.id, examples, Path(spec.work_dir) / "adapters" / task.id,
                                         steps=steps, seed=cfg.seed, deadline=min(spec.train_deadline, cap))
                adapters[task.id] = str(res.adapter_dir)
                measured.append((res.tokens_seen, time.time() - ts))
                events.emit("train", "ok", task=task.id, start=ts, steps=res.steps_done, tokens=res.tokens_seen,
                            loss_first=res.losses[0] if res.losses else None,
                            loss_last=res.losses[-1] if res.losses else None, stopped_early=res.stopped_early)
            except Exception as e:  # noqa: BLE001 - per-task edge: this task decodes with the base model
                events.emit("train", "error", task=task.id, start=ts, reason=f"{type(e).__name__}: {e}")
    finally:
        trainer.close()
    return adapters


def _train_child(spec: WorkerSpec, cfg, tasks: dict, events: Events, fault: str, out: str) -> None:
    adapters = _train_phase(spec, cfg, tasks, events, fault)
    Path(out).write_text(json.dumps(adapters))


def _train_isolated(spec: WorkerSpec, cfg, tasks: dict, events: Events, fault: str) -> dict[str, str]:
    """``_train_phase`` in a spawned child: when it exits the GPU is empty for vLLM. If the child dies, the
    adapters it saved before dying are still used (each is written whole before its event)."""
    import multiprocessing as mp

    out = Path(spec.work_dir) / "adapters.json"
    child = mp.get_context("spawn").Process(target=_train_child, args=(spec, cfg, tasks, events, fault, str(out)))
    child.start()
    child.join(max(1.0, spec.train_deadline - time.time() + 60.0))
    if child.is_alive():
        child.kill()
        child.join()
    if out.exists():
        return json.loads(out.read_text())
    done = [e["task"] for e in read_events(events.path) if e["phase"] == "train" and e["status"] == "ok"]
    events.emit("train", "error", reason=f"training process exited with code {child.exitcode}; "
                                         f"keeping the {len(done)} adapters it saved")
    return {t: str(Path(spec.work_dir) / "adapters" / t) for t in done}


def read_events(path: Path) -> list[dict]:
    """Events of a worker's ``events.jsonl``; a line cut by a kill is skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _calibrated_steps(steps: int, measured: list[tuple[int, float]], left: list, deadline: float) -> int:
    """Fewer TTT steps when the measured speed says the remaining tasks would overrun the training deadline.

    The remaining tasks are extrapolated at the measured mean seconds per task (tasks are trained cheapest
    first, so this errs short, and the per-task deadline still stops a long one). Steps never go up (the plan
    already chose them) nor below 1.
    """
    secs = sum(s for _, s in measured)
    if secs <= 0 or not left:
        return steps
    per_task = secs / len(measured)
    predicted = per_task * len(left)
    available = max(0.0, deadline - time.time())
    if predicted <= available:
        return steps
    return max(1, int(steps * available / predicted))


def _decode_phase(spec: WorkerSpec, cfg, tasks: dict, adapters: dict[str, str], events: Events, fault: str):
    from .allocate import allocate, allocation_report, estimate_difficulty
    from .candidates import merge_candidate_sets, write_candidate_file
    from .decode import Decoder, plan_requests

    t0 = time.time()
    try:
        # Every adapter of this worker (plus the zero adapter base-model requests use on CPU) must fit the CPU
        # LoRA cache: with fewer slots vLLM evicts and re-reads adapters from disk, 10-25x slower (measured).
        slots = max(cfg.decode.max_cpu_loras or 0, len(adapters) + 1, cfg.decode.max_loras)
        decoder = Decoder(spec.model_path, replace(cfg.decode, max_cpu_loras=slots))
    except Exception as e:  # noqa: BLE001 - no decoder: every task keeps its fallback (and program answers)
        events.emit("decode", "error", start=t0, reason=f"decoder failed to start: {e!r}")
        return {}
    events.emit("startup_decode", "ok", start=t0, backend=decoder.backend)
    cands_path = Path(spec.work_dir) / "candidates.json"
    try:
        if fault == "decode-hang":
            events.emit("decode", "hang", reason="injected fault: decode-hang")
            time.sleep(10 ** 6)  # decoding never returns; the parent terminates this worker at its deadline
        m = spec.views_per_test
        reqs = [r for tid, task in tasks.items()
                for r in plan_requests(task, _path(adapters.get(tid)), m, cfg.seed, cfg.decode.keep_background)]
        ts = time.time()
        outs = decoder.generate(reqs, progress=True, deadline=spec.decode_deadline)
        if fault == "unparsable":
            outs = _garbage(decoder, outs, cfg.seed)
        first = _collect(tasks, reqs, outs)
        pass1_s = time.time() - ts
        write_candidate_file(cands_path, first, "ttt", {"worker": spec.worker, "pass": 1, "adapters": adapters})
        events.emit("decode", "ok", start=ts, pass_=1, requests=len(reqs), adapters=len(adapters),
                    **_stats(decoder))

        # Compute-optimal second pass: the planned extra views go to the uncertain tasks (the allocation policy);
        # fewer when the time left before the decode deadline, at the first pass's measured speed, affords fewer.
        est = {tid: estimate_difficulty(tid, first.get(tid, []), m, cfg.allocation) for tid in tasks}
        per_view_s = pass1_s / max(1, len(reqs))
        affordable = max(0.0, (spec.decode_deadline - time.time()) * 0.8 / per_view_s) if reqs else 0.0
        units = min(spec.extra_view_units, affordable)
        extra = allocate(est, units, cfg.allocation)
        (Path(spec.work_dir) / "allocation.json").write_text(json.dumps(allocation_report(est, extra, units), default=str))
        reqs2 = [r for tid, n in extra.items() if n > 0
                 for r in plan_requests(tasks[tid], _path(adapters.get(tid)), n, cfg.seed, cfg.decode.keep_background,
                                        skip=m)]
        if reqs2 and time.time() < spec.decode_deadline:
            ts = time.time()
            outs2 = decoder.generate(reqs2, progress=True, deadline=spec.decode_deadline)
            if fault == "unparsable":
                outs2 = _garbage(decoder, outs2, cfg.seed + 1)
            merged = merge_candidate_sets(first, _collect(tasks, reqs2, outs2))
            write_candidate_file(cands_path, merged, "ttt", {"worker": spec.worker, "pass": 2, "adapters": adapters})
            events.emit("decode", "ok", start=ts, pass_=2, requests=len(reqs2), **_stats(decoder))
            return merged
        return first
    finally:
        decoder.close()


def _score_phase(spec: WorkerSpec, cfg, tasks: dict, adapters: dict[str, str], candidates, events: Events) -> None:
    """Product-of-experts scores of the top voted grids, written as ``extra["view_logprobs"]`` for the parent."""
    from .budget import Settings, task_work, view_tokens
    from .candidates import Candidate, write_candidate_file
    from .score_candidates import Scorer
    from .select import select_attempts

    t0 = time.time()
    scorer = Scorer(spec.model_path, dtype=cfg.decode.dtype, device="cuda" if cfg.device == "cuda" else "cpu")
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

            for i in range(len(task.test)):
                select_attempts(task, i, list(candidates.get(tid, [[]] * len(task.test))[i]), cfg.select,
                                score_fn=record)
            scores[tid] = per_test
            # The plan's token count for this task (fewer distinct candidates than C: the rate fit absorbs it)
            prompts, outputs = view_tokens(task)
            planned = task_work(task, Settings(0, 1, cfg.select.poe_views, cfg.select.poe_top_c), example_tokens=0,
                                batch=1, prompt_tokens_per_view=prompts, output_tokens_per_view=outputs)
            events.emit("score", "ok", task=tid, start=ts, scored=sum(len(p) for p in per_test),
                        planned_prompt_tokens=planned.score_tokens, planned_output_tokens=planned.score_output_tokens)
        write_candidate_file(Path(spec.work_dir) / "scores.json", scores, "scorer", {"worker": spec.worker})
    finally:
        scorer.close()


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
    from .candidates import Candidate

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m arcttt_kaggle.worker SPEC.json", file=sys.stderr)
        return 2
    spec = WorkerSpec.read(argv[0])
    try:
        return run_worker(spec)
    except Exception:  # noqa: BLE001 - the process edge: log the traceback where the parent reads it
        Events(Path(spec.work_dir) / "events.jsonl", spec.worker).emit("worker", "error", reason=traceback.format_exc())
        return 1


if __name__ == "__main__":
    sys.exit(main())
