"""Choose the two attempts for each test input: voting, product-of-experts re-ranking, program-expert ensemble.

Pipeline for one test input (``select_attempts``):

1. **Vote** over the TTT candidates (``vote.flat_vote`` or ``vote.two_level_vote``).
2. **Product of experts** (``method="poe"``, the ARChitects 2024): the top ``poe_top_c`` voted grids are scored
   under ``poe_views`` augmented views of the task, and each grid's log-likelihoods are summed over the views
   (a product of the per-view probabilities: a grid must look right from every perspective, which punishes
   answers that are only plausible in the frame they were decoded in). The final score is

       score = sum_v log p(grid | task under view v) + vote_weight * log(votes)

   **Why ``vote_weight = 1`` by default**: the vote count over N sampled views is a Monte-Carlo estimate of the
   model's marginal probability of the grid, so ``log(votes / N)`` is one more log-probability expert on the
   same nat scale as a single view's log-likelihood (``- log N`` is common to all grids and drops out). Weight 1
   gives it the same say as one scoring view: it decides between grids whose PoE sums are close (4 votes
   against 1 moves the score by 1.4 nats) but cannot overturn a clear PoE verdict (gaps between a right and a
   wrong grid summed over 8 views are typically tens of nats). ``vote_weight = 0`` is pure ARChitects PoE.
3. **Consistency with the demonstrations** (``consistency``, on by default): grids the demonstrations rule out
   (one colour where no demonstration output has one, a colour from nowhere, a shape the task never changes) follow
   every other grid, before and after the product of experts; none is dropped.
4. **Program-expert ensemble** (the BARC rule, Li et al. 2024, as used by Akyürek et al. 2024), with the
   verified program answers (programs that reproduce every demonstration), see ``ensemble_with_programs``.

Scores come either from a callable ``score_fn(task, test_index, grids, views) -> ndarray [len(grids),
len(views)]`` of log-likelihoods (the candidate scorer with the task's adapter), or, offline, precomputed in the
candidates themselves under the **view_logprobs convention**: ``Candidate.extra["view_logprobs"] =
{view_string: log_likelihood}``, where ``view_string`` is ``Augmentation.to_string()`` of the scoring view and
the value is the log-likelihood of this candidate's grid (original frame) given the task under that view. All
candidates of the same grid should carry the same numbers (the first value seen per view is used). Values must be
finite floats (JSON has no infinity; omit a view rather than writing -inf). A candidate file written by a GPU run
can thus carry PoE scores; ``attach_view_logprobs`` merges them in from a separate scores file.

Missing attempts stay ``None``; the caller fills them with its fallback (``attempts_or_fallback``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from arcttt_kaggle.arc.augment import Augmentation, sample_augmentations
from arcttt_kaggle.arc.candidates import Candidate, CandidateSet
from arcttt_kaggle.arc.data import Grid, Task, grid_key, grid_to_list
from .consistency import Evidence, demote_inconsistent
from .vote import Ranked, count_unparsable, vote

ScoreFn = Callable[[Task, int, list[Grid], list[Augmentation]], np.ndarray]
VIEW_LOGPROBS = "view_logprobs"
METHODS = ("flat", "two_level", "poe")


@dataclass(frozen=True)
class SelectConfig:
    """How attempts are chosen. Every field has ``help`` metadata (shown by CLIs and the run report)."""

    method: Literal["flat", "two_level", "poe"] = field(default="two_level", metadata={
        "help": "flat: frequency + logprob tie-break; two_level: per-family then cross-family voting; poe: "
                "re-rank the top voted grids by summed log-likelihood over augmented views (needs a score_fn or "
                "precomputed extra['view_logprobs']; falls back to poe_prerank otherwise)"})
    family_top: int = field(default=3, metadata={
        "help": "two-level voting: grids each family keeps (3 in Akyürek et al.)"})
    poe_prerank: Literal["flat", "two_level"] = field(default="flat", metadata={
        "help": "poe: voting method that picks the top poe_top_c grids to score (and orders unscored ones)"})
    poe_top_c: int = field(default=8, metadata={
        "help": "poe: number of top voted grids scored, >= 2 (compute <= poe_top_c x poe_views scorings per test "
                "input)"})
    poe_views: int = field(default=8, metadata={
        "help": "poe: K augmented views each grid is scored under (identity first, then the 7 other dihedral "
                "elements with random colors/orders); with precomputed scores the file's views are used"})
    vote_weight: float = field(default=1.0, metadata={
        "help": "poe: score = sum of view log-likelihoods + vote_weight * log(votes); 1 = votes count as one more "
                "expert on the nat scale, 0 = pure product of experts"})
    demote_inconsistent: bool = field(default=True, metadata={
        "help": "put grids the demonstrations rule out (selection.consistency: single colour, a new colour, a changed "
                "shape) after every other grid; never drops one; costs nothing"})
    use_program_expert: bool = field(default=True, metadata={
        "help": "ensemble verified program answers with TTT by the BARC rule (see ensemble_with_programs)"})
    seed: int = field(default=0, metadata={"help": "seed of the PoE scoring views (deterministic selection)"})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.poe_prerank not in ("flat", "two_level"):
            raise ValueError(f"poe_prerank must be 'flat' or 'two_level', got {self.poe_prerank!r}")
        for name, low in (("family_top", 1), ("poe_top_c", 2), ("poe_views", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if isinstance(self.vote_weight, bool) or not isinstance(self.vote_weight, (int, float)) \
                or not math.isfinite(self.vote_weight) or self.vote_weight < 0:
            raise ValueError(f"vote_weight must be a finite number >= 0, got {self.vote_weight!r}")
        if not isinstance(self.demote_inconsistent, bool):
            raise ValueError(f"demote_inconsistent must be a bool, got {self.demote_inconsistent!r}")
        if not isinstance(self.use_program_expert, bool):
            raise ValueError(f"use_program_expert must be a bool, got {self.use_program_expert!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


@dataclass(frozen=True)
class Ensembled:
    """What the program-expert rule did to one test input's attempts."""

    attempts: tuple[Grid | None, Grid | None]
    role: str = field(metadata={"help": "off | agreed | overrode | ambiguous | sole (see ensemble_with_programs)"})
    filled: bool = field(metadata={"help": "a program answer filled an attempt TTT left empty"})
    program_answers: int = field(metadata={"help": "distinct verified program answers"})

    @property
    def decided_by_program(self) -> bool:
        """The program expert chose attempt_1 (it overrode TTT, or TTT had no answer)."""
        return self.role in ("overrode", "sole")


@dataclass(frozen=True)
class Selection:
    """The two attempts for one test input and how they were reached."""

    attempts: tuple[Grid | None, Grid | None] = field(metadata={"help": "attempt_1, attempt_2; None = use fallback"})
    method: str = field(metadata={"help": "method actually used (poe falls back to its pre-ranking without scores)"})
    ranked: tuple[Ranked, ...] = field(metadata={"help": "all distinct TTT grids, best first, after re-ranking"})
    decided_by_program: bool = field(metadata={"help": "attempt_1 came from the program expert"})
    scored: int = field(metadata={"help": "compute used by PoE: number of (candidate grid, view) scorings"})
    considered: int = field(default=0, metadata={"help": "TTT candidates looked at (parsed or not)"})
    unparsable: int = field(default=0, metadata={"help": "TTT candidates whose grid is None"})
    program_role: str = field(default="off", metadata={"help": "see Ensembled.role"})
    program_filled: bool = field(default=False, metadata={"help": "a program answer filled an empty attempt"})
    program_answers: int = field(default=0, metadata={"help": "distinct verified program answers"})
    note: str = field(default="", metadata={"help": "why a fallback happened, if one did"})
    demoted: int = field(default=0, metadata={
        "help": "distinct grids put last because the demonstrations rule them out (selection.consistency)"})

    def to_dict(self) -> dict:
        return {"attempts": [None if g is None else grid_to_list(g) for g in self.attempts],
                "method": self.method, "decided_by_program": self.decided_by_program, "scored": self.scored,
                "considered": self.considered, "unparsable": self.unparsable, "program_role": self.program_role,
                "program_filled": self.program_filled, "program_answers": self.program_answers,
                "distinct": len(self.ranked), "demoted": self.demoted, "top": [r.to_dict() for r in self.ranked[:2]],
                "note": self.note}


# -- product of experts ---------------------------------------------------------------------------------------

def precomputed_view_logprobs(candidates: Sequence[Candidate]) -> dict[bytes, dict[str, float]]:
    """Per distinct grid, the merged ``extra["view_logprobs"]`` of its candidates (first value per view wins)."""
    out: dict[bytes, dict[str, float]] = defaultdict(dict)
    for c in candidates:
        scores = c.extra.get(VIEW_LOGPROBS) if c.grid is not None else None
        if not isinstance(scores, Mapping):
            continue
        merged = out[c.key]
        for view, ll in scores.items():
            if isinstance(ll, (int, float)) and not isinstance(ll, bool):
                merged.setdefault(str(view), float(ll))
    return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class Reranked:
    """Result of ``poe_rerank``."""

    ranked: list[Ranked]
    scored: int = field(metadata={"help": "(grid, view) log-likelihoods used"})
    fell_back: bool = field(default=False, metadata={"help": "no scores available: the vote order was kept"})
    note: str = ""


def poe_rerank(task: Task, test_index: int, ranked: Sequence[Ranked], candidates: Sequence[Candidate],
               config: SelectConfig, score_fn: ScoreFn | None = None) -> Reranked:
    """Re-rank the top ``config.poe_top_c`` of ``ranked`` by product of experts.

    With ``score_fn`` the grids are scored under ``sample_augmentations(poe_views, seed)`` (identity first). Without
    it, precomputed ``view_logprobs`` are used, summed over the views that every scored grid has (so the sums are
    comparable); if the scored grids share no view, each grid's mean per view is used instead and the note says
    so. Grids without scores keep their vote order after the scored ones; grids beyond the top C follow them.
    Non-finite log-likelihoods count as -inf. The note is empty unless something degraded. A single distinct
    grid (or a pool of one) is not scored at all: no score can change its rank, and scoring costs GPU time.
    """
    pool, rest = list(ranked[:config.poe_top_c]), list(ranked[config.poe_top_c:])
    if len(pool) < 2:
        return Reranked(list(ranked), 0)
    note = ""
    if score_fn is not None:
        views = sample_augmentations(config.poe_views, config.seed, num_train=len(task.train))
        ll = np.asarray(score_fn(task, test_index, [r.grid for r in pool], views), dtype=np.float64)
        if ll.shape != (len(pool), len(views)):
            raise ValueError(f"task {task.id} test {test_index}: score_fn returned shape {ll.shape}, "
                             f"expected ({len(pool)}, {len(views)})")
        ll = np.where(np.isfinite(ll), ll, -np.inf)
        poe = {r.key: (float(ll[i].sum()), len(views)) for i, r in enumerate(pool)}
        scored = ll.size
    else:
        pre = precomputed_view_logprobs(candidates)
        have = [r for r in pool if r.key in pre]
        if not have:
            return Reranked(list(ranked), 0, True, "poe: no score_fn and no precomputed view_logprobs; "
                                                   "kept the vote order")
        common = set.intersection(*(set(pre[r.key]) for r in have))
        poe = {}
        for r in have:
            views_used = sorted(common) if common else sorted(pre[r.key])
            vals = [pre[r.key][v] if math.isfinite(pre[r.key][v]) else -math.inf for v in views_used]
            total = sum(vals)
            poe[r.key] = (total if common else total / len(vals), len(vals))
        scored = sum(n for _, n in poe.values())
        if not common and len(have) > 1:
            note = "poe: scored grids share no view; compared mean log-likelihood per view"
        if len(have) < len(pool):
            note = (note + "; " if note else "") + f"poe: {len(pool) - len(have)} of top {len(pool)} grids unscored"
    w = float(config.vote_weight)
    scored_entries = [replace(r, poe_logprob=poe[r.key][0], poe_views=poe[r.key][1],
                              score=poe[r.key][0] + w * math.log(r.votes)) for r in pool if r.key in poe]
    order = {r.key: i for i, r in enumerate(pool)}
    scored_entries.sort(key=lambda r: (-r.score, -r.votes, order[r.key]))
    unscored = [r for r in pool if r.key not in poe]
    return Reranked(scored_entries + unscored + rest, int(scored), False, note)


# -- program-expert ensemble ----------------------------------------------------------------------------------

def program_answers(program_candidates: Sequence[Candidate]) -> list[Grid]:
    """Distinct grids of the VERIFIED program candidates, most-supported first (then first appearance).

    Unverified programs are ignored: a program that does not reproduce the demonstrations is no evidence.
    """
    support: dict[bytes, list] = {}
    for c in program_candidates:
        if c.verified and c.grid is not None:
            support.setdefault(c.key, [0, c.grid])[0] += 1
    items = sorted(enumerate(support.values()), key=lambda iv: (-iv[1][0], iv[0]))
    return [g for _, (_, g) in items]


def ensemble_with_programs(ttt_attempts: tuple[Grid | None, Grid | None],
                           program_candidates: Sequence[Candidate]) -> Ensembled:
    """The BARC ensemble rule between TTT's two attempts and the verified program answers.

    Let P be the distinct verified program answers (``program_answers``) and T1, T2 TTT's attempts.

    * no P: TTT unchanged (role ``off``).
    * no TTT answer (T1 None): the program answers come first, P[0], P[1] (role ``sole``); the rest is fallback.
    * T1 is in P (the expert **agrees**): TTT's order is kept (role ``agreed``).
    * T1 not in P and P has exactly ONE answer: the expert **overrides**, attempts = (P[0], T1) (role
      ``overrode``): a single program consistent with every demonstration is strong, independent evidence,
      and TTT's favourite still gets the second try.
    * T1 not in P and P has two or more distinct answers: several programs fit the demonstrations but disagree on
      the test input, so the expert is ambiguous and TTT keeps both attempts (role ``ambiguous``).

    In every case an attempt TTT left empty (T2 None) is filled with the most-supported program answer not
    already chosen (``filled``): an empty slot can only be gained from, and TTT's second choice, backed by votes
    or PoE, is never displaced by an ambiguous expert.
    """
    t1, t2 = ttt_attempts
    answers = program_answers(program_candidates)
    n = len(answers)
    if n == 0:
        return Ensembled((t1, t2), "off", False, 0)
    if t1 is None:
        return Ensembled((answers[0], answers[1] if n > 1 else None), "sole", False, n)
    keys = [grid_key(g) for g in answers]
    if grid_key(t1) in keys:
        role, attempts = "agreed", [t1, t2]
    elif n == 1:
        role, attempts = "overrode", [answers[0], t1]
    else:
        role, attempts = "ambiguous", [t1, t2]
    filled = False
    if attempts[1] is None:
        taken = grid_key(attempts[0])
        spare = [g for g, k in zip(answers, keys) if k != taken]
        if spare:
            attempts[1], filled = spare[0], True
    return Ensembled((attempts[0], attempts[1]), role, filled, n)


# -- top-level API --------------------------------------------------------------------------------------------

def select_attempts(task: Task, test_index: int, candidates: list[Candidate], config: SelectConfig,
                    score_fn: ScoreFn | None = None, program_candidates: Sequence[Candidate] = ()) -> Selection:
    """Pick attempt_1 and attempt_2 for test input ``test_index`` of ``task``.

    ``candidates`` are this test input's TTT candidates (any source; all of them vote). Verified program answers go
    in ``program_candidates`` and only act through the ensemble rule (when ``config.use_program_expert``).
    With ``config.demote_inconsistent`` the grids ``task``'s demonstrations rule out go last, before the product of
    experts (so its pool holds consistent grids first) and after it. Pure apart from calling ``score_fn``.
    """
    method, note, scored = config.method, "", 0
    evidence = Evidence.of(task, test_index) if config.demote_inconsistent else None

    def demote(items: list[Ranked]) -> tuple[list[Ranked], int]:
        return demote_inconsistent(items, [r.grid for r in items], evidence) if evidence else (items, 0)

    if config.method == "poe":
        ranked, demoted = demote(vote(candidates, config.poe_prerank, config.family_top))
        rr = poe_rerank(task, test_index, ranked, candidates, config, score_fn)
        ranked, scored, note = rr.ranked, rr.scored, rr.note
        ranked = demote(ranked)[0]  # the pool may hold inconsistent grids when too few others exist
        if rr.fell_back:  # nothing could be scored: the pre-ranking stands
            method = config.poe_prerank
    else:
        ranked, demoted = demote(vote(candidates, config.method, config.family_top))
    ttt = (ranked[0].grid if ranked else None, ranked[1].grid if len(ranked) > 1 else None)
    ens = ensemble_with_programs(ttt, program_candidates if config.use_program_expert else ())
    return Selection(attempts=ens.attempts, method=method, ranked=tuple(ranked),
                     decided_by_program=ens.decided_by_program, scored=scored, considered=len(candidates),
                     unparsable=count_unparsable(candidates), program_role=ens.role, program_filled=ens.filled,
                     program_answers=ens.program_answers, note=note, demoted=demoted)


def select_all(tasks: Mapping[str, Task], candidate_set: CandidateSet, config: SelectConfig,
               score_fn: ScoreFn | None = None, program_set: CandidateSet | None = None) -> dict[str, list[Selection]]:
    """``select_attempts`` for every test input of every task in ``tasks`` (each test input independently).

    Tasks or test inputs missing from the candidate sets get empty candidate lists (attempts None -> fallback).
    """
    out: dict[str, list[Selection]] = {}
    for tid, task in tasks.items():
        per_test = candidate_set.get(tid, [])
        progs = (program_set or {}).get(tid, [])
        out[tid] = [select_attempts(task, i, list(per_test[i]) if i < len(per_test) else [], config, score_fn,
                                    list(progs[i]) if i < len(progs) else [])
                    for i in range(len(task.test))]
    return out


def program_decided_tasks(selections: Mapping[str, Sequence[Selection]]) -> list[str]:
    """Task ids in which the program expert chose attempt_1 of at least one test input (input order)."""
    return [tid for tid, sels in selections.items() if any(s.decided_by_program for s in sels)]


def attempts_or_fallback(selection: Selection, fallback_pair: tuple[Grid, Grid]) -> tuple[Grid, Grid]:
    """Both attempts, with empty slots filled from ``fallback_pair`` in order, skipping a duplicate of attempt_1."""
    a1, a2 = selection.attempts
    spare = list(fallback_pair)
    if a1 is None:
        a1 = spare.pop(0)
    if a2 is None:
        a2 = next((g for g in spare if grid_key(g) != grid_key(a1)), spare[0])
    return a1, a2


def attach_view_logprobs(candidate_set: CandidateSet, scores_set: CandidateSet) -> CandidateSet:
    """Copy ``extra["view_logprobs"]`` from a scores file's candidates onto the matching (same grid) candidates.

    The scores file is any candidate file whose candidates carry ``extra["view_logprobs"]`` (e.g. written by the
    scorer after decoding). Views already present on a candidate are kept; grids only in the scores file are
    ignored (scores never create candidates).
    """
    out: CandidateSet = {}
    for tid, tests in candidate_set.items():
        score_tests = scores_set.get(tid, [])
        new_tests = []
        for i, per_test in enumerate(tests):
            pre = precomputed_view_logprobs(score_tests[i]) if i < len(score_tests) else {}
            new_tests.append([c if c.grid is None or c.key not in pre else
                              replace(c, extra={**c.extra, VIEW_LOGPROBS: {**pre[c.key],
                                                                           **c.extra.get(VIEW_LOGPROBS, {})}})
                              for c in per_test])
        out[tid] = new_tests
    return out
