"""SYNTHETIC candidate generator: made-up candidate sets for testing selection logic. NOT model output.

Nothing here comes from a model. Given tasks WITH their solutions, it fabricates, from a seed, what a decoder
might have produced under several augmented views: the correct grid with a controlled frequency, a few wrong
"noise" grids (small edits of the solution, with a skewed popularity so that a wrong answer sometimes out-votes
the right one), unparsable outputs, cumulative log-probabilities, and per-view log-likelihoods for the
product of experts in ``extra["view_logprobs"]`` (the convention of ``select.py``). It can also fabricate a
program expert's verified answers. Files written from it carry ``source = "synthetic ..."`` and a ``meta``
block saying so, and every candidate's ``source`` is ``"synthetic"`` (programs: ``"program"`` with
``program = "synthetic"``), so the numbers can never be mistaken for accuracy: they exercise the harness's
plumbing (voting, PoE, ensemble, scoring against solutions) and claim nothing about any model.

Deterministic: each task's draws come from ``numpy.random.default_rng([seed, crc32(task_id)])``, independent of
task order and of the other tasks.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from arcttt_kaggle.arc.augment import sample_augmentations
from arcttt_kaggle.arc.candidates import Candidate, CandidateSet, write_candidate_file
from arcttt_kaggle.arc.data import Grid, Task, grid_key

SYNTHETIC_SOURCE = "synthetic (arcttt_kaggle.selection.synthetic; fabricated, not model output)"
SYNTHETIC_PROGRAM_SOURCE = "synthetic programs (arcttt_kaggle.selection.synthetic; fabricated, not model output)"


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the fabricated candidate sets. Every field has ``help`` metadata."""

    views: int = field(default=16, metadata={"help": "views M each test input is 'decoded' under"})
    samples_per_view: int = field(default=1, metadata={"help": "candidates per view"})
    p_correct: float = field(default=0.35, metadata={"help": "mean probability that a sample is the correct grid"})
    p_correct_spread: float = field(default=0.25, metadata={
        "help": "per-test-input p is uniform in p_correct +- spread (clipped), so tasks range from easy to hard"})
    p_absent: float = field(default=0.15, metadata={
        "help": "fraction of test inputs whose correct grid is never produced (oracle misses)"})
    noise_grids: int = field(default=4, metadata={"help": "distinct wrong grids per test input"})
    noise_skew: float = field(default=1.5, metadata={
        "help": "Zipf exponent of wrong-grid popularity (higher: one dominant wrong answer)"})
    p_unparsable: float = field(default=0.1, metadata={"help": "probability that a sample does not parse"})
    logprob_correct: float = field(default=-3.0, metadata={"help": "mean cumulative logprob of correct samples"})
    logprob_noise: float = field(default=-4.0, metadata={"help": "mean cumulative logprob of wrong samples"})
    logprob_std: float = field(default=2.0, metadata={"help": "spread of cumulative logprobs"})
    score_views: int = field(default=8, metadata={"help": "views with per-view log-likelihoods (0: none)"})
    score_gap: float = field(default=1.0, metadata={
        "help": "mean per-view log-likelihood advantage of the correct grid over wrong ones"})
    score_std: float = field(default=2.0, metadata={"help": "per-view noise of the log-likelihoods"})
    p_program: float = field(default=0.3, metadata={"help": "fraction of test inputs with verified program answers"})
    p_program_correct: float = field(default=0.8, metadata={"help": "probability the program answer is correct"})
    p_program_ambiguous: float = field(default=0.2, metadata={
        "help": "probability of a second, different verified answer"})
    seed: int = field(default=0, metadata={"help": "master seed"})

    def __post_init__(self):
        for name in ("views", "samples_per_view", "noise_grids"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.score_views < 0:
            raise ValueError("score_views must be >= 0")
        for name in ("p_correct", "p_correct_spread", "p_absent", "p_unparsable", "p_program",
                     "p_program_correct", "p_program_ambiguous"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.logprob_std < 0 or self.score_std < 0:
            raise ValueError("standard deviations must be >= 0")


def _rng(seed: int, task_id: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task_id.encode()), stream])


def _noise_grid(solution: Grid, rng: np.random.Generator, taken: set[bytes]) -> Grid:
    """A wrong grid near the solution: a few cells recolored, or one row/column dropped or repeated."""
    for _ in range(100):
        g = solution.copy()
        kind = rng.integers(3)
        if kind == 0 or g.size == 1:
            for _ in range(int(rng.integers(1, 4))):
                r, c = int(rng.integers(g.shape[0])), int(rng.integers(g.shape[1]))
                g[r, c] = (int(g[r, c]) + int(rng.integers(1, 10))) % 10
        elif kind == 1:
            axis = int(rng.integers(2))
            if g.shape[axis] > 1:
                g = np.delete(g, int(rng.integers(g.shape[axis])), axis=axis)
        elif g.shape[0] < 30:
            r = int(rng.integers(g.shape[0]))
            g = np.insert(g, r, g[r], axis=0)
        g = np.ascontiguousarray(g, dtype=np.uint8)
        if grid_key(g) not in taken:
            taken.add(grid_key(g))
            return g
    raise AssertionError("could not make a distinct noise grid")  # 100 tries on a >= 1-cell grid never all collide


def synthetic_test_candidates(task: Task, test_index: int, solution: Grid,
                              config: SyntheticConfig) -> list[Candidate]:
    """Fabricated candidates for one test input (see the module docstring)."""
    rng = _rng(config.seed, task.id, 1 + test_index)
    absent = rng.random() < config.p_absent
    p = 0.0 if absent else float(np.clip(config.p_correct + rng.uniform(-1, 1) * config.p_correct_spread, 0, 1))
    taken = {grid_key(solution)}
    noise = [_noise_grid(solution, rng, taken) for _ in range(config.noise_grids)]
    popularity = 1.0 / np.arange(1, len(noise) + 1) ** config.noise_skew
    popularity /= popularity.sum()
    score_views = [v.to_string() for v in sample_augmentations(config.score_views, config.seed + 1,
                                                                num_train=len(task.train))]
    offsets = rng.normal(0.0, 0.5, size=len(noise))  # some wrong grids are intrinsically more plausible
    per_grid_scores: dict[bytes, dict[str, float]] = {}
    for g, base in [(solution, -10.0 + config.score_gap)] + [(n, -10.0 + o) for n, o in zip(noise, offsets)]:
        lls = base + rng.normal(0.0, config.score_std, size=len(score_views))
        per_grid_scores[grid_key(g)] = {v: round(float(min(ll, -0.01)), 4) for v, ll in zip(score_views, lls)}
    out: list[Candidate] = []
    for view in sample_augmentations(config.views, config.seed, num_train=len(task.train)):
        for s in range(config.samples_per_view):
            u = rng.random()
            if u < config.p_unparsable:
                out.append(Candidate(None, "synthetic", view.to_string(), round(float(-abs(rng.normal(8, 3))), 4),
                                     extra={"synthetic": True, "sample": s}))
                continue
            correct = rng.random() < p
            g = solution if correct else noise[int(rng.choice(len(noise), p=popularity))]
            mean = config.logprob_correct if correct else config.logprob_noise
            lp = -abs(float(rng.normal(mean, config.logprob_std)))
            extra = {"synthetic": True, "sample": s}
            if score_views:
                extra["view_logprobs"] = per_grid_scores[grid_key(g)]
            out.append(Candidate(g.copy(), "synthetic", view.to_string(), round(lp, 4), extra=extra))
    return out


def synthetic_program_candidates(task: Task, test_index: int, solution: Grid,
                                 config: SyntheticConfig) -> list[Candidate]:
    """Fabricated verified program answers for one test input (often none)."""
    rng = _rng(config.seed, task.id, 1000 + test_index)
    if rng.random() >= config.p_program:
        return []
    taken = {grid_key(solution)}
    first = solution if rng.random() < config.p_program_correct else _noise_grid(solution, rng, taken)
    out = [Candidate(first.copy(), "program", "", 0.0, "synthetic", True, {"synthetic": True})]
    if rng.random() < config.p_program_ambiguous:
        other = _noise_grid(solution, rng, taken | {grid_key(first)})
        out.append(Candidate(other, "program", "", 0.0, "synthetic-alt", True, {"synthetic": True}))
    return out


def synthetic_candidate_sets(tasks: Mapping[str, Task], config: SyntheticConfig) -> tuple[CandidateSet, CandidateSet]:
    """(TTT-like candidates, program candidates) for every task whose test outputs are all known."""
    ttt: CandidateSet = {}
    progs: CandidateSet = {}
    for tid, task in tasks.items():
        outs = task.test_outputs
        if any(o is None for o in outs):
            continue
        ttt[tid] = [synthetic_test_candidates(task, i, o, config) for i, o in enumerate(outs)]
        progs[tid] = [synthetic_program_candidates(task, i, o, config) for i, o in enumerate(outs)]
    return ttt, progs


def write_synthetic_files(tasks: Mapping[str, Task], config: SyntheticConfig, folder: str | Path) -> tuple[Path, Path]:
    """Write ``synthetic_candidates.json`` and ``synthetic_programs.json`` (labelled synthetic) into ``folder``."""
    folder = Path(folder)
    ttt, progs = synthetic_candidate_sets(tasks, config)
    meta = {"synthetic": True, "warning": "fabricated candidates for testing selection logic; not model output",
            "config": asdict(config)}
    cand_path, prog_path = folder / "synthetic_candidates.json", folder / "synthetic_programs.json"
    write_candidate_file(cand_path, ttt, SYNTHETIC_SOURCE, meta)
    write_candidate_file(prog_path, progs, SYNTHETIC_PROGRAM_SOURCE, meta)
    return cand_path, prog_path
