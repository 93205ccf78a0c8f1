"""Compute-optimal allocation of extra decoding views, from what a cheap first pass produced.

The pipeline decodes every task under a small number M of views, estimates from those candidates how uncertain
each task still is, and spends the remaining time budget decoding extra views only where they can change the
answer. The idea follows Snell et al. (2024, "Scaling LLM Test-Time Compute Optimally"): the best use of extra
samples depends on a question's difficulty, and difficulty can be estimated from the model's own samples.

Difficulty features (per test input, from ``vote.flat_vote`` of its first-pass candidates):

* ``agreement`` = top grid's votes / max(views, candidates): 1.0 when every view produced the same grid;
* ``vote_margin`` = (top votes - second votes) / the same denominator: how safe the lead is;
* ``diversity`` = (distinct grids - 1) / (parsed candidates - 1): 0 when all parsed outputs agree, 1 when all
  differ (1 as well when nothing parsed);
* ``failure_rate`` = unparsable / candidates (1.0 when there are no candidates at all);
* ``logprob_margin`` = best log-probability of the top grid minus that of the second (reported, not used:
  cumulative log-probabilities depend on grid size and model, so they are not comparable across tasks, while
  the vote features are scale-free).

``uncertainty`` = weighted mean of (1 - agreement, 1 - vote_margin, diversity, failure_rate), in [0, 1]: 0 for a
unanimous first pass, 1 when nothing parsed. A task's estimate is that of its most uncertain test input (a task's
extra views decode all its test inputs, and the hardest one is where they matter). The bin is the number of
thresholds at or below the uncertainty (0 = easiest).

The policy (``allocate``) visits tasks hardest bin first, more uncertain first inside a bin, task id last (so it
is deterministic), grants each the extra views its bin asks for while the budget lasts (partially when only part
fits), gives unanimous tasks nothing, and never spends more than the budget. Budget units are whatever
``Difficulty.cost_per_view`` is measured in; by default one unit = decoding one test input under one view, so a
task with two test inputs costs 2 units per extra view (replace ``cost_per_view`` with a token-based cost if the
pipeline has one).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from arcttt_kaggle.arc.candidates import Candidate
from .vote import count_unparsable, flat_vote

FEATURES = ("disagreement", "small_margin", "diversity", "parse_failures")


@dataclass(frozen=True)
class AllocationConfig:
    """Difficulty bins and how many extra views each bin gets. Every field has ``help`` metadata."""

    thresholds: tuple[float, ...] = field(default=(0.2, 0.45, 0.65), metadata={
        "help": "uncertainty cut points in (0, 1), strictly increasing; k thresholds make k+1 bins, bin 0 easiest. "
                "With the default weights: 7 of 8 views agreeing = 0.13 (bin 0), 3 of 4 = 0.27 (bin 1), a 2-1-1 "
                "split of 4 = 0.48 (bin 2), all views different = 0.70 and nothing parsed = 1.0 (bin 3)"})
    extra_views_per_bin: tuple[int, ...] = field(default=(0, 4, 8, 12), metadata={
        "help": "extra views wanted by a task of each bin (one entry per bin); more for harder bins by default. "
                "Snell et al. found the hardest questions gain little from more samples: lower the last entry to "
                "reproduce that shape once real first-pass data shows it"})
    stop_if_unanimous: bool = field(default=True, metadata={
        "help": "tasks whose first pass is unanimous (see min_agreement) get no extra views"})
    min_agreement: float = field(default=1.0, metadata={
        "help": "a test input counts as unanimous when its top grid's agreement is at least this, with no parse "
                "failures; 1.0 = every view produced the same grid"})
    min_views_for_unanimous: int = field(default=2, metadata={
        "help": "fewer first-pass candidates than this can never count as unanimous (one sample agrees with itself)"})
    weights: tuple[float, float, float, float] = field(default=(0.4, 0.2, 0.2, 0.2), metadata={
        "help": "weights of (1-agreement, 1-vote_margin, diversity, failure_rate) in the uncertainty; normalized. "
                "Agreement weighs most: it is the quantity voting itself relies on"})
    min_extra: int = field(default=1, metadata={
        "help": "smallest grant worth making; when less fits in the budget the task is skipped and cheaper tasks "
                "further down may still be served"})
    max_extra_per_task: int = field(default=64, metadata={"help": "cap on extra views for any one task"})

    def __post_init__(self):
        th = tuple(float(t) for t in self.thresholds)
        if any(not 0 < t < 1 for t in th) or any(b <= a for a, b in zip(th, th[1:])):
            raise ValueError(f"thresholds must be strictly increasing values in (0, 1), got {self.thresholds}")
        object.__setattr__(self, "thresholds", th)
        ev = tuple(self.extra_views_per_bin)
        if len(ev) != len(th) + 1:
            raise ValueError(f"extra_views_per_bin needs {len(th) + 1} entries (one per bin), got {len(ev)}")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ev):
            raise ValueError(f"extra_views_per_bin must be ints >= 0, got {ev}")
        object.__setattr__(self, "extra_views_per_bin", ev)
        if not isinstance(self.stop_if_unanimous, bool):
            raise ValueError(f"stop_if_unanimous must be a bool, got {self.stop_if_unanimous!r}")
        if not 0 < float(self.min_agreement) <= 1:
            raise ValueError(f"min_agreement must be in (0, 1], got {self.min_agreement}")
        w = tuple(float(x) for x in self.weights)
        if len(w) != len(FEATURES) or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"weights must be {len(FEATURES)} finite numbers >= 0 with a positive sum, "
                             f"got {self.weights}")
        object.__setattr__(self, "weights", w)
        for name in ("min_views_for_unanimous", "min_extra", "max_extra_per_task"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")

    def bin_of(self, uncertainty: float) -> int:
        return bisect.bisect_right(self.thresholds, uncertainty)


@dataclass(frozen=True)
class Difficulty:
    """First-pass difficulty estimate of one task (features of its most uncertain test input)."""

    task_id: str
    num_tests: int = field(metadata={"help": "test inputs of the task"})
    views: int = field(metadata={"help": "first-pass views per test input"})
    candidates: int = field(metadata={"help": "candidates of the hardest test input"})
    top_votes: int = field(metadata={"help": "votes of its top grid"})
    agreement: float = field(metadata={"help": "top votes / max(views, candidates)"})
    vote_margin: float = field(metadata={"help": "(top - second votes) / max(views, candidates)"})
    logprob_margin: float | None = field(metadata={"help": "top minus second best log-prob; None if < 2 grids"})
    distinct: int = field(metadata={"help": "distinct parsed grids"})
    parse_failures: int = field(metadata={"help": "unparsable candidates"})
    failure_rate: float = field(metadata={"help": "parse failures / candidates (1.0 if no candidates)"})
    diversity: float = field(metadata={"help": "(distinct - 1) / (parsed - 1)"})
    uncertainty: float = field(metadata={"help": "weighted mean of the features, in [0, 1]"})
    bin: int = field(metadata={"help": "difficulty bin, 0 = easiest"})
    unanimous: bool = field(metadata={"help": "every test input unanimous (AllocationConfig.min_agreement)"})
    hardest_test: int = field(default=0, metadata={"help": "index of the test input the features describe"})
    cost_per_view: float = field(default=1.0, metadata={"help": "budget units one extra view costs this task"})
    per_test_uncertainty: tuple[float, ...] = field(default=(), metadata={"help": "uncertainty of each test input"})

    def __post_init__(self):
        if not (self.cost_per_view > 0 and math.isfinite(self.cost_per_view)):
            raise ValueError(f"task {self.task_id}: cost_per_view must be a positive finite number")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_test_uncertainty"] = list(self.per_test_uncertainty)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Difficulty":
        return cls(**{**d, "per_test_uncertainty": tuple(d.get("per_test_uncertainty", ()))})


def _test_features(cands: Sequence[Candidate], views: int, config: AllocationConfig) -> dict:
    n = len(cands)
    ranked = flat_vote(cands)
    failures = count_unparsable(cands)
    parsed = n - failures
    denom = max(views, n, 1)
    top = ranked[0].votes if ranked else 0
    second = ranked[1].votes if len(ranked) > 1 else 0
    agreement = top / denom
    margin = (top - second) / denom
    diversity = (len(ranked) - 1) / (parsed - 1) if parsed > 1 else (0.0 if parsed == 1 else 1.0)
    failure_rate = failures / n if n else 1.0
    terms = (1 - agreement, 1 - margin, diversity, failure_rate)
    u = sum(w * t for w, t in zip(config.weights, terms)) / sum(config.weights)
    return {"candidates": n, "top_votes": top, "agreement": agreement, "vote_margin": margin,
            "logprob_margin": ranked[0].best_logprob - ranked[1].best_logprob if len(ranked) > 1 else None,
            "distinct": len(ranked), "parse_failures": failures, "failure_rate": failure_rate,
            "diversity": diversity, "uncertainty": min(1.0, max(0.0, u)),
            "unanimous": n >= config.min_views_for_unanimous and failures == 0 and agreement >= config.min_agreement}


def estimate_difficulty(task_id: str, per_test_candidates: list[list[Candidate]], views_per_test: int,
                        config: AllocationConfig = AllocationConfig(),
                        cost_per_view: float | None = None) -> Difficulty:
    """Difficulty of a task from its first-pass candidates (one list per test input) decoded under M views.

    ``cost_per_view`` defaults to the number of test inputs (one decode per test input per extra view).
    A task with no test lists at all is treated as one test input with no candidates (maximally uncertain).
    """
    if views_per_test < 1:
        raise ValueError(f"task {task_id}: views_per_test must be >= 1, got {views_per_test}")
    tests = list(per_test_candidates) or [[]]
    feats = [_test_features(c, views_per_test, config) for c in tests]
    hardest = max(range(len(feats)), key=lambda i: (feats[i]["uncertainty"], -i))
    f = dict(feats[hardest])
    unanimous = all(x["unanimous"] for x in feats)
    del f["unanimous"]
    return Difficulty(task_id=task_id, num_tests=len(tests), views=views_per_test, **f,
                      bin=config.bin_of(f["uncertainty"]), unanimous=unanimous, hardest_test=hardest,
                      cost_per_view=float(len(tests) if cost_per_view is None else cost_per_view),
                      per_test_uncertainty=tuple(x["uncertainty"] for x in feats))


def allocate(estimates: Mapping[str, Difficulty], remaining_budget_units: float,
             config: AllocationConfig = AllocationConfig()) -> dict[str, int]:
    """Extra views per task (every task of ``estimates`` appears, 0 when it gets none).

    Deterministic; harder bins first, then higher uncertainty, then task id; each task gets
    ``min(extra_views_per_bin[bin], max_extra_per_task)`` views or as many as still fit (skipped below
    ``min_extra``); unanimous tasks get 0 when ``stop_if_unanimous``. The total cost
    ``sum(views * cost_per_view)`` never exceeds ``remaining_budget_units``. Bins are recomputed from each
    estimate's uncertainty with ``config`` so an estimate made under other thresholds cannot index out of range.
    """
    budget = float(remaining_budget_units)
    if math.isnan(budget) or budget < 0:
        raise ValueError(f"remaining_budget_units must be >= 0, got {remaining_budget_units}")
    out = {tid: 0 for tid in estimates}
    order = sorted(estimates.items(), key=lambda kv: (-config.bin_of(kv[1].uncertainty), -kv[1].uncertainty, kv[0]))
    left = budget
    for tid, d in order:
        if config.stop_if_unanimous and d.unanimous:
            continue
        want = min(config.extra_views_per_bin[config.bin_of(d.uncertainty)], config.max_extra_per_task)
        if want <= 0:
            continue
        n = min(want, int(left // d.cost_per_view)) if math.isfinite(left) else want
        while n > 0 and n * d.cost_per_view > left:  # guard against float rounding in the division
            n -= 1
        if n < config.min_extra:
            continue
        out[tid] = n
        left -= n * d.cost_per_view
    return out


def allocation_report(estimates: Mapping[str, Difficulty], allocation: Mapping[str, int],
                      remaining_budget_units: float) -> dict:
    """JSON-serializable record for the run report: per task its first-pass estimate and the extra views given."""
    spent = sum(allocation.get(t, 0) * d.cost_per_view for t, d in estimates.items())
    return {"budget_units": float(remaining_budget_units), "spent_units": float(spent),
            "tasks": {t: {**d.to_dict(), "extra_views": int(allocation.get(t, 0))} for t, d in estimates.items()}}
