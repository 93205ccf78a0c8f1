"""Specification of the peft backend's label-row loss (issue 19): the LM head runs only on the rows whose shifted
label is set, in chunks, and the loss and LoRA gradients equal the full forward's. On the tiny model in fp32.

``slow``: they load the real transformers + PEFT model (a few seconds each on 2 cores).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from arcttt_kaggle.arc.data import Pair
from arcttt_kaggle.engines.format import IGNORE_INDEX
from arcttt_kaggle.engines.train import TrainConfig, Trainer, label_row_loss

CHUNK = 7  # far fewer rows than one example's label tokens: the loss spans several chunks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from arcttt_kaggle.engines.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def pairs(seed: int, n: int) -> list[Pair]:
    """Recolor-every-nonzero-cell pairs of 2x2..5x5 grids."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(2, 6, 2))
        g = rng.integers(0, 10, (h, w)).astype(np.uint8)
        out.append(Pair(g, np.where(g > 0, 3, 0).astype(np.uint8)))
    return out


def batch(trainer: Trainer):
    """Two examples of different lengths (right padding in the shorter), loss on every output grid."""
    a, b = pairs(0, 3), pairs(1, 4)
    enc = [trainer.fmt.encode_example(a[:2], a[2], "all_outputs"),
           trainer.fmt.encode_example(b[:3], b[3], "all_outputs")]
    assert len(enc[0].input_ids) != len(enc[1].input_ids)
    return trainer._collate(enc)


def peft_trainer(model_dir, **kw) -> Trainer:
    """The peft backend in fp32 with random nonzero lora_B (PEFT's zero init would leave lora_A without gradient)."""
    import torch

    t = Trainer(model_dir, TrainConfig(backend="peft", load_in_4bit=False, dtype="float32", lora_rank=8,
                                       lora_alpha=16, **kw))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in t._lora:
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return t


def head_inputs(trainer: Trainer) -> tuple[list, object]:
    """Record the shape of every input the LM head gets; returns (shapes, hook handle)."""
    shapes: list = []
    head = trainer.model.get_base_model().get_output_embeddings()
    return shapes, head.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_label_row_loss_and_lora_gradients_equal_the_full_forward(model_dir, checkpointing):
    t = peft_trainer(model_dir, gradient_checkpointing=checkpointing)
    try:
        ids, mask, labels = batch(t)
        t.model.train()
        ref = t.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        ref.backward()
        want = {n: p.grad.detach().clone() for n, p in t._lora}
        t.model.zero_grad(set_to_none=True)
        assert all(float(g.abs().max()) > 0 for g in want.values())  # every LoRA weight has a gradient to compare

        got = label_row_loss(t.model, ids, mask, labels, chunk_rows=CHUNK)
        got.backward()
        assert got.dtype == ref.dtype and abs(float(got.detach()) - float(ref.detach())) <= 1e-5
        for name, p in t._lora:
            diff = float((p.grad - want[name]).abs().max())
            assert diff <= 1e-5, f"{name}: gradient differs by {diff}"
    finally:
        t.close()


@pytest.mark.slow
def test_the_head_sees_only_label_rows_in_chunks_in_training_and_in_nll(model_dir, tmp_path):
    import torch

    t = peft_trainer(model_dir, gradient_checkpointing=False, steps=2, warmup_steps=0)
    try:
        ids, mask, labels = batch(t)
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        assert n < mask.sum() and n > 3 * CHUNK
        hidden = t.model.get_base_model().config.hidden_size
        shapes, hook = head_inputs(t)
        label_row_loss(t.model, ids, mask, labels, chunk_rows=CHUNK).backward()
        # forward: ceil(n / CHUNK) chunks of label rows; backward recomputes each (checkpointed), never more
        assert all(len(s) == 2 and s[0] <= CHUNK for s in shapes)
        assert sum(s[0] for s in shapes) == 2 * n and len(shapes) == 2 * math.ceil(n / CHUNK)
        t.model.zero_grad(set_to_none=True)

        # the trainer's nll and its training loop take the same path: 2-D label rows, never (batch, seq, hidden)
        a, b = pairs(2, 3), pairs(3, 3)
        examples = [t.fmt.encode_example(a[:2], a[2], "all_outputs"), t.fmt.encode_example(b[:2], b[2], "all_outputs")]
        shapes.clear()
        got = t.nll(examples, current_adapter=True)  # batch_size 1: one head call per example (< 1024 rows)
        want, counts = [], []
        for e in examples:
            ids, mask, labels = t._collate([e])
            with torch.no_grad():
                want.append(float(t.model(input_ids=ids, attention_mask=mask, labels=labels).loss))
            counts.append(int((labels[:, 1:] != IGNORE_INDEX).sum()))
        assert shapes[:2] == [(counts[0], hidden), (counts[1], hidden)]
        assert got == pytest.approx(sum(w * c for w, c in zip(want, counts)) / sum(counts), abs=1e-5)
        shapes.clear()
        r = t.train_task("t", examples, tmp_path / "a")
        hook.remove()
        assert r.finite and r.steps_done == 2
        assert shapes and all(len(s) == 2 and s[0] <= max(counts) for s in shapes)
    finally:
        t.close()


@pytest.mark.slow
def test_a_batch_without_labels_gives_nan_and_still_runs_backward(model_dir):
    t = peft_trainer(model_dir, gradient_checkpointing=False)
    try:
        ids, mask, labels = batch(t)
        loss = label_row_loss(t.model, ids, mask, labels.fill_(IGNORE_INDEX))
        assert math.isnan(float(loss.detach()))
        loss.backward()  # a NaN step is skipped by the loop; it must not raise here
    finally:
        t.close()
