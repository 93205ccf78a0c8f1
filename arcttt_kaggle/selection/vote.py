"""Voting over the candidates decoded for one test input: flat frequency voting and two-level voting.

Both functions are pure: they take the candidates of ONE test input (a list of ``Candidate``) and return every
distinct parsed grid as a ``Ranked`` entry, best first. Grids are compared exactly (``grid_key``: shape and
cells), so the same answer decoded under different views merges into one entry whose ``votes`` count every
candidate that produced it. Unparsable candidates (``grid is None``) never appear in the ranking and so can never
win, but they are counted: ``count_unparsable`` reports them and the difficulty estimate uses the rate.

Ties are always broken deterministically; the last resort is the order of first appearance in the input list
(the decoder emits the identity view first), never hashing or set order, so a rerun gives the same attempts.

Why two methods: flat frequency voting (Omni-ARC, Barbadillo 2024) treats every sample as one independent vote
and is the strongest simple baseline when views are balanced. Two-level voting (Akyürek et al. 2024, "The
Surprising Effectiveness of Test-Time Training", hierarchical voting) first lets each geometric transformation
choose its own favourites, so one transformation whose samples happen to be numerous or degenerate (say a
transpose that makes the task look like a different, easy task) cannot outvote the others on its own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterable, Sequence

from arcttt_kaggle.arc.augment import Augmentation
from arcttt_kaggle.arc.candidates import Candidate
from arcttt_kaggle.arc.data import Grid, grid_to_list

IDENTITY_FAMILY = "id"


@dataclass(frozen=True)
class Ranked:
    """One distinct candidate grid for one test input, with the evidence behind its rank."""

    grid: Grid = field(metadata={"help": "the grid, in the task's original frame"})
    key: bytes = field(metadata={"help": "grid_key(grid): exact identity (shape + cells)"})
    votes: int = field(metadata={"help": "number of candidates that produced exactly this grid"})
    families: int = field(metadata={"help": "distinct transformation families (dihedral names) among those candidates"})
    best_logprob: float = field(metadata={"help": "highest cumulative log-probability among those candidates"})
    mean_logprob: float = field(metadata={"help": "mean cumulative log-probability among those candidates"})
    sum_logprob: float = field(metadata={
        "help": "sum of the candidates' cumulative log-probabilities (Omni-ARC tie-break)"})
    sources: tuple[str, ...] = field(metadata={"help": "distinct Candidate.source values, sorted"})
    views: tuple[str, ...] = field(metadata={"help": "distinct view strings that produced it, in first-seen order"})
    first_index: int = field(metadata={
        "help": "index of its first candidate in the input list (last-resort tie-break)"})
    family_votes: int = field(default=0, metadata={
        "help": "two-level voting: number of families that put this grid in their per-family top; 0 under flat voting"})
    score: float = field(default=0.0, metadata={
        "help": "the method's primary ordering score: votes (flat), family_votes (two-level), "
                "combined PoE score (poe)"})
    poe_logprob: float | None = field(default=None, metadata={
        "help": "product of experts: summed log-likelihood over the scoring views; None when not scored"})
    poe_views: int = field(default=0, metadata={"help": "number of views summed into poe_logprob"})

    def to_dict(self) -> dict:
        """JSON-friendly summary (the grid as lists), for reports."""
        return {"grid": grid_to_list(self.grid), "votes": self.votes, "families": self.families,
                "family_votes": self.family_votes, "best_logprob": self.best_logprob,
                "mean_logprob": self.mean_logprob, "sum_logprob": self.sum_logprob, "sources": list(self.sources),
                "views": list(self.views), "score": self.score, "poe_logprob": self.poe_logprob,
                "poe_views": self.poe_views}


def family_of(view: str) -> str:
    """The transformation family of a candidate's view: the dihedral part of ``Augmentation.from_string(view)``.

    An empty view (programs, or a decoder that does not augment) is the untransformed frame, family ``"id"``.
    A view string that does not parse is kept as its own family rather than raising: a foreign solver's candidate
    file must not sink selection, and an unknown view is at worst one more independent voter.
    """
    if not view:
        return IDENTITY_FAMILY
    if type(view) is str:  # the same few view strings recur for every candidate: parse each once
        return _family_of_view(view)
    return _parse_family(view)


def _parse_family(view) -> str:
    try:
        return Augmentation.from_string(view).family
    except ValueError:
        return view


@lru_cache(maxsize=4096)
def _family_of_view(view: str) -> str:
    """``family_of`` of a non-empty view string, cached (parsing is pure)."""
    return _parse_family(view)


def count_unparsable(candidates: Iterable[Candidate]) -> int:
    """Candidates whose text did not parse into a grid (they vote for nothing, but measure uncertainty)."""
    return sum(1 for c in candidates if c.grid is None)


def _aggregate(candidates: Sequence[Candidate]) -> dict[bytes, Ranked]:
    """Merge candidates by exact grid; entries keep first-appearance order (dicts are insertion-ordered)."""
    members: dict[bytes, list[tuple[int, Candidate]]] = defaultdict(list)
    for i, c in enumerate(candidates):
        if c.grid is not None:
            members[c.key].append((i, c))
    out: dict[bytes, Ranked] = {}
    for key, items in members.items():
        lps = [float(c.logprob) for _, c in items]
        views: list[str] = []
        for _, c in items:
            if c.view not in views:
                views.append(c.view)
        out[key] = Ranked(
            grid=items[0][1].grid, key=key, votes=len(items),
            families=len({family_of(c.view) for _, c in items}),
            best_logprob=max(lps), mean_logprob=sum(lps) / len(lps), sum_logprob=sum(lps),
            sources=tuple(sorted({c.source for _, c in items})), views=tuple(views), first_index=items[0][0])
    return out


def flat_vote(candidates: Sequence[Candidate]) -> list[Ranked]:
    """Rank distinct grids by frequency; ties by cumulative log-probability (Omni-ARC), then first appearance.

    Order: ``votes`` (desc), then ``sum_logprob`` (desc) — among grids with equal votes this is the same order as
    the mean log-probability, i.e. the grid the model found more likely on average wins the tie — then
    ``best_logprob`` (desc), then first appearance. ``score`` is set to ``votes``.
    """
    agg = _aggregate(candidates)
    ranked = sorted(agg.values(), key=lambda r: (-r.votes, -r.sum_logprob, -r.best_logprob, r.first_index))
    return [replace(r, score=float(r.votes)) for r in ranked]


def two_level_vote(candidates: Sequence[Candidate], per_family_top: int = 3) -> list[Ranked]:
    """Hierarchical voting after Akyürek et al. (2024): vote inside each transformation family, then across them.

    What the paper describes (as we read it): predictions are grouped by the geometric transformation of the task
    they were decoded under; inside each group the top-3 most frequent predictions are kept; the kept
    predictions of all groups are then pooled and the overall most frequent ones submitted, ties going to
    predictions of the identity transformation. The paper also pads a group that has fewer than 3 distinct
    predictions with synthesized row-/column-majority grids; we do NOT do that (we never submit a grid that no
    view produced), so a group with fewer distinct grids simply contributes fewer.

    Exactly what this function does:

    1. Level 1, per family (``family_of(c.view)``, the dihedral name; color permutations and demonstration orders
       of the same geometry share a family): count each distinct parsed grid; rank by count (desc), then best
       log-probability within the family (desc), then first appearance; keep the top ``per_family_top``.
    2. Level 2, across families: each family casts one vote for each grid it kept, so a grid's ``family_votes``
       is the number of families that ranked it in their top ``per_family_top``. Rank by ``family_votes`` (desc),
       then total ``votes`` over all candidates (desc), then "produced under the identity family" (the paper's
       tie rule), then ``sum_logprob`` (desc), then first appearance.

    Grids that no family kept still appear, after all kept ones (``family_votes == 0``), ordered by the same key,
    so the list is always the complete set of distinct grids. ``score`` is set to ``family_votes``.
    """
    if per_family_top < 1:
        raise ValueError(f"per_family_top must be >= 1, got {per_family_top}")
    agg = _aggregate(candidates)
    by_family: dict[str, dict[bytes, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for i, c in enumerate(candidates):
        if c.grid is not None:
            by_family[family_of(c.view)][c.key].append((i, float(c.logprob)))
    family_votes: dict[bytes, int] = defaultdict(int)
    in_identity: set[bytes] = set()
    for fam, grids in by_family.items():
        if fam == IDENTITY_FAMILY:
            in_identity.update(grids)
        order = sorted(grids.items(), key=lambda kv: (-len(kv[1]), -max(lp for _, lp in kv[1]), kv[1][0][0]))
        for key, _ in order[:per_family_top]:
            family_votes[key] += 1
    ranked = sorted(agg.values(), key=lambda r: (-family_votes[r.key], -r.votes, r.key not in in_identity,
                                                 -r.sum_logprob, r.first_index))
    return [replace(r, family_votes=family_votes[r.key], score=float(family_votes[r.key])) for r in ranked]


def vote(candidates: Sequence[Candidate], method: str, per_family_top: int = 3) -> list[Ranked]:
    """Dispatch by name: ``"flat"`` or ``"two_level"``."""
    if method == "flat":
        return flat_vote(candidates)
    if method == "two_level":
        return two_level_vote(candidates, per_family_top)
    raise ValueError(f"unknown voting method {method!r}; expected 'flat' or 'two_level'")
