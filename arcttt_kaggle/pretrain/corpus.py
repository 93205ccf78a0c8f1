"""The pretraining corpus: ARC tasks from Kaggle-format files, exclusion by id and by content, and token-bucketed
batches of leave-one-out examples, each under a view of its own.

Exclusion is by content as well as by id because the public ARC sets share tasks under reordered pairs: the
ARC-AGI-2 training split holds 376 ARC-AGI-1 evaluation tasks, their demonstrations shuffled (and one with a
modified pair), so an id check alone, or an equality check on the task, would train on the evaluation set.
A training task is dropped when its id is excluded or when any of its (input, output) pairs, demonstrations or
solved test pairs, shares a canonical key with a pair of an excluded task (``arc.heldout.canonical_pair_key``:
equal up to rotations, flips and a colour relabelling, which the augmentations below reproduce); pair order never
matters.

Views: each task has a pool of ``views_per_task`` distinct views (the identity first; the others cycle the 8
dihedral transforms, each with a random colour permutation, background kept where the config says), fixed for the
run. Every example draws its own view uniformly from the pool, its own query (the task's pairs in a fresh random
order, cycled) and its own demonstration order, so no view is favoured: the identity view's share of an epoch is
about 1 / ``views_per_task``, a task capped at a few examples still sees many views, and consecutive epochs differ.
``EpochViews`` counts what an epoch drew (``pretrain.json`` records it). Examples are grouped into batches of
similar length (length bucketing) so a short task never pays for a long one's padding: the measured padding share
is in ``Batch.padding``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from arcttt_kaggle.arc.augment import Augmentation, sample_augmentations
from arcttt_kaggle.arc.data import Task, load_challenges
from arcttt_kaggle.arc.heldout import CanonicalKey, canonical_pair_keys
from arcttt_kaggle.engines.format import IGNORE_INDEX, ArcFormat, LossOn
from arcttt_kaggle.engines.ttt_data import TokenCounter, TTTExample, new_example, stable_seed

from .synthetic import synthetic_tasks


def solutions_beside(challenges: Path) -> Path | None:
    """``X_solutions.json`` next to ``X_challenges.json``, when it exists."""
    name = challenges.name
    if not name.endswith("_challenges.json"):
        return None
    sol = challenges.with_name(name[: -len("_challenges.json")] + "_solutions.json")
    return sol if sol.exists() else None


def load_task_files(paths: Iterable[str | Path]) -> list[Task]:
    """Every task of the given ``*_challenges.json`` files, with test outputs where a ``*_solutions.json`` sits
    beside the file. A task id seen in an earlier file wins (the ARC-AGI-2 training split repeats ARC-AGI-1 ids
    with the same pairs reordered: one copy is enough)."""
    out: dict[str, Task] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"pretraining data {p} does not exist")
        loaded = load_challenges(p, strict=True, solutions=solutions_beside(p))
        for tid, task in loaded.tasks.items():
            out.setdefault(tid, task)
    return list(out.values())


@dataclass(frozen=True)
class Exclusion:
    """What may not be trained on: task ids and (input, output) pair contents (canonical keys)."""

    ids: frozenset[str] = frozenset()
    pairs: frozenset[CanonicalKey] = frozenset()
    sources: tuple[str, ...] = ()

    @classmethod
    def from_tasks(cls, tasks: Iterable[Task], sources: Sequence[str] = ()) -> "Exclusion":
        ids: set[str] = set()
        pairs: set[CanonicalKey] = set()
        for task in tasks:
            ids.add(task.id)
            pairs |= canonical_pair_keys(task)
        return cls(frozenset(ids), frozenset(pairs), tuple(sources))

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> "Exclusion":
        """Every task of the given challenges files (with the solutions beside them, when present)."""
        paths = [Path(p) for p in paths]
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"--exclude file {p} does not exist")
        return cls.from_tasks(load_task_files(paths), [str(p) for p in paths])

    def reason(self, task: Task) -> str:
        """Why ``task`` is excluded ("id", "content"), or "" when it may be trained on."""
        if task.id in self.ids:
            return "id"
        if canonical_pair_keys(task) & self.pairs:
            return "content"
        return ""


@dataclass(frozen=True)
class CorpusStats:
    files: tuple[str, ...]
    tasks_read: int
    excluded_by_id: int
    excluded_by_content: int
    tasks_kept: int
    pairs_kept: int

    def as_dict(self) -> dict:
        return {"files": list(self.files), "tasks_read": self.tasks_read, "excluded_by_id": self.excluded_by_id,
                "excluded_by_content": self.excluded_by_content, "tasks_kept": self.tasks_kept,
                "pairs_kept": self.pairs_kept}


def apply_exclusion(tasks: Sequence[Task], exclusion: Exclusion,
                    files: Sequence[str | Path] = ()) -> tuple[list[Task], CorpusStats]:
    kept, by_id, by_content = [], 0, 0
    for t in tasks:
        why = exclusion.reason(t)
        by_id += why == "id"
        by_content += why == "content"
        if not why:
            kept.append(t)
    pairs = sum(len(t.train) + sum(p.output is not None for p in t.test) for t in kept)
    return kept, CorpusStats(tuple(str(f) for f in files), len(tasks), by_id, by_content, len(kept), pairs)


def training_task(task: Task) -> Task:
    """The task with its solved test pairs moved among the demonstrations: every known pair is training data."""
    solved = tuple(p for p in task.test if p.output is not None)
    return Task(task.id, task.train + solved, task.test)


@dataclass(frozen=True)
class CorpusConfig:
    """How each epoch's sequences are drawn from the tasks."""

    views_per_task: int = field(default=256, metadata={"help": "the pool of distinct views of each task (identity "
                                "first, then the 8 dihedral transforms in turn, each with a random colour "
                                "permutation), fixed for the run; every example draws one uniformly, so the "
                                "identity view's share is ~1/views_per_task. 1: no augmentation"})
    examples_per_task: int = field(default=8, metadata={"help": "sequences per task per epoch, each with its own "
                                   "view, query and demonstration order (spreads the tokens over tasks; large "
                                   "tasks would otherwise dominate)"})
    keep_background: bool = field(default=True, metadata={"help": "colour permutations keep colour 0 (the usual "
                                  "ARC background) fixed"})
    loss_on: LossOn = field(default="all_outputs", metadata={"help": "loss on every output (each demonstration "
                            "output predicted from those before it) or on the query output only"})
    tokens_per_batch: int = field(default=8192, metadata={"help": "padded tokens per batch (memory is linear in "
                                  "it; rows of similar length share a batch)"})
    seed: int = field(default=0, metadata={"help": "data seed (epoch e uses seed + e)"})
    synthetic_tasks: int = field(default=0, metadata={"help": "fresh synthetic tasks (pretrain.synthetic "
                                 "families) added to each epoch; ~250 tokens x examples_per_task each"})

    def __post_init__(self):
        if self.synthetic_tasks < 0:
            raise ValueError(f"pretrain corpus: synthetic_tasks must be >= 0, got {self.synthetic_tasks}")
        for name in ("views_per_task", "examples_per_task", "tokens_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain corpus: {name} must be >= 1, got {getattr(self, name)}")
        if self.loss_on not in ("all_outputs", "query_output"):
            raise ValueError(f"pretrain corpus: loss_on must be all_outputs or query_output, got {self.loss_on!r}")


def task_views(task_id: str, cfg: CorpusConfig) -> list[Augmentation]:
    """The task's pool of views (geometry and colours; demonstration order is drawn per example), fixed for the
    run: deterministic from the config seed and the task id, the identity first."""
    return sample_augmentations(cfg.views_per_task, stable_seed(cfg.seed, f"views\x00{task_id}"), None,
                                include_identity=True, keep_background=cfg.keep_background, order=False)


def sample_examples(task: Task, n: int, views: Sequence[Augmentation], rng: np.random.Generator, max_tokens: int,
                    count_tokens: TokenCounter) -> list[TTTExample]:
    """``n`` leave-one-out examples of ``task``'s demonstrations, each under a view drawn uniformly from ``views``,
    its query taken from the pairs in a fresh random order (cycled, so every pair is a query about n/K times) and
    its demonstrations in a random order, trimmed to ``max_tokens`` (largest demonstrations dropped first).
    Exact duplicates are drawn again (at most 3n draws in all), so fewer than ``n`` come back only from a task
    with fewer distinct examples."""
    k = len(task.train)
    out: list[TTTExample] = []
    seen: set[tuple[bytes, ...]] = set()
    queue: list[int] = []
    for _ in range(3 * n):
        if len(out) == n:
            break
        if not queue:
            queue = [int(i) for i in rng.permutation(k)]
        q = queue.pop()
        view = views[int(rng.integers(len(views)))]
        rest = [i for i in range(k) if i != q]
        order = tuple(int(o) for o in rng.permutation(len(rest)))
        indices = [rest[o] for o in order]
        ex = new_example(task.id, [view.apply_pair(task.train[i]) for i in indices], indices,
                         view.apply_pair(task.train[q]), (q,), view, order, max_tokens, count_tokens, seen)
        if ex is not None:
            out.append(ex)
    return out


@dataclass
class EpochViews:
    """What the examples of one or more epochs drew: examples, those in the identity view (identity geometry and
    colours), and distinct (task, view) pairs."""

    examples: int = 0
    identity: int = 0
    distinct: set = field(default_factory=set)

    def add(self, ex: TTTExample) -> None:
        self.examples += 1
        view = Augmentation(ex.aug.dihedral, ex.aug.colors)
        self.identity += view.is_identity
        self.distinct.add((ex.task_id, view.to_string()))

    @property
    def identity_share(self) -> float:
        return self.identity / self.examples if self.examples else 0.0

    def as_dict(self) -> dict:
        return {"examples": self.examples, "identity_view_share": round(self.identity_share, 4),
                "distinct_views": len(self.distinct)}


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # (rows, length) int64, right-padded with pad_id
    labels: np.ndarray  # (rows, length) int64, IGNORE_INDEX where no loss (and on padding)
    attention_mask: np.ndarray  # (rows, length) int64
    tokens: int  # real (unpadded) tokens

    @property
    def padding(self) -> float:
        return 1.0 - self.tokens / self.input_ids.size


def epoch_sequences(tasks: Sequence[Task], fmt: ArcFormat, max_len: int, epoch: int, cfg: CorpusConfig,
                    views: EpochViews | None = None) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of every sequence of one epoch: ``cfg.examples_per_task`` examples of each task
    (``sample_examples``; the epoch seeds the draws), counted into ``views`` when given."""
    seqs = []
    for task in tasks:
        rng = np.random.default_rng(stable_seed(cfg.seed + epoch, f"examples\x00{task.id}"))
        pool = task_views(task.id, cfg)
        for ex in sample_examples(training_task(task), cfg.examples_per_task, pool, rng, max_len, fmt.token_count):
            enc = fmt.encode_example(ex.demos, ex.query, cfg.loss_on)
            seqs.append((enc.input_ids, enc.labels))
            if views is not None:
                views.add(ex)
    return seqs


def pairs_too_long(tasks: Sequence[Task], fmt: ArcFormat, max_len: int) -> int:
    """Pairs that are never a query within ``max_len`` tokens, even after the smallest other pair as the only
    demonstration (counted on the unaugmented task: a transpose changes a grid's row count, so a view may differ
    by a few tokens)."""
    n = 0
    for task in tasks:
        pairs = training_task(task).train
        for i, q in enumerate(pairs):
            others = [p for j, p in enumerate(pairs) if j != i]
            smallest = min(others, key=lambda p: p.input.size + p.output.size, default=None)
            n += fmt.token_count([smallest] if smallest is not None else [], q) > max_len
    return n


def bucket_batches(seqs: Sequence[tuple[list[int], list[int]]], tokens_per_batch: int, pad_id: int,
                   seed: int) -> list[Batch]:
    """Length bucketing: sequences sorted by length, cut into batches of at most ``tokens_per_batch`` padded
    tokens (a longer single sequence is a batch of its own), batches in a seeded random order."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i][0]), i))
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        n = len(seqs[i][0])  # ascending, so n is the padded length of cur + [i]
        if cur and n * (len(cur) + 1) > tokens_per_batch:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    rng = np.random.default_rng(seed)
    batches = []
    for g in (groups[j] for j in rng.permutation(len(groups))):
        length = max(len(seqs[i][0]) for i in g)
        ids = np.full((len(g), length), pad_id, dtype=np.int64)
        labels = np.full((len(g), length), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((len(g), length), dtype=np.int64)
        for r, i in enumerate(g):
            a, b = seqs[i]
            ids[r, : len(a)] = a
            labels[r, : len(b)] = b
            mask[r, : len(a)] = 1
        batches.append(Batch(ids, labels, mask, sum(len(seqs[i][0]) for i in g)))
    return batches


def epoch_tasks(tasks: Sequence[Task], epoch: int, cfg: CorpusConfig,
                excluded_pairs: frozenset = frozenset()) -> list[Task]:
    """The tasks of one epoch: the corpus plus ``cfg.synthetic_tasks`` fresh synthetic ones (seeded by the epoch,
    none sharing a pair with ``excluded_pairs``)."""
    if not cfg.synthetic_tasks:
        return list(tasks)
    return [*tasks, *synthetic_tasks(cfg.synthetic_tasks, stable_seed(cfg.seed + epoch, "synthetic"), excluded_pairs)]


def batch_stream(tasks: Sequence[Task], fmt: ArcFormat, max_len: int, pad_id: int, cfg: CorpusConfig,
                 start_epoch: int = 0, skip_batches: int = 0, excluded_pairs: frozenset = frozenset(),
                 views: EpochViews | None = None) -> Iterator[tuple[int, int, Batch]]:
    """(epoch, index within the epoch, batch) forever; deterministic from the config, so a resumed run that
    skips the batches it already saw continues on exactly the same data. ``views`` counts the examples of every
    epoch the stream builds."""
    epoch = start_epoch
    while True:
        seqs = epoch_sequences(epoch_tasks(tasks, epoch, cfg, excluded_pairs), fmt, max_len, epoch, cfg, views)
        if not seqs:
            raise ValueError(f"no pretraining sequence fits max_seq_len {max_len}")
        batches = bucket_batches(seqs, cfg.tokens_per_batch, pad_id, stable_seed(cfg.seed + epoch, "batches"))
        for j, b in enumerate(batches):
            if epoch == start_epoch and j < skip_batches:
                continue
            yield epoch, j, b
        epoch += 1

