"""score_candidates.py: teacher-forced log-likelihoods of candidate grids under augmented views, with a task's
adapter, the prompt of each view encoded once and each node of the candidates' token trie run once.

References are computed here independently: the full prompt + candidate through the causal LM (``model(...)
.logits``, one sequence at a time), log-softmax, and the completion tokens' log-probs summed. Everything runs in
float32 on CPU with the tiny model and PEFT-made random adapters (lora_B random from a seed, so adapters differ).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.augment import Augmentation, sample_augmentations
from arcttt_kaggle.engines.tinymodel import ensure_tiny_model, random_adapter
from reference import reference_scores

pytestmark = pytest.mark.slow
TASK = "0692e18c"  # 3 demonstrations, 3x3 -> 9x9: a 330-token prompt, 91-token completions


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer")
    tiny = ensure_tiny_model(root / "tiny")
    return tiny, [random_adapter(tiny, root / f"adapter{i}", seed=i, scale=0.2) for i in (1, 2)]


@pytest.fixture(scope="module")
def scorer(models):
    from arcttt_kaggle.engines.score_candidates import Scorer

    s = Scorer(models[0], dtype="float32", device="cpu")
    yield s
    s.close()


@pytest.fixture(scope="module")
def case(sample_tasks):
    """One task, 5 candidate grids of different shapes (the answer, a wrong one, a 1x1, a transposed, a 30x1),
    and 3 views including geometry, color permutation and demonstration order."""
    task = sample_tasks[TASK]
    truth = task.test[0].output
    grids = [truth, task.train[0].output, np.array([[7]], np.uint8), truth.T.copy(),
             np.arange(30, dtype=np.uint8).reshape(30, 1) % 10]
    views = sample_augmentations(3, 5, num_train=len(task.train))
    assert views[0].is_identity and not views[1].is_identity
    return task, grids, views


def reference(model_dir: Path, adapter: Path | None, fmt, task, grids, views) -> np.ndarray:
    """Full prompt + candidate, one sequence per forward pass, through the causal LM's own logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return reference_scores(model, fmt, task, grids, views)


def test_shared_prefix_scores_equal_reference_forward_pass_fp32(scorer, models, case):
    task, grids, views = case
    got = scorer.score(task, 0, grids, views, models[1][0])
    assert got.shape == (5, 3) and np.all(np.isfinite(got)) and np.all(got < 0)
    np.testing.assert_allclose(got, reference(models[0], models[1][0], scorer.fmt, task, grids, views),
                               rtol=0, atol=1e-4)


def test_shared_prefix_and_naive_paths_agree(scorer, models, case):
    task, grids, views = case
    shared = scorer.score(task, 0, grids, views, models[1][1], shared_prefix=True)
    naive = scorer.score(task, 0, grids, views, models[1][1], shared_prefix=False)
    np.testing.assert_allclose(shared, naive, rtol=0, atol=1e-4)


def test_prompt_cache_reuse_path_agrees_and_runs_each_candidate_once_after_one_prompt(scorer, models, case):
    """The baseline ``scoring_cost.py`` measures the trie against: prompt once per view, then one pass per
    candidate over its own tokens (all but the last, which is only predicted)."""
    task, grids, views = case
    s = scorer.stats
    passes, tokens = s.forward_passes, s.tokens
    cached = scorer.score(task, 0, grids, views, models[1][1], shared_prefix="cache")
    assert s.forward_passes - passes == len(views) * (1 + len(grids))
    comps = [[len(scorer.fmt.completion_ids(v.apply_grid(g))) - 1 for g in grids] for v in views]
    assert s.tokens - tokens == sum(prompt_lengths(scorer.fmt, task, views)) + sum(map(sum, comps))
    naive = scorer.score(task, 0, grids, views, models[1][1], shared_prefix=False)
    np.testing.assert_allclose(cached, naive, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="shared_prefix"):
        scorer.score(task, 0, grids, views, models[1][1], shared_prefix="trie")


def trie_nodes(fmt, grids, views) -> list[int]:
    """Per view: the distinct proper prefixes of the completions, i.e. the trie nodes that must run (a
    completion's last token is only predicted)."""
    out = []
    for v in views:
        comps = [fmt.completion_ids(v.apply_grid(g)) for g in grids]
        out.append(len({tuple(c[:j]) for c in comps for j in range(1, len(c))}))
    return out


def prompt_lengths(fmt, task, views) -> list[int]:
    return [len(fmt.prompt_ids(v.apply_task(task).train, v.apply_task(task).test[0].input)) for v in views]


def near_misses(truth: np.ndarray) -> list[np.ndarray]:
    """Candidates that share prefixes: the answer, its last row recolored, a middle cell recolored, an exact
    duplicate, a row dropped (a shorter near miss) and the last row repeated (longer, the answer is a prefix of
    its rows)."""
    last, mid = truth.copy(), truth.copy()
    last[-1] = (last[-1] + 1) % 10
    mid[4, 4] = (mid[4, 4] + 3) % 10
    return [truth, last, mid, truth.copy(), np.delete(truth, 5, axis=0), np.vstack([truth, truth[-1:]])]


def test_prompt_is_encoded_once_per_view_and_each_trie_node_once(scorer, models, case):
    task, grids, views = case
    fmt = scorer.fmt
    prompts, nodes = prompt_lengths(fmt, task, views), trie_nodes(fmt, grids, views)
    s = scorer.stats
    passes, tokens = s.forward_passes, s.tokens
    scorer.score(task, 0, grids, views, models[1][0])
    assert s.forward_passes - passes == len(views) * (1 + 1)  # prompt once + one pass of the whole trie
    assert s.tokens - tokens == sum(prompts) + sum(nodes)
    comps = [[len(fmt.completion_ids(v.apply_grid(g))) for g in grids] for v in views]
    passes, tokens = s.forward_passes, s.tokens
    scorer.score(task, 0, grids, views, models[1][0], shared_prefix=False)
    assert s.forward_passes - passes == len(views) * len(grids)
    assert s.tokens - tokens == sum(p * len(grids) + sum(c) for p, c in zip(prompts, comps))


def test_trie_over_shared_prefixes_duplicates_and_lengths_equals_naive(scorer, models, case):
    task, _, views = case
    grids = near_misses(task.test[0].output)
    shared = scorer.score(task, 0, grids, views, models[1][0])
    naive = scorer.score(task, 0, grids, views, models[1][0], shared_prefix=False)
    np.testing.assert_allclose(shared, naive, rtol=0, atol=1e-4)
    assert np.array_equal(shared[0], shared[3])  # the duplicate is the same trie path
    assert len(set(np.round(shared[:, 0], 3))) == 5


def test_trie_runs_fewer_tokens_than_one_row_per_candidate_when_prefixes_are_shared(scorer, models, case):
    task, _, views = case
    grids = near_misses(task.test[0].output)
    fmt = scorer.fmt
    prompts, nodes = prompt_lengths(fmt, task, views), trie_nodes(fmt, grids, views)
    batched = sum(len(fmt.completion_ids(v.apply_grid(g))) for v in views for g in grids)  # every candidate token
    tokens = scorer.stats.tokens
    scorer.score(task, 0, grids, views, models[1][1])
    assert scorer.stats.tokens - tokens == sum(prompts) + sum(nodes)
    assert sum(nodes) < 0.6 * batched


def test_single_candidate_equals_naive(scorer, models, case):
    task, _, views = case
    for grid in (task.test[0].output, np.array([[7]], np.uint8)):
        shared = scorer.score(task, 0, [grid], views, models[1][1])
        assert shared.shape == (1, 3)
        np.testing.assert_allclose(shared, scorer.score(task, 0, [grid], views, models[1][1], shared_prefix=False),
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize("max_tokens", [7, 40])
def test_trie_split_over_several_passes_equals_naive(scorer, models, case, max_tokens):
    task, grids, views = case
    grids = near_misses(task.test[0].output) + grids[2:]
    nodes = trie_nodes(scorer.fmt, grids, views)
    naive = scorer.score(task, 0, grids, views, models[1][0], shared_prefix=False)
    s, default = scorer.stats, scorer.max_tokens
    passes, tokens = s.forward_passes, s.tokens
    scorer.max_tokens = max_tokens
    try:
        shared = scorer.score(task, 0, grids, views, models[1][0])
    finally:
        scorer.max_tokens = default
    np.testing.assert_allclose(shared, naive, rtol=0, atol=1e-4)
    # passes are filled to max_tokens, long suffixes continued in the next pass; the prompt runs once per view
    assert s.forward_passes - passes == sum(1 + math.ceil(n / max_tokens) for n in nodes)
    assert s.tokens - tokens == sum(prompt_lengths(scorer.fmt, task, views)) + sum(nodes)


def test_trie_pieces_run_each_node_once_in_passes_of_at_most_max_tokens():
    from arcttt_kaggle.engines.score_candidates import _trie_pieces

    seqs = sorted({(1, 2, 3, 9), (1, 2, 4, 5, 9), (1, 2, 4, 6, 9), (1, 9), (2, 9), (7, 7, 7, 7, 7, 7, 9), (9,)})
    nodes = {s[:j] for s in seqs for j in range(1, len(s))}
    for max_tokens in (1, 2, 3, 100):
        passes = _trie_pieces(seqs, max_tokens)
        run = [seqs[p.cand][:d + 1] for ps in passes for p in ps for d in range(p.start, p.stop)]
        assert sorted(run) == sorted(nodes)  # every node once, the leaves never
        assert all(sum(p.stop - p.start for p in ps) <= max_tokens for ps in passes)
        assert len(passes) == max(1, math.ceil(len(nodes) / max_tokens))
        for t, seq in enumerate(seqs):  # each sequence: one first piece, then contiguous pieces to len - 1
            mine = [p for ps in passes for p in ps if p.cand == t]
            assert mine[0].first and not any(p.first for p in mine[1:])
            assert all(a.stop == b.start for a, b in zip(mine, mine[1:])) and mine[-1].stop == len(seq) - 1


def test_tree_mask_works_with_eager_attention_too(scorer, models, case):
    task, grids, views = case
    model = scorer.adapters.model
    sdpa = scorer.score(task, 0, grids, views[:2], models[1][0])
    model.set_attn_implementation("eager")
    try:
        eager = scorer.score(task, 0, grids, views[:2], models[1][0])
        naive = scorer.score(task, 0, grids, views[:2], models[1][0], shared_prefix=False)
    finally:
        model.set_attn_implementation("sdpa")
    np.testing.assert_allclose(eager, naive, rtol=0, atol=1e-4)
    np.testing.assert_allclose(eager, sdpa, rtol=0, atol=1e-4)


def test_adapter_none_scores_with_the_base_model_and_swaps_do_not_leak(scorer, models, case):
    task, grids, views = case
    a1, a2 = models[1]
    first = scorer.score(task, 0, grids, views[:1], a1)
    base = scorer.score(task, 0, grids, views[:1], None)
    np.testing.assert_allclose(base, reference(models[0], None, scorer.fmt, task, grids, views[:1]), atol=1e-4)
    other = scorer.score(task, 0, grids, views[:1], a2)
    again = scorer.score(task, 0, grids, views[:1], a1)
    assert not np.allclose(first, base) and not np.allclose(first, other)
    np.testing.assert_allclose(again, first, rtol=0, atol=1e-9)  # one adapter loaded at a time, cleanly
    assert len(scorer.adapters.peft.peft_config) == 1


def test_score_fn_uses_each_tasks_adapter_and_base_for_unknown_tasks(scorer, models, case, sample_tasks):
    task, grids, views = case
    fn = scorer.score_fn({task.id: models[1][1]})
    np.testing.assert_allclose(fn(task, 0, grids[:2], views[:2]), scorer.score(task, 0, grids[:2], views[:2],
                                                                              models[1][1]), atol=1e-9)
    other = sample_tasks["00576224"]
    g = [other.train[0].output]
    np.testing.assert_allclose(fn(other, 0, g, [Augmentation()]), scorer.score(other, 0, g, [Augmentation()], None),
                               atol=1e-9)


def test_the_right_answer_is_scored_under_every_view_in_the_views_frame(scorer, case):
    """The log-likelihood of a grid under a view is that of the view-augmented grid after the augmented task:
    scoring a grid under view v equals scoring v(grid) for the task pre-augmented by v under the identity."""
    task, grids, views = case
    v = views[1]
    direct = scorer.score(task, 0, grids[:2], [v], None)
    moved = v.apply_task(task)
    pre = scorer.score(moved, 0, [v.apply_grid(g) for g in grids[:2]],
                       [Augmentation(order=tuple(range(len(task.train))))], None)
    np.testing.assert_allclose(direct, pre, atol=1e-4)


def test_empty_inputs_give_empty_matrices(scorer, case):
    task, grids, views = case
    assert scorer.score(task, 0, [], views, None).shape == (0, 3)
    assert scorer.score(task, 0, grids, [], None).shape == (5, 0)
    with pytest.raises(IndexError):
        scorer.score(task, 3, grids, views, None)


def test_a_corrupt_adapter_is_refused_before_the_model_is_touched_and_scoring_goes_on(scorer, models, case,
                                                                                      tmp_path):
    import shutil

    from arcttt_kaggle.engines.engine_base import AdapterError

    task, grids, views = case
    before = scorer.score(task, 0, grids[:2], views[:1], models[1][0])
    bad = tmp_path / "bad"
    shutil.copytree(models[1][1], bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterError, match="bad"):
        scorer.score(task, 0, grids[:2], views[:1], bad)
    assert not scorer.adapters.broken
    np.testing.assert_allclose(scorer.score(task, 0, grids[:2], views[:1], models[1][0]), before, atol=1e-9)
    np.testing.assert_allclose(scorer.score(task, 0, grids[:2], views[:1], None),
                               reference(models[0], None, scorer.fmt, task, grids[:2], views[:1]), atol=1e-4)


def test_scorer_on_a_bitsandbytes_4bit_base(models, case):
    """quantization="bitsandbytes": NF4 Linear4bit layers (lm_head kept), a smaller footprint than fp32, and
    shared-prefix scores that still equal the naive path on the same 4-bit model."""
    from arcttt_kaggle.engines.score_candidates import Scorer

    task, grids, views = case
    with Scorer(models[0], dtype="float32", device="cpu", quantization="bitsandbytes") as q:
        model = q.adapters.model
        assert sum(type(m).__name__ == "Linear4bit" for m in model.modules()) == 7 * model.config.num_hidden_layers
        assert type(model.get_output_embeddings()).__name__ == "Linear"
        footprint = model.get_memory_footprint()
        shared = q.score(task, 0, grids, views[:2], models[1][0])
        naive = q.score(task, 0, grids, views[:2], models[1][0], shared_prefix=False)
    with Scorer(models[0], dtype="float32", device="cpu") as full:
        full_footprint = full.adapters.model.get_memory_footprint()
        exact = full.score(task, 0, grids, views[:2], models[1][0])
    assert footprint < full_footprint
    assert np.all(np.isfinite(shared)) and np.all(shared < 0)
    # bitsandbytes' CPU 4-bit matmul sums in a different order for a tree pass than for one sequence: measured
    # up to 0.009 nats on scores of ~-400 (2e-5 relative), against 1e-4 absolute in fp32
    np.testing.assert_allclose(shared, naive, rtol=1e-4, atol=1e-3)
    assert not np.allclose(shared, exact, atol=1e-4)  # really quantized: not the fp32 model's scores
    print(f"nf4 vs fp32: max |diff| {np.abs(shared - exact).max():.3f} nats, "
          f"footprint {footprint / full_footprint:.2f}x")
