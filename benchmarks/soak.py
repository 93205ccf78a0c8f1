"""A Kaggle day, rehearsed: the whole notebook on 240 tasks under random faults, its submission watched all along.

    .venv/bin/python benchmarks/soak.py --seeds 2
    .venv/bin/python benchmarks/soak.py --seeds 1 --tasks 12 --faults 4 --budget 150   # the short form CI runs

Per seed, the dry run (``kaggle.dryrun.dry_run``: the real notebook, the real CPU engines, the tiny model the kit
builds) solves a challenges file of ``--tasks`` tasks drawn from ``../shared/data`` (ARC-AGI-1 training and
evaluation and ARC-AGI-2 training, the smallest tasks first, so the tiny model's 2,048-token context holds most;
the point is scale, not accuracy; the packaged 10-task sample when the shared data is absent). The run is
time-scaled: ``--budget`` seconds (default 600) stand for Kaggle's 12 hours, so one second here is 72 seconds
there and a minute stands for 72 minutes. The joint stage is on, checkpointing every 10 s.

Each seed draws ``--faults`` to ``--faults + 2`` faults from the dry run's list (``run/faults.py``) without
repeats, each with a random moment in its own unit: the n-th task a worker starts training (distinct tasks among
the first 24; a SIGKILL or a hang, which end the worker's training, take the latest of them), a decoding pass, the
n-th adapter, seconds after the program expert started, a share of the predicted work time, the n-th joint
checkpoint; training runs in a child process or in the worker (a coin per seed). Several strike in one run, some
at overlapping moments; a fault whose moment never comes (the worker died first, the pass was not needed) is
listed as not struck. A replacement worker carries the faults that had not struck yet.

Invariants, checked all along, not only at the end:

- **invalid reads** (I): a watcher process reads ``submission.json`` every half second; from its first write on,
  every read must find the file, parse it and pass ``validate_submission`` against the challenges the run read.
- **lost** (L): a test output whose submission once held an answer other than the fallback (a model or program
  answer) must never go back to the fallback (each such read counts); and at the end, every answer a worker
  reported finished (a parsed grid in its ``candidates.json``) or the program expert wrote (a verified answer in
  ``programs.json``) is in the final submission, unless another such answer replaced it: the output is lost when
  neither final attempt is any of that output's reported answers (the selection ranks them; the kit never
  writes a grid nobody proposed, so an attempt that is one of them is the ranking's choice).
- **late** (D): the run's last event and the submission's last write are before the deadline (the moved one,
  when the deadline fault struck).
- **unnamed** (U): every fault that struck (its ``("fault", "injected")`` event, or, for faults of the inputs
  and environment, being drawn; a corrupt adapter file once a decoding pass read it) is named by the kit's own reaction in the status reasons and in ``report.html``
  (``NAMED``: what the kit says of it, never the injection's own marker).

The last line is ``soak: S seeds, T tasks, F faults, L lost, I invalid reads, D late, U unnamed`` (T tasks per
run, F faults that struck); the exit code is 1 when any of L, I, D, U is not 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcttt_kaggle.arc.candidates import read_candidate_file
from arcttt_kaggle.arc.data import load_challenges, package_sample_dir, shared_data_dir
from arcttt_kaggle.arc.submission import fallback_attempts, validate_submission
from arcttt_kaggle.kaggle.dryrun import dry_run, inject_bad_task
from arcttt_kaggle.run.faults import FAULTS, MOMENTS

# What the kit's own reaction says of each fault, in the status reasons and report.html (a regular expression).
NAMED = {
    "worker-crash": r"exited with code -9",  # the worker, or its training child
    "train-hang": r"silent for .* while training \(hung\)|still training .* after its training deadline|"
                  r"training process .*killed",
    "task-exception": r"TTT failed for .*task-exception",
    "step-exception": r"TTT failed for .*CUDA out of memory in training step",
    "enospc": r"TTT failed for .*No space left on device",
    "nonfinite-loss": r"TTT failed for .*non-finite",
    "corrupt-adapter": r"decoding isolated a failure",
    "decode-hang": r"decoding on worker \d+ hung",
    "cuda-error": r"a CUDA error ended the decode engine",
    "unparsable": r"unparsable",
    "programs-killed": r"the program expert did not finish",
    "deadline": r"deadline reached|terminated at the (work )?deadline|deadline before",
    "joint-crash": r"joint stage: the joint stage exited with code -9",
    "bad-task": r"rejected at load",
    "no-vllm": r"decode engine fell back \(rung vllm\)",
    "no-unsloth": r"train engine fell back \(rung unsloth\)",
}
ENVIRONMENT = tuple(f for f in FAULTS if MOMENTS[f][0] == "-")  # strike whenever drawn
ENDS_TRAINING = ("worker-crash", "train-hang")
STANDS_FOR = 12 * 3600  # the budget stands for Kaggle's 12 hours


# -- the challenges -----------------------------------------------------------------------------------------------
def soak_challenges(n: int, out: Path) -> Path:
    """A challenges file of ``n`` tasks: the smallest (fewest cells) of the shared ARC sets, ids deduplicated."""
    root = shared_data_dir()
    files = [root / "arc-agi-1" / "arc-agi_training_challenges.json",
             root / "arc-agi-1" / "arc-agi_evaluation_challenges.json",
             root / "arc-agi-2" / "arc-agi_training_challenges.json"] if root else []
    files = [f for f in files if f.exists()] or [package_sample_dir() / "arc-agi_test_challenges.json"]
    raw: dict = {}
    for f in files:
        for tid, task in json.loads(f.read_text()).items():
            raw.setdefault(tid, task)
    tasks = load_challenges(files[0]).tasks
    for f in files[1:]:
        tasks = {**load_challenges(f).tasks, **tasks}
    chosen = sorted(tasks.values(), key=lambda t: (t.num_cells, t.id))[:n]
    if len(chosen) < n:
        print(f"soak: only {len(chosen)} tasks in {[str(f) for f in files]}; running on those")
    path = out / "soak_challenges.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({t.id: raw[t.id] for t in chosen}))
    return path


# -- the faults -----------------------------------------------------------------------------------------------------
def draw_faults(rng: np.random.Generator, count: int, tasks: int) -> list[str]:
    """``count`` distinct faults, each ``name@moment`` with a random moment in its unit (``faults.MOMENTS``);
    the task faults strike at distinct tasks among the first ``tasks``."""
    names = [FAULTS[i] for i in rng.choice(len(FAULTS), size=min(count, len(FAULTS)), replace=False)]
    # Distinct tasks for the task faults; the ones that end a worker's training (a SIGKILL, a hang) take the
    # latest of the drawn tasks, so the faults drawn with them still get their chance to strike.
    in_tasks = [n for n in names if MOMENTS[n][0] == "task"]
    slots = sorted(rng.choice(max(tasks, len(in_tasks)), size=len(in_tasks), replace=False).tolist())
    order = sorted(in_tasks, key=lambda n: (n in ENDS_TRAINING, in_tasks.index(n)))
    task_slot = dict(zip(order, slots))
    drawn = []
    for name in names:
        unit = MOMENTS[name][0]
        moment = {"task": lambda: task_slot[name], "adapter": lambda: int(rng.integers(0, 8)),
                  "pass": lambda: int(rng.integers(1, 3)), "seconds": lambda: round(float(rng.uniform(1, 60)), 1),
                  "share": lambda: round(float(rng.uniform(0.3, 0.9)), 2),
                  "checkpoint": lambda: int(rng.integers(1, 3)), "-": lambda: None}[unit]()
        drawn.append(name if moment is None else f"{name}@{moment}")
    return drawn


# -- the watcher ------------------------------------------------------------------------------------------------
def watch(submission: str, challenges: str, stop, result: str, interval: float = 0.5) -> None:
    """Read ``submission`` every ``interval`` s until ``stop`` is set; write what was seen to ``result`` (JSON).

    Invalid: from the first successful read on, a read that finds no file, cannot parse it or fails validation.
    Regressed: a test output that once held a non-fallback answer holding the fallback pair again (counted once
    each time it goes back)."""
    raw = json.loads(Path(challenges).read_text())
    tasks = load_challenges(challenges, strict=False).tasks
    fallback = {tid: [[g.tolist() for g in pair] for pair in fallback_attempts(t)] for tid, t in tasks.items()}
    t0 = time.time()
    seen = {"reads": 0, "invalid": [], "regressed": [], "first_write_s": None, "last_change_s": None,
            "answered_max": 0}
    answered: set[tuple[str, int]] = set()
    gone: set[tuple[str, int]] = set()  # answered once, holding the fallback now
    last = None
    while True:
        stopping = stop.is_set()
        now = time.time() - t0
        try:
            text = Path(submission).read_text()
            sub = json.loads(text)
            errors = validate_submission(sub, raw)
        except (OSError, ValueError) as e:  # missing, unreadable, unparsable
            text, sub, errors = None, None, [f"{type(e).__name__}: {e}"]
        if seen["first_write_s"] is None and not errors:
            seen["first_write_s"] = round(now, 2)
        if seen["first_write_s"] is not None:
            seen["reads"] += 1
            if errors:
                seen["invalid"].append({"t": round(now, 2), "error": errors[0][:300]})
            else:
                if text != last:
                    seen["last_change_s"], seen["last_change_at"], last = round(now, 2), time.time(), text
                holding = {(tid, i) for tid, outs in sub.items() if tid in fallback
                           for i, entry in enumerate(outs) if i < len(fallback[tid])
                           and not _is_fallback(entry, fallback[tid][i])}
                back = sorted(answered - holding - gone)  # each going back counted once
                gone = (gone | set(back)) - holding
                if back:
                    seen["regressed"].append({"t": round(now, 2), "outputs": [f"{t}[{i}]" for t, i in back[:10]],
                                              "count": len(back)})
                answered |= holding
                seen["answered_max"] = max(seen["answered_max"], len(answered))
        if stopping:
            break
        time.sleep(interval)
    seen["wall_s"] = round(time.time() - t0, 2)
    Path(result).write_text(json.dumps(seen))


def _is_fallback(entry: dict, pair: list) -> bool:
    """The entry holds the fallback: attempt_1 is the fallback's first grid and attempt_2 one of its two."""
    return entry.get("attempt_1") == pair[0] and entry.get("attempt_2") in pair


# -- the end checks ---------------------------------------------------------------------------------------------
@dataclass
class SeedResult:
    seed: int
    drawn: list[str]
    isolate_training: bool
    struck: dict[str, float] = field(default_factory=dict)  # fault -> seconds after the run's start
    named: dict[str, str] = field(default_factory=dict)  # fault -> the status line that names it ("" = unnamed)
    lost: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    status: str = ""
    wall_s: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)  # attempt_1 of each test output: model/program/fallback
    watcher: dict = field(default_factory=dict)

    @property
    def unnamed(self) -> list[str]:
        return [f for f in self.struck if not self.named.get(f)]


def reported_answers(out: Path) -> dict[tuple[str, int], list]:
    """Every answer a worker reported finished (parsed grids in its candidate files) or the program expert wrote
    (verified answers), by test output, as lists."""
    found: dict[tuple[str, int], list] = {}
    files = [(p, False) for p in sorted((out / "work").glob("worker*/candidates.json"))]
    files += [(out / "programs.json", True)] if (out / "programs.json").exists() else []
    for path, verified_only in files:
        cands, _ = read_candidate_file(path)
        for tid, outs in cands.items():
            for i, cs in enumerate(outs):
                for c in cs:
                    if c.grid is not None and (c.verified or not verified_only):
                        found.setdefault((tid, i), []).append(c.grid.tolist())
    return found


def _took_effect(injected: dict, events: list[dict]) -> bool:
    """A corrupt adapter file strikes when a decoder reads it: a decoding pass of that worker began after the
    corruption (a hang or a broken engine before any pass leaves the file unread). Every other fault strikes
    when it is injected."""
    if injected["fault"] != "corrupt-adapter":
        return True
    return any(e["worker"] == injected["worker"] and e["phase"] == "decode" and e["status"] in ("ok", "isolated")
               and e["end"] >= injected["start"] for e in events)


def check_run(seed: int, drawn: list[str], isolate: bool, out: Path, report: dict, watcher: dict,
              deadline_s: float) -> SeedResult:
    res = SeedResult(seed, drawn, isolate, status=report.get("status", "?"), watcher=watcher,
                     wall_s=(report.get("budget") or {}).get("wall_s", 0.0))
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    start = report.get("budget_start") or min(e["start"] for e in events)
    for e in events:
        if e["phase"] == "fault" and e["status"] == "injected" and _took_effect(e, events):
            res.struck.setdefault(e["fault"], round(e["start"] - start, 1))
    for d in drawn:
        if d in ENVIRONMENT:
            res.struck.setdefault(d, 0.0)
    status_text = report.get("status_reasons") or []
    html = (out / "report.html").read_text(errors="replace") if (out / "report.html").exists() else ""
    html_text = re.sub(r"<[^>]+>", " ", html).replace("&quot;", '"').replace("&#x27;", "'").replace("&amp;", "&")
    for f in res.struck:
        line = next((x for x in status_text if re.search(NAMED[f], x)), "")
        res.named[f] = line if line and re.search(NAMED[f], html_text) else ""
    # Lost at the end: a test output with reported answers whose final attempts are none of them.
    sub = json.loads((out / "submission.json").read_text())
    for (tid, i), grids in sorted(reported_answers(out).items()):
        entry = sub.get(tid, [])[i] if i < len(sub.get(tid, [])) else {}
        if entry.get("attempt_1") not in grids and entry.get("attempt_2") not in grids:
            res.lost.append(f"{tid}[{i}]")
    for r in watcher.get("regressed", []):
        res.lost += [f"regressed at {r['t']} s: {o}" for o in r["outputs"]]
    budget = report.get("budget") or {}
    if not budget.get("finished_before_deadline", False):
        res.late.append(f"the report's last event is after the deadline ({budget})")
    limit = start + float(budget.get("limit_s") or deadline_s)
    if watcher.get("last_change_at") and watcher["last_change_at"] > limit:
        res.late.append(f"the submission changed {watcher['last_change_at'] - limit:.1f} s after the time limit")
    for t in (report.get("per_task") or {}).values():
        for s in t.get("attempt_sources", []):
            res.sources[s[0]] = res.sources.get(s[0], 0) + 1
    return res


# -- one seed ------------------------------------------------------------------------------------------------------
def soak_seed(seed: int, challenges: Path, out: Path, budget: float, faults: int, tasks: int) -> SeedResult:
    rng = np.random.default_rng(seed)
    drawn = draw_faults(rng, int(rng.integers(faults, faults + 3)), min(tasks, 24))  # among the first 24 tasks
    isolate = bool(rng.integers(0, 2))
    out.mkdir(parents=True, exist_ok=True)
    read = inject_bad_task(challenges, out) if "bad-task" in drawn else challenges  # what the run will read
    ctx = mp.get_context("spawn")
    stop, result = ctx.Event(), out.parent / f"watcher-{seed}.json"
    watcher = ctx.Process(target=watch, args=(str(out / "submission.json"), str(read), stop, str(result)))
    (out / "submission.json").unlink(missing_ok=True)
    watcher.start()
    print(f"soak: seed {seed}: faults {','.join(drawn)}; training {'isolated' if isolate else 'in the worker'}",
          flush=True)
    overrides = {"isolate_training": isolate, "train.steps": 4, "decode.views_per_test": 2,
                 "programs.seconds_per_task": 0.5, "joint.enabled": True, "joint.checkpoint_minutes": 10 / 60}
    try:
        report = dry_run(challenges=challenges, solutions=None, budget_seconds=budget, out_dir=out,
                         fault=",".join(drawn), overrides=overrides)
    finally:
        stop.set()
        watcher.join(30)
    seen = json.loads(result.read_text()) if result.exists() else {"invalid": [{"error": "the watcher wrote nothing"}]}
    return check_run(seed, drawn, isolate, out, report, seen, budget)


# -- the table ----------------------------------------------------------------------------------------------------
def print_seed(r: SeedResult) -> None:
    w = r.watcher
    print(f"\nseed {r.seed}: status {r.status}, wall {r.wall_s:.0f} s, training "
          f"{'isolated' if r.isolate_training else 'in the worker'}; watcher: {w.get('reads', 0)} reads, first write "
          f"{w.get('first_write_s')} s, last change {w.get('last_change_s')} s, {len(w.get('invalid', []))} invalid, "
          f"{len(w.get('regressed', []))} regressed; attempt_1 from " +
          ", ".join(f"{k} {v}" for k, v in sorted(r.sources.items())))
    print(f"  {'fault':<22} {'struck at':>10}  named by")
    for d in r.drawn:
        name = d.split("@")[0]
        at = r.struck.get(name)
        said = r.named.get(name, "")
        print(f"  {d:<22} {('-' if at is None else f'{at:.0f} s'):>10}  "
              f"{(said[:110] if said else ('UNNAMED' if at is not None else 'did not strike'))}")
    for x in r.lost[:10] + r.late + [f"invalid read at {i['t']} s: {i['error']}" for i in w.get("invalid", [])[:5]]:
        print(f"  ! {x}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2, help="runs, each with its own faults (seeds 0..S-1)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=240, help="tasks per run (the hidden set has 240)")
    ap.add_argument("--faults", type=int, default=5, help="at least this many faults drawn per seed (up to +2)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds per run; they stand for 12 hours")
    ap.add_argument("--out", type=Path, default=Path("out/soak"))
    args = ap.parse_args(argv)
    challenges = soak_challenges(args.tasks, args.out)
    n_tasks = len(json.loads(challenges.read_text()))
    print(f"soak: {n_tasks} tasks, {args.budget:.0f} s a run standing for 12 h (1 s = {STANDS_FOR / args.budget:.0f} s "
          f"of Kaggle time)", flush=True)
    results = [soak_seed(s, challenges, args.out / f"seed-{s}", args.budget, args.faults, n_tasks)
               for s in range(args.first_seed, args.first_seed + args.seeds)]
    for r in results:
        print_seed(r)
    (args.out / "soak.json").write_text(json.dumps([r.__dict__ | {"unnamed": r.unnamed} for r in results], indent=1))
    lost = sum(len(r.lost) for r in results)
    invalid = sum(len(r.watcher.get("invalid", [])) for r in results)
    late = sum(bool(r.late) for r in results)
    unnamed = sum(len(r.unnamed) for r in results)
    print(f"soak: {len(results)} seeds, {n_tasks} tasks, {sum(len(r.struck) for r in results)} faults, {lost} lost, "
          f"{invalid} invalid reads, {late} late, {unnamed} unnamed")
    return 1 if lost or invalid or late or unnamed else 0


if __name__ == "__main__":
    sys.exit(main())
