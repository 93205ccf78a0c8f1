"""score_candidates.py: teacher-forced log-likelihoods of candidate grids under augmented views, with a task's
adapter, the prompt of each view encoded once and shared by all candidates.

References are computed here independently: the full prompt + candidate through the causal LM (``model(...)
.logits``, one sequence at a time), log-softmax, and the completion tokens' log-probs summed. Everything runs in
float32 on CPU with the tiny model and PEFT-made random adapters (lora_B random from a seed, so adapters differ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.augment import Augmentation, sample_augmentations
from arcttt_kaggle.tinymodel import ensure_tiny_model, random_adapter

pytestmark = pytest.mark.slow
TASK = "0692e18c"  # 3 demonstrations, 3x3 -> 9x9: a 330-token prompt, 91-token completions


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer")
    tiny = ensure_tiny_model(root / "tiny")
    return tiny, [random_adapter(tiny, root / f"adapter{i}", seed=i, scale=0.2) for i in (1, 2)]


@pytest.fixture(scope="module")
def scorer(models):
    from arcttt_kaggle.score_candidates import Scorer

    s = Scorer(models[0], dtype="float32", device="cpu", max_batch=3)  # 5 grids: batches of 3 + 2
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
    out = np.zeros((len(grids), len(views)))
    for v, view in enumerate(views):
        vt = view.apply_task(task)
        prompt = fmt.prompt_ids(vt.train, vt.test[0].input)
        for g, grid in enumerate(grids):
            comp = fmt.completion_ids(view.apply_grid(grid))
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([prompt + comp])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            out[g, v] = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(comp))
    return out


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


def test_prompt_is_encoded_once_per_view_and_candidates_batched(scorer, models, case):
    task, grids, views = case
    fmt = scorer.fmt
    prompts = [len(fmt.prompt_ids(v.apply_task(task).train, v.apply_task(task).test[0].input)) for v in views]
    comps = [[len(fmt.completion_ids(v.apply_grid(g))) for g in grids] for v in views]
    s = scorer.stats
    passes, tokens = s.forward_passes, s.tokens
    scorer.score(task, 0, grids, views, models[1][0])
    assert s.forward_passes - passes == len(views) * (1 + 2)  # prompt once + ceil(5 / max_batch=3) batches
    assert s.tokens - tokens == sum(prompts) + sum(map(sum, comps))
    passes, tokens = s.forward_passes, s.tokens
    scorer.score(task, 0, grids, views, models[1][0], shared_prefix=False)
    assert s.forward_passes - passes == len(views) * len(grids)
    assert s.tokens - tokens == sum(p * len(grids) + sum(c) for p, c in zip(prompts, comps))


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
