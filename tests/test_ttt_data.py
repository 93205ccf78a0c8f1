"""ttt_data.py: leave-one-out examples under augmentations, deduplicated, capped, trimmed, deterministic."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from arcttt_kaggle.arc.data import Pair, Task, grid_key
from arcttt_kaggle.engines.ttt_data import (TTTDataConfig, build_ttt_dataset, build_ttt_examples, estimate_tokens,
                                    stable_seed, ttt_token_count)


def random_task(k: int, seed: int = 0, side: int = 5, task_id: str = "0000beef") -> Task:
    """Generic grids (random cells, colors 0..9): no augmentation or hold-out makes two examples equal."""
    rng = np.random.default_rng(seed)
    g = lambda: rng.integers(0, 10, size=(side, side + 1), dtype=np.uint8)  # noqa: E731
    return Task(task_id, tuple(Pair(g(), g()) for _ in range(k)), (Pair(g()),))


def same(a, b) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def view(ex) -> tuple:
    return ex.aug.dihedral, ex.aug.colors


def test_leave_one_out_each_pair_is_query_once_per_augmentation():
    task = random_task(5)
    cfg = TTTDataConfig(augmentations_per_task=4, max_examples_per_task=1000)
    exs = build_ttt_examples(task, cfg)
    assert len(exs) == 5 * 4
    assert Counter(ex.query_index for ex in exs) == {i: 4 for i in range(5)}
    by_view: dict[tuple, list[int]] = {}
    for ex in exs:
        by_view.setdefault(view(ex), []).append(ex.query_index)
    assert len(by_view) == 4 and all(sorted(q) == list(range(5)) for q in by_view.values())
    for ex in exs:
        assert ex.held_out == (ex.query_index,)
        assert len(ex.demos) == 4 and sorted(ex.demo_indices) == [i for i in range(5) if i != ex.query_index]
        assert ex.query.output is not None


def test_first_view_is_the_original_task():
    task = random_task(4)
    exs = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=3))
    for ex in exs[:4]:
        assert ex.aug.dihedral == "id" and ex.aug.colors == tuple(range(10))
        assert same(ex.query.input, task.train[ex.query_index].input)
        assert list(ex.demo_indices) == [i for i in range(4) if i != ex.query_index]


def test_every_example_inverts_back_to_the_original_pairs(sample_tasks):
    for task in sample_tasks.values():
        for ex in build_ttt_examples(task):
            original = task.train[ex.query_index]
            assert same(ex.original_query_output(), original.output)
            assert same(ex.aug.invert_grid(ex.query.input), original.input)
            assert same(ex.aug.apply_grid(original.output), ex.query.output)
            for i, p in zip(ex.demo_indices, ex.demos):
                assert same(ex.aug.invert_grid(p.input), task.train[i].input)
                assert same(ex.aug.invert_grid(p.output), task.train[i].output)
            if ex.aug.order is not None:  # order permutes the demonstrations left after holding out
                rest = [i for i in range(len(task.train)) if i not in ex.held_out]
                assert set(ex.demo_indices) <= {rest[o] for o in ex.aug.order}


def test_deduplicates_identical_examples():
    # Every grid all-zero: every view (color 0 is fixed) and every hold-out gives the same text.
    z = np.zeros((3, 3), dtype=np.uint8)
    task = Task("0000000z", tuple(Pair(z, z) for _ in range(4)), (Pair(z),))
    assert len(build_ttt_examples(task, TTTDataConfig(augmentations_per_task=8))) == 1


def test_deduplication_keeps_exactly_the_distinct_texts():
    # A symmetric 2-color task: many views coincide. Count distinct texts independently.
    g = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.uint8)
    h = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)
    task = Task("0000sym0", (Pair(g, h), Pair(h, g), Pair(g, g), Pair(h, h), Pair(g, h)), (Pair(g),))
    cfg = TTTDataConfig(augmentations_per_task=16, max_examples_per_task=10_000, shuffle_demos=False)
    exs = build_ttt_examples(task, cfg)
    texts = [tuple(grid_key(x) for p in ex.demos for x in (p.input, p.output))
             + (grid_key(ex.query.input), grid_key(ex.query.output)) for ex in exs]
    assert len(set(texts)) == len(texts)
    undeduplicated = 5 * 16
    assert 1 < len(exs) < undeduplicated


def test_cap_is_round_robin_over_held_out_pairs():
    task = random_task(5)
    exs = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=8, max_examples_per_task=12))
    assert len(exs) == 12
    counts = Counter(ex.query_index for ex in exs)
    assert set(counts) == set(range(5)) and min(counts.values()) >= 2
    assert len({view(ex) for ex in exs}) == 3  # views 0 and 1 for every pair, view 2 for two pairs


def test_token_budget_drops_the_largest_demonstrations_first():
    rng = np.random.default_rng(1)
    g = lambda h, w: rng.integers(0, 10, size=(h, w), dtype=np.uint8)  # noqa: E731
    pairs = (Pair(g(2, 2), g(2, 2)), Pair(g(30, 30), g(30, 30)), Pair(g(3, 3), g(3, 3)), Pair(g(2, 3), g(3, 2)))
    task = Task("0000big0", pairs, (Pair(g(2, 2)),))
    full = estimate_tokens(pairs[1:], pairs[0])  # query 0 with all three demonstrations
    budget = full - 1000
    exs = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=2, max_tokens=budget))
    assert exs and all(estimate_tokens(ex.demos, ex.query) <= budget for ex in exs)
    for ex in exs:
        if ex.query_index != 1:
            assert 1 not in ex.demo_indices and len(ex.demos) == 2  # the 30x30 pair went, nothing else
    # Query 1 is itself 30x30: even with a single demonstration it does not fit, so it is dropped.
    assert {ex.query_index for ex in exs} == {0, 2, 3}


def test_token_budget_never_goes_below_one_demonstration():
    task = random_task(4, side=6)
    one_demo = min(estimate_tokens([p], q) for p in task.train for q in task.train if p is not q)
    exs = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=2, max_tokens=one_demo))
    assert exs and all(len(ex.demos) == 1 for ex in exs)
    assert build_ttt_examples(task, TTTDataConfig(max_tokens=one_demo - 1)) == []


def test_custom_token_counter_is_used():
    calls = []

    def count(demos, query):
        calls.append(len(demos))
        return 100 * len(demos)  # each demonstration costs 100 tokens

    exs = build_ttt_examples(random_task(5), TTTDataConfig(augmentations_per_task=1, max_tokens=250), count)
    assert calls and all(len(ex.demos) == 2 for ex in exs) and len(exs) == 5


def test_leave_two_out_top_up_for_small_tasks():
    task = random_task(3)
    cfg = TTTDataConfig(augmentations_per_task=2, max_examples_per_task=1000)
    exs = build_ttt_examples(task, cfg)
    two = [ex for ex in exs if len(ex.held_out) == 2]
    assert len(exs) == 3 * 2 + 6 * 2
    assert exs[:6] == [ex for ex in exs if len(ex.held_out) == 1]  # leave-one-out first, top-up after
    assert {ex.held_out for ex in two} == {(i, j) for i in range(3) for j in range(3) if i != j}
    for ex in two:
        assert ex.query_index == ex.held_out[0] and ex.demo_indices == tuple(set(range(3)) - set(ex.held_out))
    assert not any(len(ex.held_out) == 2 for ex in build_ttt_examples(task, TTTDataConfig(leave_two_out=False)))
    assert not any(len(ex.held_out) == 2 for ex in build_ttt_examples(random_task(5), cfg))
    assert not any(len(ex.held_out) == 2 for ex in build_ttt_examples(random_task(2), cfg))  # would leave none


def test_single_pair_task_is_still_usable():
    task = random_task(1)
    exs = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=6))
    assert len(exs) == 6
    for ex in exs:
        assert ex.demos == () and ex.query_index == 0 and ex.held_out == (0,) and ex.aug.order is None
        assert same(ex.original_query_output(), task.train[0].output)
    assert len({view(ex) for ex in exs}) == 6


def test_two_pair_task_has_one_demonstration_each():
    exs = build_ttt_examples(random_task(2), TTTDataConfig(augmentations_per_task=3))
    assert len(exs) == 6 and all(len(ex.demos) == 1 for ex in exs)


def test_deterministic_from_seed_and_task_id():
    task = random_task(4)
    a = build_ttt_examples(task, TTTDataConfig(seed=7))
    b = build_ttt_examples(task, TTTDataConfig(seed=7))
    assert [ex.key for ex in a] == [ex.key for ex in b] and [ex.aug for ex in a] == [ex.aug for ex in b]
    c = build_ttt_examples(task, TTTDataConfig(seed=8))
    assert [ex.aug for ex in a] != [ex.aug for ex in c]
    other = Task("0000cafe", task.train, task.test)
    assert [ex.aug for ex in build_ttt_examples(other, TTTDataConfig(seed=7))] != [ex.aug for ex in a]
    # Fixed across processes (no salted hash()): the SHA-256 of "seed NUL task id", top 63 bits.
    digest = hashlib.sha256(b"7\x000000beef").digest()
    assert stable_seed(7, "0000beef") == int.from_bytes(digest[:8], "big") >> 1 == 9169495609303070890


def test_keep_background_false_moves_color_zero():
    exs = build_ttt_examples(random_task(4), TTTDataConfig(augmentations_per_task=16, keep_background=False))
    assert any(ex.aug.colors[0] != 0 for ex in exs)
    exs = build_ttt_examples(random_task(4), TTTDataConfig(augmentations_per_task=16))
    assert all(ex.aug.colors[0] == 0 for ex in exs)


def test_estimate_tokens_counts_cells_rows_markers():
    p = Pair(np.zeros((2, 3), np.uint8), np.zeros((1, 1), np.uint8))
    # bos 1 + input (6 cells + 2 rows + 1 marker) + output (1 + 1 + 1 marker + 1 eos) = 14 per pair - 1 bos
    assert estimate_tokens([], p) == 1 + 9 + 4
    assert estimate_tokens([p, p], p) == 1 + 3 * 13


def test_sample_tasks_respect_cap_and_budget(sample_tasks):
    cfg = TTTDataConfig()
    data = build_ttt_dataset(sample_tasks, cfg)
    assert list(data) == list(sample_tasks)
    for tid, exs in data.items():
        assert 0 < len(exs) <= cfg.max_examples_per_task
        assert len({ex.key for ex in exs}) == len(exs)
        assert all(ex.task_id == tid and estimate_tokens(ex.demos, ex.query) <= cfg.max_tokens for ex in exs)
    summary = ttt_token_count(ex for exs in data.values() for ex in exs)
    assert summary.examples == sum(map(len, data.values()))
    assert summary.max_tokens <= cfg.max_tokens and summary.tokens >= summary.examples


@pytest.mark.parametrize("kwargs,error", [
    ({"augmentations_per_task": 0}, ValueError), ({"max_examples_per_task": 0}, ValueError),
    ({"max_tokens": 0}, ValueError), ({"seed": -1}, ValueError), ({"leave_two_out_below": -1}, ValueError),
    ({"augmentations_per_task": 2.0}, TypeError), ({"leave_two_out": 1}, TypeError), ({"seed": True}, TypeError),
])
def test_config_is_validated(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        TTTDataConfig(**kwargs)


def test_config_fields_have_help():
    assert all(TTTDataConfig.help().values())
