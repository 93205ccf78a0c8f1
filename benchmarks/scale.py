""".venv/bin/python benchmarks/scale.py [--tasks 240] [--candidates 300] [--views 8] [--workers 4] [--out out/scale]

The end of a run at the hidden set's scale: the bookkeeping stages (no model) timed on NVARC-size candidate pools.

The Kaggle rerun solves 240 hidden tasks; DFS decoding leaves hundreds of candidates per test output, and the
product of experts scores the top voted grids under 8 views. This benchmark builds such a run's output folder
and drives the kit's REAL end-of-run code on it (``arcttt_kaggle.run.pipeline.Run``), timing each stage:

1. a ``--tasks``-task challenges file (Kaggle format) written into ``--out``: the first ``--tasks`` task ids, sorted,
   of ``../shared/data/arc-agi-2/arc-agi_training_challenges.json`` (ARC-AGI-2-sized grids, as the hidden set), or
   of ``--challenges FILE`` (e.g. the packaged sample, ``arcttt_kaggle/sample_data``); without either it skips;
2. synthetic worker outputs, seeded (``--seed``), no model: ``--workers`` worker folders ``work/worker<k>-0`` (tasks
   dealt round-robin) each with ``candidates.json`` as ``worker._decode_phase`` writes it (per test output
   ``--candidates`` candidates drawn from about ``candidates/3`` distinct grids of the test output's plausible
   shape, the solution's when the sibling solutions file has it, else the input's; a few grids repeat many times
   (Zipf votes); 2% unparsable; the decoder's ``extra`` keys; views from ``sample_augmentations(--views)``),
   ``scores.json`` as ``worker._score_phase`` writes it (the real ``select_attempts`` picks the top ``--top-c`` voted
   grids and a seeded stand-in scorer gives each a log-likelihood under ``--views`` views, carried in
   ``extra["view_logprobs"]``), ``allocation.json`` (the real second-pass allocator on those candidates) and
   ``events.jsonl`` (startup, a train and a score event per task, two decode passes with DFS counts); and
   ``programs.json``, the program expert's verified answers for about 20% of the tasks (agreeing with the vote,
   overriding it, or two disagreeing answers);
3. a real ``Run`` (the ``cpu-tiny`` preset with ``--workers`` workers, the product of experts at ``--top-c`` x
   ``--views`` and the GPU presets' 12-hour budget, the events laid over its first 11.4 hours) loads the
   challenges, gets one worker record per folder as ``Run.launch`` makes them (no process), and runs:
   ``read candidates`` (``Run.candidate_sets``: every worker's candidate and scores files parsed; part of the
   selection, shown alone), ``selection`` (``Run.answers(final=True)``: voting, consistency, product of experts,
   the program-expert rule), ``submission`` (``Run.write_submission``), ``report`` (events.jsonl,
   ``report.build_report``, the fitted throughput and ``report.json``, as ``Run.finish`` does), ``timeline``
   (``report.write_timeline``), ``report.html`` (``report_html.write_report_html``, which re-reads the files and
   re-selects), then ``finish() total`` (``Run.finish`` as the real run calls it: all of the above after the
   candidate files are read again).

Each stage runs once untraced, in order: "seconds", "of it GC" (the part spent in Python's cyclic garbage
collector, ``gc.callbacks``), "RSS now" (the process's resident set after the stage, /proc/self/status VmRSS)
and "max RSS" (the process's peak resident set so far, ``resource.getrusage`` ru_maxrss, which never falls).
Then, unless ``--no-trace``, every stage but ``finish()`` runs once more under ``tracemalloc`` for "traced peak":
the peak of Python allocations during that stage alone (numpy buffers included; not the interpreter, not
freed-but-kept arena memory); tracing slows the code several times, so it runs after every timed stage and
inflates neither the seconds nor the RSS columns. Prints the stage table, the files' sizes (report.html must
stay a page a person can open), and a last line ``scale: T tasks, N test outputs, C candidates/output, V views:
selection X s, report Y s, report.html Z s (S MiB), peak RSS R MiB`` (peak RSS: of the untraced stages).
``main(argv)`` returns the numbers as a dict (tests call it tiny).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from arcttt_kaggle.arc.augment import sample_augmentations
from arcttt_kaggle.arc.candidates import Candidate, CandidateSet, atomic_write_text, write_candidate_file
from arcttt_kaggle.arc.data import Grid, Task, grid_key, shared_data_dir

DEFAULT_SOURCE = ("arc-agi-2", "arc-agi_training_challenges.json")
UNPARSABLE = 0.02  # fraction of a pool that does not parse (DFS under the grid grammar: few)
PROGRAM_TASKS = 0.2  # fraction of tasks the program expert verifies a program for
BUDGET = {"budget.limit_seconds": 12 * 3600.0, "budget.safety_margin_seconds": 20 * 60.0,
          "budget.final_write_seconds": 30.0}  # the GPU presets' 12-hour budget (cpu-tiny has 600 s)
SPAN_S = 41000.0  # the synthetic events lie in the last SPAN_S seconds: the deadline is ~1000 s after the setup


# -- 1. the challenges file -------------------------------------------------------------------------------------

def source_challenges(path: str | None) -> tuple[Path | None, str]:
    """The challenges file to take tasks from: ``path``, else ARC-AGI-2 training in ``../shared/data``."""
    if path:
        p = Path(path)
        if p.is_dir():
            p = next(iter(sorted(p.glob("*challenges*.json"))), p)
        return (p, "") if p.is_file() else (None, f"--challenges {path} is not a challenges file")
    data = shared_data_dir()
    if data is None or not (data / DEFAULT_SOURCE[0] / DEFAULT_SOURCE[1]).is_file():
        return None, ("../shared/data/arc-agi-2/arc-agi_training_challenges.json is absent (see "
                      "../shared/data/README.md); pass --challenges FILE, e.g. "
                      "arcttt_kaggle/sample_data/arc-agi_test_challenges.json")
    return data / DEFAULT_SOURCE[0] / DEFAULT_SOURCE[1], ""


def write_challenges(source: Path, n: int, out: Path) -> tuple[Path, dict[str, list[tuple[int, int]]]]:
    """The first ``n`` task ids (sorted) of ``source`` as ``out/challenges.json``; per task the output shapes of
    the sibling solutions file (``*_solutions.json``), when it exists (else {})."""
    raw = json.loads(source.read_text(encoding="utf-8"))
    ids = sorted(raw)[:n]
    path = out / "challenges.json"
    atomic_write_text(path, json.dumps({t: raw[t] for t in ids}, separators=(",", ":")))
    shapes: dict[str, list[tuple[int, int]]] = {}
    sols = source.with_name(source.name.replace("challenges", "solutions"))
    if sols != source and sols.is_file():
        doc = json.loads(sols.read_text(encoding="utf-8"))
        shapes = {t: [(len(g), len(g[0])) for g in doc[t]] for t in ids if t in doc}
    return path, shapes


# -- 2. synthetic worker outputs --------------------------------------------------------------------------------

def _rng(seed: int, *keys: Any) -> np.random.Generator:
    return np.random.default_rng([seed] + [zlib.crc32(str(k).encode()) for k in keys])


def _base_grid(inp: Grid, shape: tuple[int, int], rng: np.random.Generator) -> Grid:
    """A plausible output of ``shape``: the test input where it overlaps (most ARC outputs resemble the input),
    its most common colour elsewhere."""
    h, w = shape
    g = np.full((h, w), np.bincount(inp.ravel(), minlength=10).argmax(), dtype=np.uint8)
    hh, ww = min(h, inp.shape[0]), min(w, inp.shape[1])
    g[:hh, :ww] = inp[:hh, :ww]
    return g


def distinct_grids(task: Task, i: int, shape: tuple[int, int], d: int, rng: np.random.Generator) -> list[Grid]:
    """``d`` distinct grids for test input ``i``: near misses of one base grid (a few cells recoloured, more for
    rarer grids), about one in ten in another plausible shape (the input's, or the transpose)."""
    inp = np.asarray(task.test[i].input, dtype=np.uint8)
    colors = np.unique(np.concatenate([inp.ravel()] + [np.asarray(p.output).ravel() for p in task.train]))
    shapes = [shape, tuple(inp.shape), (shape[1], shape[0])]
    bases = {s: _base_grid(inp, s, rng) for s in shapes}
    out, seen = [], set()
    tries = 0
    while len(out) < d and tries < 50 * d:
        tries += 1
        s = shape if len(out) == 0 or rng.random() > 0.1 else shapes[int(rng.integers(1, 3))]
        g = bases[s].copy()
        edits = 0 if len(out) == 0 else 1 + int(rng.integers(0, 1 + min(len(out) // 8, g.size // 2)))
        for _ in range(edits):
            g[int(rng.integers(0, s[0])), int(rng.integers(0, s[1]))] = colors[int(rng.integers(0, len(colors)))]
        k = grid_key(g)
        if k not in seen:
            seen.add(k)
            out.append(g)
    return out


def pool(task: Task, i: int, shape: tuple[int, int], n: int, views: list[str], rng: np.random.Generator,
         tid: str) -> list[Candidate]:
    """``n`` candidates for test input ``i`` as the decoder leaves them (original frame, its ``extra`` keys)."""
    bad = int(round(UNPARSABLE * n)) if n >= 10 else 0
    parsed = n - bad
    grids = distinct_grids(task, i, shape, max(1, min(parsed, n // 3)), rng)
    d = len(grids)
    zipf = 1.0 / np.arange(1, d + 1) ** 1.1
    counts = 1 + rng.multinomial(parsed - d, zipf / zipf.sum())
    order = [k for k, c in enumerate(counts) for _ in range(int(c))] + [-1] * bad
    order = [order[j] for j in rng.permutation(len(order))]
    out = []
    for j, k in enumerate(order):
        view = views[j % len(views)]
        g = grids[k] if k >= 0 else None
        cells = (g.shape[0] * (g.shape[1] + 1)) if g is not None else int(rng.integers(5, 200))
        extra = {"test_index": i, "sample": j // len(views), "tokens": cells + 1, "finish": "stop", "adapter": tid,
                 "dfs": True, "truncated": False, "dfs_threshold": 0.1}
        if g is None:
            extra["parse_error"] = "row 3 has 7 cells, expected 9"
        lp = float(-0.05 * math.log1p(k if k >= 0 else d) * cells - abs(rng.normal(0, 1.5)))
        out.append(Candidate(g, source="ttt", view=view, logprob=lp, extra=extra))
    return out


def stand_in_scorer(seed: int, tid: str) -> Callable:
    """``score_fn(task, i, grids, views) -> [grids, views]`` log-likelihoods, seeded per grid (every view of a
    grid near one quality, so the product of experts has something to agree on). No model."""
    def score(task: Task, i: int, grids: list[Grid], views) -> np.ndarray:
        rows = []
        for g in grids:
            r = _rng(seed, tid, i, grid_key(g).hex())
            quality = -3.0 - 25.0 * r.random()
            rows.append(quality + r.normal(0, 1.5, len(views)))
        return np.asarray(rows)
    return score


def program_answers(task: Task, ttt: list[list[Candidate]], rng: np.random.Generator) -> list[list[Candidate]]:
    """The program expert's verified answers for one task: per test input it agrees with the most voted grid,
    overrides it with another, or has two disagreeing answers."""
    out = []
    for i, per_test in enumerate(ttt):
        votes: dict[bytes, list] = {}
        for c in per_test:
            if c.grid is not None:
                votes.setdefault(c.key, [0, c.grid])[0] += 1
        top = max(votes.values(), key=lambda v: v[0])[1]
        other = top.copy()
        other[0, 0] = (int(other[0, 0]) + 1) % 10
        u = rng.random()
        answers = [top] if u < 0.6 else [other] if u < 0.85 else [top, other]
        out.append([Candidate(g, source="program", program=f"synthetic program {k}", verified=True)
                    for k, g in enumerate(answers)])
    return out


def write_worker_outputs(run, shapes: dict, args, t0: float) -> dict[str, int]:
    """Every worker folder's files (candidates, scores, allocation, events) and ``programs.json``; appends the
    worker records ``Run.launch`` would (no process). Returns the counts."""
    from arcttt_kaggle.selection.allocate import allocate, allocation_report, estimate_difficulty
    from arcttt_kaggle.selection.select import select_attempts

    cfg = run.cfg
    ids = list(run.tasks)
    groups = [ids[k::args.workers] for k in range(args.workers)]
    progs: CandidateSet = {}
    n_cands = n_scored = 0
    for wk, task_ids in enumerate(groups):
        wdir = run.out / "work" / f"worker{wk}-0"
        wdir.mkdir(parents=True, exist_ok=True)
        ttt: CandidateSet = {}
        scores: CandidateSet = {}
        for tid in task_ids:
            task = run.tasks[tid]
            rng = _rng(args.seed, tid)
            views = [v.to_string() for v in sample_augmentations(args.views, args.seed, num_train=len(task.train))]
            ttt[tid] = [pool(task, i, (shapes.get(tid) or [None] * len(task.test))[i] or tuple(np.shape(p.input)),
                             args.candidates, views, rng, tid) for i, p in enumerate(task.test)]
            n_cands += sum(len(x) for x in ttt[tid])
            # As worker._score_phase: the real selection picks the pool; the stand-in scorer fills it.
            per_test: list[list[Candidate]] = [[] for _ in task.test]
            score = stand_in_scorer(args.seed, tid)

            def record(task_, i, grids, vs, _per_test=per_test, _score=score):
                ll = _score(task_, i, grids, vs)
                for g, row in zip(grids, ll):
                    _per_test[i].append(Candidate(g, source="scorer", extra={
                        "view_logprobs": {v.to_string(): float(x) for v, x in zip(vs, row)}}))
                return ll

            for i in range(len(task.test)):
                select_attempts(task, i, list(ttt[tid][i]), cfg.select, score_fn=record)
            scores[tid] = per_test
            n_scored += sum(len(x) for x in per_test)
            if rng.random() < PROGRAM_TASKS:
                progs[tid] = program_answers(task, ttt[tid], rng)
        write_candidate_file(wdir / "candidates.json", ttt, "ttt",
                             {"worker": wk, "pass": 2, "adapters": {t: str(wdir / "adapters" / t) for t in task_ids}})
        write_candidate_file(wdir / "scores.json", scores, "scorer", {"worker": wk})
        est = {t: estimate_difficulty(t, ttt[t], args.views, cfg.allocation) for t in task_ids}
        units = float(args.views * sum(len(run.tasks[t].test) for t in task_ids))
        atomic_write_text(wdir / "allocation.json",
                          json.dumps(allocation_report(est, allocate(est, units, cfg.allocation), units), default=str))
        write_events(wdir / "events.jsonl", wk, task_ids, ttt, run, t0, args)
        run.workers.append({"worker": wk, "attempt": 0, "proc": None, "dir": wdir, "tasks": task_ids, "log": None,
                            "train_steps": cfg.train.steps, "views": args.views, "seen_mtime": 0.0,
                            "returncode": 0, "reason": ""})
    write_candidate_file(run.out / "programs.json", progs, "programs",
                         {"config": {"synthetic": True}, "stats": {"tasks": len(ids), "verified": len(progs)}})
    outputs = sum(len(t.test) for t in run.tasks.values())
    return {"candidates": n_cands, "scored_grids": n_scored, "program_tasks": len(progs), "outputs": outputs}


def write_events(path: Path, wk: int, task_ids: list[str], ttt: CandidateSet, run, t0: float, args) -> None:
    """A worker's events.jsonl (the records ``worker.Events.emit`` writes), laid over the last SPAN_S seconds."""
    recs = []

    scale = SPAN_S / 540.0  # the layout below is in 540ths of the span

    def ev(phase, status, start, end, task="", **info):
        recs.append({"worker": wk, "phase": phase, "status": status, "task": task, "start": t0 + start * scale,
                     "end": t0 + end * scale, **info})

    n = max(1, len(task_ids))
    ev("worker", "start", 1, 1, pid=0, tasks=len(task_ids), attempt=0, cuda_visible_devices=str(wk))
    ev("startup_train", "ok", 2, 15, backend="unsloth")
    step = 280.0 / n
    for k, tid in enumerate(task_ids):
        ev("train", "ok", 15 + k * step, 15 + (k + 0.9) * step, tid, steps=run.cfg.train.steps, tokens=20000 + 97 * k,
           stopped_early=False, loss_first=1.2, loss_last=0.3, skipped_steps=0, examples_used=32, examples_skipped=0)
    ev("startup_decode", "ok", 296, 304, backend="vllm")
    dfs = {t: sum(len(x) for x in ttt[t]) for t in task_ids}
    reqs = sum(len(run.tasks[t].test) for t in task_ids) * args.views
    gen = sum(int(c.extra.get("tokens", 0)) for t in task_ids for x in ttt[t] for c in x)
    ev("decode", "ok", 304, 420, pass_=1, requests=reqs, adapters=len(task_ids), method="dfs",
       tokens_generated=gen // 2, prompt_tokens=reqs * 3000, bound_tokens=gen // 4, dfs_candidates=dfs)
    ev("decode", "ok", 420, 460, pass_=2, requests=reqs // 2, method="dfs", tokens_generated=gen,
       prompt_tokens=reqs * 4500, bound_tokens=gen // 2, dfs_candidates=dfs)
    ev("startup_score", "ok", 460, 461)
    step = 60.0 / n
    for k, tid in enumerate(task_ids):
        ev("score", "ok", 461 + k * step, 461 + (k + 0.9) * step, tid, scored=args.top_c * len(run.tasks[tid].test),
           planned_prompt_tokens=40000, planned_output_tokens=3000)
    ev("worker", "done", 525, 525)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))


# -- 3. the stages ----------------------------------------------------------------------------------------------

def rss_now_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class GcClock:
    """Seconds spent in the cyclic garbage collector (``gc.callbacks``) while it is installed."""

    def __init__(self):
        self.seconds, self._t = 0.0, 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t

    def __enter__(self) -> "GcClock":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its seconds and the seconds of them the garbage collector took."""
    gc.collect()
    with GcClock() as clock:
        t = time.perf_counter()
        result = fn()
        secs = time.perf_counter() - t
    return result, secs, clock.seconds


def measure(name: str, fn: Callable[[], Any], rows: list[dict]) -> Any:
    """Run ``fn`` untraced: its seconds, the GC's part of them, the RSS after it (a row of ``rows``)."""
    result, secs, gc_s = timed(fn)
    rows.append({"stage": name, "seconds": secs, "gc_seconds": gc_s, "rss_now_mib": rss_now_mib(),
                 "max_rss_mib": max_rss_mib(), "traced_peak_mib": None})
    print(f"  {name}: {secs:.2f} s", flush=True)
    return result


def traced_peak_mib(fn: Callable[[], Any]) -> float:
    """Peak Python allocations (tracemalloc) while ``fn`` runs, MiB."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _human(n: float) -> str:
    return f"{n / 2 ** 20:.2f} MiB" if n >= 2 ** 20 else f"{n / 1024:.1f} KiB"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--tasks", type=int, default=240, help="tasks (the hidden set has 240)")
    ap.add_argument("--candidates", type=int, default=300, help="candidates per test output (DFS pools: hundreds)")
    ap.add_argument("--views", type=int, default=8, help="views: decoding views and product-of-experts scoring views")
    ap.add_argument("--top-c", type=int, default=8, help="grids the product of experts scores per test output")
    ap.add_argument("--workers", type=int, default=4, help="worker folders (4 on the 4xL4 run)")
    ap.add_argument("--out", default="out/scale", help="the run's output folder (cleared of a previous run's files)")
    ap.add_argument("--challenges", help="take the tasks from this challenges file (or folder) instead of "
                                         "../shared/data/arc-agi-2 training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-trace", action="store_true", help="skip the tracemalloc pass (traced peak not measured)")
    args = ap.parse_args(argv)

    source, why = source_challenges(args.challenges)
    if source is None:
        print(f"scale: skipped: {why}")
        return {"skipped": why}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from arcttt_kaggle.run.config import preset
    from arcttt_kaggle.run.pipeline import Run, _events
    from arcttt_kaggle.run.report import build_report, write_timeline
    from arcttt_kaggle.run.report_html import write_report_html

    t_setup = time.perf_counter()
    challenges, shapes = write_challenges(source, args.tasks, out)
    cfg = preset("cpu-tiny", challenges=str(challenges), out_dir=str(out)).with_overrides(
        {"workers": args.workers, "select.poe_views": args.views, "select.poe_top_c": args.top_c,
         "decode.views_per_test": args.views, **BUDGET})
    t0 = time.time() - SPAN_S
    run = Run(cfg, start=t0)
    run.load()
    load = next(e for e in run.parent_events if e["phase"] == "load")  # drawn where a run loads: at its start
    load["end"], load["start"] = t0 + 0.5 + load["end"] - load["start"], t0 + 0.5
    counts = write_worker_outputs(run, shapes, args, t0)
    setup_s = time.perf_counter() - t_setup
    files = {"challenges.json": _size(challenges), "programs.json": _size(out / "programs.json")}
    for name in ("candidates.json", "scores.json"):
        files[f"work/*/{name}"] = sum(_size(w["dir"] / name) for w in run.workers)
    print(f"{len(run.tasks)} tasks from {source} ({counts['outputs']} test outputs); {counts['candidates']} candidates "
          f"({args.candidates}/output), {counts['scored_grids']} scored grids x {args.views} views, "
          f"{counts['program_tasks']} tasks with program answers; {args.workers} workers; setup {setup_s:.1f} s")

    rows: list[dict] = []
    trace = not args.no_trace
    answers: dict = {}
    events: list[dict] = []

    def select():
        answers.clear()
        answers.update(run.answers(final=True))

    def report():
        events = run.parent_events + [e for w in run.workers for e in _events(w["dir"])]
        atomic_write_text(out / "events.jsonl", "".join(json.dumps(e, default=str) + "\n" for e in events))
        rep = build_report(run, events)
        from arcttt_kaggle.run.budget import measured_throughput, throughput_document

        rep["measured_throughput"] = measured_throughput(events, cfg.throughput).__dict__
        atomic_write_text(out / "measured_throughput.json", json.dumps(throughput_document(events, cfg.throughput)))
        atomic_write_text(out / "report.json", json.dumps(rep, indent=1, default=str))
        return events

    stages = [("read candidates", run.candidate_sets), ("selection", select),
              ("submission", lambda: run.write_submission(answers)), ("report", report),
              ("timeline", lambda: write_timeline(events, run.budget, out / "timeline.png")),
              ("report.html", lambda: write_report_html(out)), ("finish() total", run.finish)]
    print("stages (untraced):")
    for name, fn in stages:
        got = measure(name, fn, rows)
        if name == "report":
            events = got
    if trace:  # after every untimed run, so tracemalloc's own memory inflates no RSS figure above
        print("stages again under tracemalloc:", flush=True)
        for row, (name, fn) in zip(rows, stages):
            if name != "finish() total":  # its peak is its stages' largest
                row["traced_peak_mib"] = traced_peak_mib(fn)
    for name in ("submission.json", "report.json", "report.html", "timeline.png", "events.jsonl"):
        files[name] = _size(out / name)

    print(f"\n{'stage':<18} {'seconds':>8} {'of it GC':>9} {'traced peak MiB':>16} {'RSS now MiB':>12} "
          f"{'max RSS MiB':>12}")
    for r in rows:
        peak = "-" if r["traced_peak_mib"] is None else f"{r['traced_peak_mib']:.1f}"
        print(f"{r['stage']:<18} {r['seconds']:>8.2f} {r['gc_seconds']:>9.2f} {peak:>16} {r['rss_now_mib']:>12.1f} "
              f"{r['max_rss_mib']:>12.1f}")
    print("(read candidates is part of selection, shown alone; finish() total is Run.finish as the run calls it: "
          "selection, submission, report, timeline and report.html again. of it GC: seconds in the cyclic garbage "
          "collector. traced peak: Python allocations during the stage alone, tracemalloc, a second call after all "
          "timed ones; RSS now: resident set after the stage; max RSS: the process's peak resident set so far, "
          "ru_maxrss)")
    print("\nfiles: " + ", ".join(f"{k} {_human(v)}" for k, v in files.items()))
    by = {r["stage"]: r for r in rows}
    peak_rss = max(r["max_rss_mib"] for r in rows)
    print(f"scale: {len(run.tasks)} tasks, {counts['outputs']} test outputs, {args.candidates} candidates/output, "
          f"{args.views} views: selection {by['selection']['seconds']:.2f} s, report {by['report']['seconds']:.2f} s, "
          f"report.html {by['report.html']['seconds']:.2f} s ({files['report.html'] / 2 ** 20:.2f} MiB), "
          f"peak RSS {peak_rss:.0f} MiB")
    keys = {"read candidates": "read_candidates", "report.html": "report_html", "finish() total": "finish"}
    return {"out": str(out), "challenges": str(challenges), "tasks": len(run.tasks), **counts,
            "timings": {keys.get(r["stage"], r["stage"]): r["seconds"] for r in rows},
            "traced_peak_mib": {keys.get(r["stage"], r["stage"]): r["traced_peak_mib"] for r in rows},
            "gc_seconds": {keys.get(r["stage"], r["stage"]): r["gc_seconds"] for r in rows},
            "max_rss_mib": peak_rss, "files": files, "setup_s": setup_s}


if __name__ == "__main__":
    main()
    sys.exit(0)
