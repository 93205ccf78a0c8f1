"""The time budget: one deadline object passed to every stage, a per-phase cost model, and the plan.

``Budget`` is created once at the start of a run (``deadline = start + limit - safety margin``) and passed
explicitly; nothing reads a global clock budget. ``CostModel`` predicts seconds per task and phase from token
counts and throughputs (tokens/s per worker), and is re-calibrated from what the run measures on its first
tasks. ``make_plan`` balances tasks over workers by predicted cost (longest first, each to the least loaded
worker: the LPT rule, within 4/3 of optimal) and walks the degradation ladder when the prediction does not
fit: fewer TTT steps, then skip TTT (decode with the base model), then fewer views, then stop with what exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from arcttt_kaggle.arc.data import Task
from arcttt_kaggle.engines.format import ArcFormat, FormatSpec, Layout, layout_of

PHASES = ("startup", "train", "decode", "score")


@dataclass(frozen=True)
class Throughput:
    """Measured speeds of one worker (one GPU, or one CPU process). Units: tokens per second, seconds."""

    train_tokens_per_s: float = field(default=4000.0, metadata={"help": "TTT tokens processed per second (forward+backward)"})
    train_step_s: float = field(default=0.05, metadata={"help": "fixed cost of one optimizer step (launches, optimizer); dominates for tiny models"})
    decode_prompt_tokens_per_s: float = field(default=20000.0, metadata={"help": "prompt (prefill) tokens per second in batched decoding"})
    decode_output_tokens_per_s: float = field(default=1500.0, metadata={"help": "generated tokens per second in batched decoding"})
    decode_output_fill: float = field(default=1.0, metadata={"help": "generated tokens / the output bound (max_new_tokens): outputs stop at eos, below the bound the plan counts"})
    dfs_decode_multiple: float = field(default=2.0, metadata={"help": "decode.method='dfs': generated tokens per view / that view's output bound (the greedy path plus the branches DFS opens; the algorithm bounds it by about 1/tau, plus at most one chunk per dead branch). 2 is a prior (the greedy path and one branch's worth); a run replaces it by its own first DFS pass's measurement"})
    score_tokens_per_s: float = field(default=20000.0, metadata={"help": "teacher-forced scoring tokens per second"})
    train_startup_s: float = field(default=60.0, metadata={"help": "load the 4-bit base for training (once per worker)"})
    decode_startup_s: float = field(default=90.0, metadata={"help": "start the vLLM engine (once per worker per pass)"})
    score_startup_s: float = field(default=30.0, metadata={"help": "load the scorer's base model (once per worker)"})
    per_task_overhead_s: float = field(default=2.0, metadata={"help": "adapter reset/save per task"})
    decode_call_overhead_s: float = field(default=10.0, metadata={"help": "fixed cost of each generate call (scheduling, first-call warm-up)"})

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not v > 0 and not (k.endswith("_s") and v == 0):
                raise ValueError(f"throughput {k} must be positive, got {v}")
        if self.decode_output_fill > 1:
            raise ValueError(f"throughput decode_output_fill must be in (0, 1], got {self.decode_output_fill}")

    @classmethod
    def from_file(cls, path: str | Path) -> "Throughput":
        """A ``measured_throughput.json``: measured fields at the top, the prior's under ``priors`` (older files:
        every field at the top)."""
        d = json.loads(Path(path).read_text())
        d = {**d.pop("priors", {}), **d}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown throughput keys {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class BudgetConfig:
    """Wall-clock limits of a run. Defaults: Kaggle's 12 h with a 20 min safety margin."""

    limit_seconds: float = field(default=12 * 3600.0, metadata={"help": "total wall-clock allowed for the run"})
    safety_margin_seconds: float = field(default=20 * 60.0, metadata={"help": "kept free before the limit for the final write"})
    final_write_seconds: float = field(default=30.0, metadata={"help": "reserved at the end to merge and write the submission"})
    calibrate_after_tasks: int = field(default=2, metadata={"help": "re-fit throughputs after this many measured tasks"})
    max_train_share: float = field(default=0.6, metadata={"help": "largest share of the budget TTT may take"})

    def __post_init__(self):
        if self.limit_seconds <= 0 or self.safety_margin_seconds < 0:
            raise ValueError("limit_seconds must be > 0 and safety_margin_seconds >= 0")
        if self.safety_margin_seconds >= self.limit_seconds:
            raise ValueError(f"safety margin {self.safety_margin_seconds}s leaves nothing of the {self.limit_seconds}s limit")
        if not 0 < self.max_train_share <= 1:
            raise ValueError("max_train_share must be in (0, 1]")


class Budget:
    """The run's deadline. ``clock`` is injectable so tests can move time."""

    def __init__(self, config: BudgetConfig, start: float | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.start = clock() if start is None else start
        self.deadline = self.start + config.limit_seconds - config.safety_margin_seconds

    def now(self) -> float:
        return self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.deadline

    def work_deadline(self) -> float:
        """When workers must stop so the final merge and write still fit before the deadline."""
        return self.deadline - self.config.final_write_seconds

    def log_line(self, phase: str, message: str = "") -> str:
        return f"[{phase:>8}] elapsed {self.elapsed():7.1f}s  remaining {self.remaining():7.1f}s  {message}"

    def to_dict(self) -> dict:
        return {"start": self.start, "deadline": self.deadline, **asdict(self.config)}


@dataclass(frozen=True)
class TaskWork:
    """The token work of one task under given settings: what the cost model turns into seconds."""

    task_id: str
    train_tokens: int  # tokens processed by TTT (steps × batch × mean example length)
    train_steps: int  # optimizer steps (each has a fixed cost besides its tokens)
    prompt_tokens: int  # prefill tokens over all decoded views
    output_tokens: int  # generated tokens over all views at the bound (max_new_tokens per view; x fill)
    score_tokens: int  # product-of-experts scoring: prompt tokens of the scored views
    score_output_tokens: int = 0  # ... and the top-C candidates' tokens under those views, at the bound (x fill)
    dfs: bool = False  # decoded by DFS: output_tokens x Throughput.dfs_decode_multiple instead of x fill
    dfs_cap: int = 0  # DFS: generated tokens per task the config's cap allows over both passes (0 = no cap)


@dataclass(frozen=True)
class Settings:
    """The knobs the plan may turn down when time is short (a rung of the degradation ladder)."""

    train_steps: int
    views_per_test: int
    score_views: int
    score_top_c: int
    extra_view_ratio: float = 0.0  # second pass: extra views, as a fraction of the first pass's views
    rung: str = "full"

    def to_dict(self) -> dict:
        return asdict(self)


KIT = layout_of(FormatSpec())


def prompt_tokens(task: Task, test_index: int, layout: Layout = KIT) -> int:
    """Tokens of the prompt of test input ``test_index`` in ``layout`` (head, demonstrations, query input, the
    reply marker)."""
    return layout.prompt_count(task.train, task.test[test_index].input)


def output_bound_tokens(task: Task, test_index: int, layout: Layout = KIT) -> int:
    """``max_new_tokens`` of test input ``test_index``: the format's output bound (what decoding may generate)."""
    return layout.output_count(*ArcFormat.output_bound(task.train, task.test[test_index].input))


def view_tokens(task: Task, layout: Layout = KIT) -> tuple[list[int], list[int]]:
    """Per test input, the prompt tokens and output-bound tokens of one view: ``task_work``'s per-view inputs."""
    tests = range(len(task.test))
    return [prompt_tokens(task, i, layout) for i in tests], [output_bound_tokens(task, i, layout) for i in tests]


def task_work(task: Task, settings: Settings, *, example_tokens: float, batch: int, prompt_tokens_per_view: Sequence[int],
              output_tokens_per_view: Sequence[int], dfs: bool = False, dfs_max_tokens: int = 0) -> TaskWork:
    """Token work of one task. ``prompt/output_tokens_per_view`` are per test input (one view of each).
    ``dfs``: decoded by DFS, capped at ``dfs_max_tokens`` generated tokens per task and pass (0 = no cap)."""
    views = settings.views_per_test * (1.0 + settings.extra_view_ratio)
    prompts = sum(prompt_tokens_per_view) * views
    outputs = sum(output_tokens_per_view) * views
    # Scoring: each of score_views views encodes the prompt once, then runs the top-C candidates against it.
    k = settings.score_views
    return TaskWork(task.id, int(settings.train_steps * batch * example_tokens), settings.train_steps, int(prompts),
                    int(outputs), int(sum(prompt_tokens_per_view) * k),
                    int(sum(output_tokens_per_view) * k * max(1, settings.score_top_c)) if k else 0,
                    dfs, int(dfs_max_tokens * (1.0 + settings.extra_view_ratio)) if dfs else 0)


def measured_throughput(events: list[dict], prior: Throughput) -> Throughput:
    """Throughputs fitted to a run's worker events (what ``plan --throughput-file`` and ``dry-run
    --throughput-file`` take back). Each rate is fitted with the same token arithmetic the plan uses, so a plan
    made from the fitted file reproduces the measured phase times of the run it came from.

    - Training: seconds per task = tokens / rate + (steps x step cost + overhead), least squares over the
      trained tasks; when every task ran the same steps the intercept is split keeping the prior's overhead.
    - Decoding: fill = generated / bound tokens over the sampling calls, and the DFS multiple the same ratio over
      the DFS calls (events with ``method="dfs"``); output rate = generated tokens over the calls' seconds less
      their fixed overhead and prefill at the prior's prefill rate.
    - Scoring: the plan's scoring tokens per second (an effective rate: tasks with fewer distinct candidates
      than the plan's top C, or unanimous ones that need no scoring, make it higher than the engine's).
    - Start-up phases: their mean measured seconds. Phases the run did not measure keep the prior.
    """
    t = prior
    train = [e for e in events if e["phase"] == "train" and e["status"] == "ok" and e.get("steps")]
    if train:
        t = _fit_train(t, [(e["end"] - e["start"], float(e.get("tokens") or 0), float(e["steps"])) for e in train])
    dec = [e for e in events if e["phase"] == "decode" and e["status"] == "ok" and e.get("tokens_generated") is not None]
    if dec:
        gen, prompt, bound = (_per_call(dec, key) for key in ("tokens_generated", "prompt_tokens", "bound_tokens"))
        secs = sum(e["end"] - e["start"] for e in dec) - len(dec) * t.decode_call_overhead_s
        secs -= sum(prompt) / t.decode_prompt_tokens_per_s
        # DFS calls measure the DFS multiple (generated / bound, often > 1); sampling calls the fill (<= 1)
        dfs = [e.get("method") == "dfs" for e in dec]
        for is_dfs, key in ((False, "decode_output_fill"), (True, "dfs_decode_multiple")):
            g = sum(x for x, d in zip(gen, dfs) if d is is_dfs)
            b = sum(x for x, d in zip(bound, dfs) if d is is_dfs)
            if b > 0 and g > 0:
                t = replace(t, **{key: g / b if is_dfs else min(1.0, g / b)})
        if sum(gen) > 0:
            t = replace(t, decode_output_tokens_per_s=sum(gen) / max(secs, 1e-3))
    score = [e for e in events if e["phase"] == "score" and e["status"] == "ok" and "planned_prompt_tokens" in e]
    secs = sum(e["end"] - e["start"] for e in score)
    if score and secs > 0:
        planned = sum(e["planned_prompt_tokens"] + e["planned_output_tokens"] * t.decode_output_fill for e in score)
        t = replace(t, score_tokens_per_s=planned / secs)
    for phase, key in (("startup_train", "train_startup_s"), ("startup_decode", "decode_startup_s"),
                       ("startup_score", "score_startup_s")):
        xs = [e["end"] - e["start"] for e in events if e["phase"] == phase and e["status"] == "ok"]
        if xs:
            t = replace(t, **{key: float(sum(xs) / len(xs))})
    return t


def measured_fields(events: list[dict]) -> set[str]:
    """The ``Throughput`` fields ``measured_throughput`` fits from ``events`` (the rest keep the prior)."""
    ok = lambda phase: [e for e in events if e["phase"] == phase and e["status"] == "ok"]  # noqa: E731
    out: set[str] = set()
    if any(e.get("steps") for e in ok("train")):
        out |= {"train_tokens_per_s", "train_step_s"}
    dec = [e for e in ok("decode") if e.get("tokens_generated") is not None]
    if any(e.get("method") != "dfs" for e in dec):
        out.add("decode_output_fill")
    if any(e.get("method") == "dfs" for e in dec):
        out.add("dfs_decode_multiple")
    if dec:
        out.add("decode_output_tokens_per_s")
    if any("planned_prompt_tokens" in e for e in ok("score")):
        out.add("score_tokens_per_s")
    for phase, key in (("startup_train", "train_startup_s"), ("startup_decode", "decode_startup_s"),
                       ("startup_score", "score_startup_s")):
        if ok(phase):
            out.add(key)
    return out


def throughput_document(events: list[dict], prior: Throughput) -> dict:
    """``measured_throughput.json``: the fields this run measured at the top, the others under ``priors`` (they are
    the prior's values, not measurements); ``Throughput.from_file`` reads both back."""
    fitted, measured = measured_throughput(events, prior).__dict__, measured_fields(events)
    return {**{k: v for k, v in fitted.items() if k in measured},
            "priors": {k: v for k, v in fitted.items() if k not in measured}}


def _per_call(events: list[dict], key: str) -> list[float]:
    """Per-call amounts from a decoder's cumulative counter (one per worker process; absent = 0)."""
    out, last = [], {}
    for e in events:
        v, w = float(e.get(key) or 0), e.get("worker")
        out.append(v - last[w] if w in last and v >= last[w] else v)
        last[w] = v
    return out


def _fit_train(t: Throughput, rows: list[tuple[float, float, float]]) -> Throughput:
    """``rows`` = (seconds, tokens, steps) per trained task -> tokens/s, step cost and per-task overhead."""
    secs, tok, steps = (np.array(c, dtype=float) for c in zip(*rows))
    varied = len(set(steps.tolist())) > 1
    x = np.stack([tok, steps, np.ones_like(tok)] if varied else [tok, np.ones_like(tok)], axis=1)
    coef = np.linalg.lstsq(x, secs, rcond=None)[0] if len(rows) >= x.shape[1] else None
    if coef is not None and len(rows) >= x.shape[1] + 2:
        # One task slowed by something else on the machine must not set the rate: drop residuals beyond
        # 3 robust standard deviations (MAD) and refit once.
        resid = secs - x @ coef
        keep = np.abs(resid) <= max(3 * 1.4826 * float(np.median(np.abs(resid - np.median(resid)))),
                                    0.1 * float(np.median(secs)))
        if keep.sum() >= x.shape[1] and not keep.all():
            coef = np.linalg.lstsq(x[keep], secs[keep], rcond=None)[0]
    if coef is None or coef[0] <= 0:  # too few tasks, or token counts explain nothing: keep the prior's rate
        fixed = float((secs - tok / t.train_tokens_per_s).mean())
        return replace(t, train_step_s=max(0.0, fixed - t.per_task_overhead_s) / max(float(steps.mean()), 1.0))
    rate = 1.0 / float(coef[0])
    if varied:
        return replace(t, train_tokens_per_s=rate, train_step_s=max(0.0, float(coef[1])),
                       per_task_overhead_s=max(0.0, float(coef[2])))
    intercept, n = max(0.0, float(coef[1])), float(steps[0])
    overhead = min(t.per_task_overhead_s, intercept)
    return replace(t, train_tokens_per_s=rate, train_step_s=(intercept - overhead) / n, per_task_overhead_s=overhead)


class CostModel:
    """Seconds from token work, per worker. ``calibrate`` re-fits a phase's throughput from measurements."""

    def __init__(self, throughput: Throughput):
        self.throughput = throughput

    def task_seconds(self, w: TaskWork) -> dict[str, float]:
        t = self.throughput
        return {
            "train": (w.train_tokens / t.train_tokens_per_s + w.train_steps * t.train_step_s + t.per_task_overhead_s)
            if w.train_steps else 0.0,
            "decode": w.prompt_tokens / t.decode_prompt_tokens_per_s + self.generated(w) / t.decode_output_tokens_per_s,
            "score": (w.score_tokens + w.score_output_tokens * t.decode_output_fill) / t.score_tokens_per_s,
        }

    def generated(self, w: TaskWork) -> float:
        """Tokens decoding generates for ``w``: the bound x fill, or x the DFS multiple within the DFS cap."""
        t = self.throughput
        if not w.dfs:
            return w.output_tokens * t.decode_output_fill
        out = w.output_tokens * t.dfs_decode_multiple
        return min(out, w.dfs_cap) if w.dfs_cap else out

    def startup_seconds(self, trains: bool, scores: bool) -> float:
        t = self.throughput
        return (t.train_startup_s if trains else 0.0) + t.decode_startup_s + (t.score_startup_s if scores else 0.0)

    def calibrate(self, phase: str, tokens: float, seconds: float, weight: float = 1.0) -> None:
        """Blend the measured rate into the model (weight 1 = replace). Ignores empty measurements."""
        if tokens <= 0 or seconds <= 0:
            return
        key = {"train": "train_tokens_per_s", "decode": "decode_output_tokens_per_s", "score": "score_tokens_per_s"}[phase]
        old = getattr(self.throughput, key)
        self.throughput = replace(self.throughput, **{key: (1 - weight) * old + weight * tokens / seconds})


@dataclass
class WorkerPlan:
    worker: int
    task_ids: list[str]
    seconds: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class Plan:
    """Predicted time per phase and per worker, and the settings (rung of the ladder) that fit."""

    settings: Settings
    workers: list[WorkerPlan]
    available_seconds: float
    fits: bool
    ladder: list[dict]  # every rung tried: settings and predicted makespan

    @property
    def makespan(self) -> float:
        return max((w.total for w in self.workers), default=0.0)

    def assignment(self) -> dict[str, int]:
        return {tid: w.worker for w in self.workers for tid in w.task_ids}

    def to_dict(self) -> dict:
        return {"settings": self.settings.to_dict(), "available_seconds": self.available_seconds, "fits": self.fits,
                "makespan_seconds": self.makespan, "ladder": self.ladder,
                "workers": [{"worker": w.worker, "tasks": w.task_ids, "seconds": w.seconds, "total": w.total}
                            for w in self.workers]}

    def format_table(self) -> str:
        lines = [f"settings: {self.settings.to_dict()}  ({'fits' if self.fits else 'DOES NOT FIT'} in {self.available_seconds:.0f}s)",
                 f"{'worker':>6} {'tasks':>5} " + " ".join(f"{p:>9}" for p in PHASES) + f" {'total':>9}"]
        for w in self.workers:
            lines.append(f"{w.worker:>6} {len(w.task_ids):>5} " + " ".join(f"{w.seconds.get(p, 0):>9.1f}" for p in PHASES)
                         + f" {w.total:>9.1f}")
        lines.append("ladder: " + "; ".join(f"{r['settings']['rung']}={r['makespan']:.0f}s" for r in self.ladder))
        return "\n".join(lines)


def balance(costs: dict[str, float], workers: int) -> list[list[str]]:
    """Longest-processing-time-first: each task, costliest first, to the least loaded worker.

    A static balanced split rather than a shared queue: each worker must know its tasks before it starts vLLM
    with all their adapters in one engine, and a GPU worker cannot steal a task whose adapter another trained.
    """
    loads = [0.0] * workers
    out: list[list[str]] = [[] for _ in range(workers)]
    for tid in sorted(costs, key=lambda t: (-costs[t], t)):
        i = min(range(workers), key=lambda j: (loads[j], j))
        out[i].append(tid)
        loads[i] += costs[tid]
    return out


def ladder(full: Settings, min_steps: int = 1) -> list[Settings]:
    """The degradation ladder, in order: full → fewer TTT steps → no TTT → fewer views → minimum."""
    rungs = [full]
    steps = full.train_steps
    while steps // 2 >= max(min_steps, 1) and steps > 1:
        steps //= 2
        rungs.append(replace(full, train_steps=steps, rung=f"steps={steps}"))
    no_ttt = replace(full, train_steps=0, rung="no-ttt")
    rungs.append(no_ttt)
    views = full.views_per_test
    while views > 1:
        views = max(1, views // 2)
        rungs.append(replace(no_ttt, views_per_test=views, score_views=min(no_ttt.score_views, views),
                             rung=f"no-ttt,views={views}"))
    return rungs


def make_plan(works_for: Callable[[Settings], list[TaskWork]], full: Settings, model: CostModel, workers: int,
              available_seconds: float, scores: bool = True) -> Plan:
    """The first rung of the ladder whose predicted makespan fits ``available_seconds`` (else the last rung)."""
    tried: list[dict] = []
    best: Plan | None = None
    for s in ladder(full):
        works = works_for(s)
        per_task = {w.task_id: model.task_seconds(w) for w in works}
        groups = balance({tid: sum(v.values()) for tid, v in per_task.items()}, workers)
        wplans = []
        for i, ids in enumerate(groups):
            secs = {p: sum(per_task[t][p] for t in ids) for p in ("train", "decode", "score")}
            if ids:  # one generate call for the first pass, one for the second
                secs["decode"] += model.throughput.decode_call_overhead_s * (2 if s.extra_view_ratio > 0 else 1)
            secs = {"startup": model.startup_seconds(s.train_steps > 0, scores and s.score_views > 0) if ids else 0.0, **secs}
            wplans.append(WorkerPlan(i, ids, secs))
        plan = Plan(s, wplans, available_seconds, False, tried)
        tried.append({"settings": s.to_dict(), "makespan": plan.makespan})
        best = plan
        if plan.makespan <= available_seconds:
            plan.fits = True
            return plan
    assert best is not None
    return best
