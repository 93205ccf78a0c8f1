"""Test-time-training examples for one task: leave-one-out views of its demonstrations, augmented.

At test time the only labelled data of a task are its K demonstration pairs. Holding each pair out in turn as
the query and asking the model to produce its output from the other K-1 pairs turns the task into K training
examples whose shape is exactly the shape of the real problem (demonstrations, then a query). Each of them is
multiplied by N invertible augmentations (dihedral transform, color permutation, demonstration order) so the
LoRA learns the task's rule rather than its pixels, deduplicated (a symmetric task can make two views
identical, and training twice on one example only overweights it), capped (training cost is linear in the
examples), and trimmed to a token budget by dropping demonstrations (a long context costs memory
quadratically; a shorter prompt that still shows the rule is better than no example).

Small tasks get a top-up: with K = 3 leave-one-out gives only 3 distinct problems, so *leave-two-out*
examples (query ``i``, pair ``j`` also removed, one demonstration left) add 6 more. With K = 1 there is
nothing to hold out; the single pair becomes the query with no demonstrations, under N augmentations — the
only case where an example has no demonstrations, which is why ``TTTExample`` carries ``demos`` and
``query`` rather than a ``Task`` (whose ``train`` may not be empty).

Everything is deterministic from ``TTTDataConfig.seed`` and the task id (a SHA-256 of the id, never Python's
salted ``hash``), so a rerun trains on the same data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from arcttt_kaggle.arc.augment import Augmentation, sample_augmentations
from arcttt_kaggle.arc.data import Grid, Pair, Task, grid_key

# (demonstrations, query with output) -> tokens of the whole training example.
TokenCounter = Callable[[Sequence[Pair], Pair], int]


@dataclass(frozen=True)
class TTTDataConfig:
    """How many training examples to make per task, and how large they may be."""

    augmentations_per_task: int = field(default=8, metadata={
        "help": "N: augmented views per held-out configuration (the first is the identity view)."})
    max_examples_per_task: int = field(default=64, metadata={
        "help": "Cap on examples per task after deduplication; filled round-robin over held-out pairs."})
    max_tokens: int = field(default=8192, metadata={
        "help": "Token budget per example; longer examples lose demonstrations (largest first), then are dropped."})
    leave_two_out: bool = field(default=True, metadata={
        "help": "Top up small tasks with examples holding out the query and one more demonstration."})
    leave_two_out_below: int = field(default=4, metadata={
        "help": "Leave-two-out applies when K < this (and K >= 3, so one demonstration remains)."})
    keep_background: bool = field(default=True, metadata={
        "help": "Keep color 0 fixed under color permutations (black is the background in most ARC tasks)."})
    shuffle_demos: bool = field(default=True, metadata={
        "help": "Shuffle demonstration order in non-identity views (the rule must not depend on order)."})
    seed: int = field(default=0, metadata={"help": "Base seed; combined with a stable hash of the task id."})

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            want = type(f.default)
            # bool is an int subclass: reject True where a count is expected, and 1 where a flag is.
            if type(v) is not want:
                raise TypeError(f"TTTDataConfig.{f.name} must be {want.__name__}, got {type(v).__name__} {v!r}")
        for name, low in (("augmentations_per_task", 1), ("max_examples_per_task", 1), ("max_tokens", 1),
                          ("leave_two_out_below", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"TTTDataConfig.{name} must be >= {low}, got {getattr(self, name)}")

    @staticmethod
    def help() -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(TTTDataConfig)}


@dataclass(frozen=True)
class TTTExample:
    """One training example: augmented demonstrations and an augmented query whose output is the target.

    ``demos`` may be empty only for a task with a single demonstration pair. ``aug`` maps original grids to
    the ones here (``aug.invert_grid`` maps them back); its ``order`` (``None`` when there are no
    demonstrations) permutes the demonstrations remaining after holding out, *before* any token trimming:
    ``demo_indices`` is the authoritative record of which original pair each demonstration is.
    """

    task_id: str
    demos: tuple[Pair, ...]
    query: Pair
    query_index: int  # index in the ORIGINAL train list of the held-out query pair
    aug: Augmentation
    held_out: tuple[int, ...]  # original indices not offered as demonstrations: query first, then leave-two-out
    demo_indices: tuple[int, ...] = ()  # original index of each demonstration, in presented order

    @property
    def key(self) -> tuple[bytes, ...]:
        """Exact content identity (grids only): two examples with the same key have the same text."""
        return content_key(self.demos, self.query)

    def original_query_output(self) -> Grid:
        return self.aug.invert_grid(self.query.output)


def estimate_tokens(demos: Sequence[Pair], query: Pair) -> int:
    """The token floor of an example in the package's text format, from shapes alone.

    Per grid: its cells, one row separator per row and one marker; one end-of-sequence token after each
    output; one beginning-of-sequence token. This is exact for a tokenizer with one token per digit and
    marker (what ``format.ArcFormat`` checks) and a lower bound otherwise, so pass the real counter when it
    is known.
    """
    n = 1
    for p in (*demos, query):
        h, w = p.input.shape
        n += h * (w + 1) + 1
        if p.output is not None:
            h, w = p.output.shape
            n += h * (w + 1) + 2
    return n


def stable_seed(seed: int, task_id: str) -> int:
    """A 63-bit seed from the config seed and the task id, equal across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}\x00{task_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def held_out_configs(num_train: int, config: TTTDataConfig) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(leave-one-out, leave-two-out) configurations: tuples of original indices held out, query first."""
    loo = [(i,) for i in range(num_train)]
    l2o: list[tuple[int, ...]] = []
    if config.leave_two_out and 3 <= num_train < config.leave_two_out_below:
        l2o = [(i, j) for i in range(num_train) for j in range(num_train) if j != i]
    return loo, l2o


def build_ttt_examples(task: Task, config: TTTDataConfig = TTTDataConfig(),
                       count_tokens: TokenCounter = estimate_tokens) -> list[TTTExample]:
    """The test-time-training examples of ``task`` (see the module docstring for the recipe).

    Order: view-major round-robin — view 0 (identity) for every held-out pair, then view 1 for every pair,
    and so on, leave-one-out before the leave-two-out top-up — so the cap cuts views, never whole queries.
    """
    k = len(task.train)
    base_seed = stable_seed(config.seed, task.id)
    views = sample_augmentations(config.augmentations_per_task, base_seed, None, include_identity=True,
                                 keep_background=config.keep_background, order=False)
    cache: dict[tuple[int, int], Pair] = {}  # (view, original index) -> augmented pair

    def augmented(v: int, i: int) -> Pair:
        p = cache.get((v, i))
        if p is None:
            src = task.train[i]
            p = cache[(v, i)] = Pair(views[v].apply_grid(src.input), views[v].apply_grid(src.output))
        return p

    loo, l2o = held_out_configs(k, config)
    out: list[TTTExample] = []
    seen: set[tuple[bytes, ...]] = set()
    for group in (loo, l2o):
        for v, view in enumerate(views):
            for held in group:
                if len(out) >= config.max_examples_per_task:
                    return out
                rest = [i for i in range(k) if i not in held]
                if config.shuffle_demos and v > 0 and len(rest) > 1:
                    rng = np.random.default_rng([base_seed, v, *held])
                    order = tuple(int(x) for x in rng.permutation(len(rest)))
                else:
                    order = tuple(range(len(rest)))
                indices = [rest[o] for o in order]
                ex = new_example(task.id, [augmented(v, i) for i in indices], indices, augmented(v, held[0]),
                                 held, view, order, config.max_tokens, count_tokens, seen)
                if ex is not None:
                    out.append(ex)
    return out


def new_example(task_id: str, demos: list[Pair], indices: list[int], query: Pair, held: tuple[int, ...],
                view: Augmentation, order: tuple[int, ...], max_tokens: int, count_tokens: TokenCounter,
                seen: set[tuple[bytes, ...]]) -> TTTExample | None:
    """The example of these (already augmented) demonstrations and query, trimmed to ``max_tokens``; None when it
    cannot fit or its content is in ``seen`` (which it joins otherwise)."""
    kept = trim_demos(demos, indices, query, max_tokens, count_tokens)
    if kept is None:
        return None
    demos, indices = kept
    key = content_key(demos, query)
    if key in seen:
        return None
    seen.add(key)
    aug = Augmentation(view.dihedral, view.colors, order if order else None)
    return TTTExample(task_id, tuple(demos), query, held[0], aug, held, tuple(indices))


def trim_demos(demos: list[Pair], indices: list[int], query: Pair, max_tokens: int,
               count_tokens: TokenCounter) -> tuple[list[Pair], list[int]] | None:
    """Drop demonstrations, largest first, until the example fits; ``None`` when even one is too many.

    The largest pair goes first because it buys the most tokens per demonstration lost. An example that
    started with no demonstrations (K = 1) is kept only if it fits as is.
    """
    demos, indices = list(demos), list(indices)
    while count_tokens(demos, query) > max_tokens:
        if len(demos) <= 1:
            return None
        sizes = [p.input.size + p.output.size for p in demos]
        j = max(range(len(demos)), key=lambda t: (sizes[t], t))  # largest; ties: the later one
        del demos[j], indices[j]
    return demos, indices


def content_key(demos: Sequence[Pair], query: Pair) -> tuple[bytes, ...]:
    # grid_key includes the shape, so the tuple identifies the example's text exactly.
    parts = [grid_key(g) for p in demos for g in (p.input, p.output)]
    parts.append(b"Q" + grid_key(query.input))
    parts.append(grid_key(query.output))
    return tuple(parts)


def build_ttt_dataset(tasks: Mapping[str, Task] | Iterable[Task], config: TTTDataConfig = TTTDataConfig(),
                      count_tokens: TokenCounter = estimate_tokens) -> dict[str, list[TTTExample]]:
    """``build_ttt_examples`` for many tasks, keyed by task id (input order kept)."""
    items = tasks.values() if isinstance(tasks, Mapping) else tasks
    return {t.id: build_ttt_examples(t, config, count_tokens) for t in items}


@dataclass(frozen=True)
class TokenSummary:
    """Token totals of a set of examples, the input of the training cost model."""

    examples: int
    tokens: int
    max_tokens: int
    demos: int  # demonstrations over all examples (after trimming)

    @property
    def mean_tokens(self) -> float:
        return self.tokens / self.examples if self.examples else 0.0


def ttt_token_count(examples: Iterable[TTTExample], count_tokens: TokenCounter = estimate_tokens) -> TokenSummary:
    """Summarize examples for costing: count, total and largest token count, demonstrations used."""
    n = total = largest = demos = 0
    for ex in examples:
        t = count_tokens(ex.demos, ex.query)
        n += 1
        total += t
        largest = max(largest, t)
        demos += len(ex.demos)
    return TokenSummary(n, total, largest, demos)
