"""Specification of the TTT trainer, on the real CPU engines (Unsloth, PEFT, bitsandbytes 4-bit) and the tiny model.

The synthetic task "recolor every nonzero cell to 3" is learnable from its demonstrations; the tests judge
learning by the held-out NLL of a pair the adapter never trained on, not by "training ran". Engine tests are
``slow`` (the unsloth import alone is ~20 s on 2 cores; the whole file ~2 minutes).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from arcttt_kaggle.data import Pair, Task
from arcttt_kaggle.format import Encoded
from arcttt_kaggle.train import TARGET_MODULES, TrainConfig, Trainer, _lr_factor

# Tiny-model settings: rank 8 is plenty for hidden 128; lr 3e-3 is ~30x a real model's because the random
# tiny model needs large updates to move its logits in tens of steps.
TINY = dict(lora_rank=8, lora_alpha=16, learning_rate=3e-3, warmup_steps=5, max_seq_len=2048,
            gradient_checkpointing=False)
FAST = dict(TINY, dtype="float32")  # on this CPU Unsloth's auto dtype (bf16) trains ~20x slower than fp32


def recolor_task(task_id: str, seed: int, n_train: int = 5, color: int = 3) -> Task:
    """Every nonzero cell becomes ``color``; 3x3..5x5 grids, ~40% background."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_train + 1):
        h, w = (int(v) for v in rng.integers(3, 6, 2))
        g = rng.integers(1, 10, (h, w)).astype(np.uint8)
        g[rng.random((h, w)) < 0.4] = 0
        pairs.append(Pair(g, np.where(g > 0, color, 0).astype(np.uint8)))
    return Task(task_id, tuple(pairs[:n_train]), (pairs[-1],))


class Example:
    """The trainer takes anything with ``.demos`` and ``.query`` (a TTTExample, or this)."""

    def __init__(self, demos, query):
        self.demos, self.query = tuple(demos), query


def leave_one_out(task: Task) -> list[Example]:
    try:
        from arcttt_kaggle.ttt_data import TTTDataConfig, build_ttt_examples
    except ImportError:  # the TTT data module is optional here: build leave-one-out by hand
        return [Example([p for j, p in enumerate(task.train) if j != i], q) for i, q in enumerate(task.train)]
    return build_ttt_examples(task, TTTDataConfig(augmentations_per_task=1, leave_two_out=False))


def held_out(trainer: Trainer, task: Task) -> list[Encoded]:
    """The real problem: all demonstrations, then the unseen test pair; loss on its output only."""
    return [trainer.fmt.encode_example(task.train, task.test[0], "query_output")]


def frozen_state(trainer: Trainer) -> dict[str, np.ndarray]:
    """Every non-LoRA tensor, 4-bit packed data and quantization scales included."""
    out = {n: p.detach().float().cpu().numpy().copy() for n, p in trainer.model.named_parameters()
           if not p.requires_grad}
    for name, m in trainer.model.named_modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            out[name + ".absmax"] = qs.absmax.float().cpu().numpy().copy()
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import unsloth  # noqa: F401  (first, so it can patch transformers; see train.py)

    from arcttt_kaggle.tinymodel import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trainer(model_dir):
    """The default CPU path: Unsloth, 4-bit, Unsloth's own dtype choice."""
    t = Trainer(model_dir, TrainConfig(backend="unsloth", **TINY))
    yield t
    t.close()


# -- configuration (fast) ----------------------------------------------------------------------------------------
def test_config_documents_and_validates_every_field():
    assert all(TrainConfig.help().values())
    assert TrainConfig().target_modules == TARGET_MODULES
    with pytest.raises(ValueError, match="vLLM cannot serve"):
        TrainConfig(target_modules=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="backend"):
        TrainConfig(backend="hf")
    with pytest.raises(TypeError, match="lora_rank"):
        TrainConfig(lora_rank=8.0)
    with pytest.raises(TypeError, match="shared_adapter"):
        TrainConfig(shared_adapter=1)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    assert TrainConfig(learning_rate=1).learning_rate == 1  # an int where a float is wanted is fine


def test_schedule_warms_up_linearly_then_decays_to_zero():
    factors = [_lr_factor(s, 4, 10) for s in range(10)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factors[-1] == pytest.approx(1 / 6) and all(a > b for a, b in zip(factors[4:], factors[5:]))
    assert _lr_factor(0, 0, 5) == 1.0


def test_missing_unsloth_is_a_clear_error_not_a_silent_fallback(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "unsloth", None)  # makes `import unsloth` raise ImportError
    with pytest.raises(ImportError, match=r"pip install unsloth.*backend='peft'"):
        Trainer(tmp_path, TrainConfig(backend="unsloth"))


# -- engines (slow) ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_engines_import():
    import unsloth  # noqa: F401
    import vllm  # noqa: F401


@pytest.mark.slow
def test_unsloth_backend_is_really_unsloth(trainer, model_dir):
    from peft import PeftModel

    assert trainer.backend.startswith("unsloth 2026.") and "4-bit" in trainer.backend, trainer.backend
    assert isinstance(trainer.model, PeftModel)
    inner = trainer.model.base_model.model
    # On CPU Unsloth keeps the transformers class and installs its own forward (chunked loss); on GPU it
    # replaces the forward with its fast one. Either way the forward comes from an unsloth module.
    assert inner.forward.__func__.__module__.startswith("unsloth"), inner.forward.__func__.__module__
    assert any(type(m).__name__ == "Linear4bit" for m in inner.modules())
    assert trainer.fmt.eos_id == trainer.model.config.eos_token_id


@pytest.mark.slow
def test_ttt_lowers_held_out_nll_and_touches_only_lora(trainer, tmp_path):
    task = recolor_task("recolor", seed=0)
    evals = held_out(trainer, task)
    base_before = frozen_state(trainer)
    nll_base = trainer.nll(evals)

    examples = leave_one_out(task)
    r = trainer.train_task(task.id, examples, tmp_path / "a", steps=60)

    nll_adapted = trainer.nll(evals, r.adapter_dir)
    print(f"held-out NLL base {nll_base:.3f} -> adapted {nll_adapted:.3f} ({nll_adapted / nll_base:.0%}), "
          f"train loss {r.losses[0]:.3f} -> {r.losses[-1]:.3f}, {r.seconds:.1f} s for {r.steps_done} steps")
    assert nll_adapted < 0.7 * nll_base  # measured: 4.29 -> ~1.1
    assert r.steps_done == 60 and len(r.losses) == 60 and not r.stopped_early
    assert np.mean(r.losses[-10:]) < 0.5 * np.mean(r.losses[:3])
    encoded, _ = trainer.encode(examples)  # leave-one-out views of one task are all the same length
    assert r.tokens_seen == 60 * len(encoded[0].input_ids) and r.examples_used == 5 and r.examples_skipped == 0
    # The saved adapter, the in-memory adapter and the base are three distinct, reproducible evaluations.
    assert trainer.nll(evals, current_adapter=True) == pytest.approx(nll_adapted, rel=1e-5)
    assert trainer.nll(evals) == pytest.approx(nll_base, rel=1e-5)

    lora = trainer.lora_state()
    assert all(np.abs(v.numpy()).max() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    after = frozen_state(trainer)
    assert after.keys() == base_before.keys()
    changed = [k for k in after if not np.array_equal(after[k], base_before[k])]
    assert not changed, f"frozen base weights changed: {changed[:5]}"


@pytest.mark.slow
def test_adapter_is_peft_format_vllm_can_serve(trainer, model_dir, tmp_path):
    from safetensors.numpy import load_file

    task = recolor_task("fmt", seed=1)
    r = trainer.train_task(task.id, leave_one_out(task), tmp_path / "fmt", steps=2, progress=True)
    cfg = json.loads((r.adapter_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir.resolve())
    assert set(cfg["target_modules"]) == set(TARGET_MODULES) and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert not cfg.get("modules_to_save")
    keys = load_file(r.adapter_dir / "adapter_model.safetensors").keys()
    assert len(keys) == 2 * 7 * 2  # lora_A + lora_B, 7 projections, 2 layers
    assert all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert not any("embed_tokens" in k or "lm_head" in k for k in keys)


@pytest.mark.slow
def test_deadline_stops_early_and_still_saves(trainer, tmp_path):
    task = recolor_task("late", seed=2)
    r = trainer.train_task(task.id, leave_one_out(task), tmp_path / "late", steps=50, deadline=time.time() - 1)
    assert r.stopped_early and r.steps_done == 0 and r.losses == []
    assert (r.adapter_dir / "adapter_model.safetensors").exists()
    evals = held_out(trainer, task)  # a freshly reset adapter (B = 0) is exactly the base model
    assert trainer.nll(evals, r.adapter_dir) == pytest.approx(trainer.nll(evals), rel=1e-6)


@pytest.mark.slow
def test_adapter_reset_makes_each_task_independent_of_the_previous(model_dir, tmp_path):
    a, b = recolor_task("A", seed=3, color=5), recolor_task("B", seed=4)
    cfg = TrainConfig(backend="unsloth", **FAST)
    with Trainer(model_dir, cfg) as t1:
        t1.train_task("A", leave_one_out(a), tmp_path / "A", steps=20, seed=7)
        after_a = t1.lora_state()
        t1.train_task("B", leave_one_out(b), tmp_path / "B1", steps=20, seed=7)
        b_after_a = t1.lora_state()
    with Trainer(model_dir, cfg) as t2:  # fresh base, fresh adapter
        t2.train_task("B", leave_one_out(b), tmp_path / "B2", steps=20, seed=7)
        b_alone = t2.lora_state()
    diff = max(float((b_after_a[k] - b_alone[k]).abs().max()) for k in b_alone)
    scale = max(float(v.abs().max()) for v in b_alone.values())
    moved = max(float((after_a[k] - b_alone[k]).abs().max()) for k in b_alone)
    print(f"adapter reset: max |B after A - B alone| = {diff:.2e} (weights up to {scale:.2f}, A vs B {moved:.2f})")
    assert diff <= 1e-5 * scale
    assert moved > 0.01 * scale  # the check has teeth: task A's adapter is far from task B's


@pytest.mark.slow
def test_both_backends_run_the_same_loop(model_dir, tmp_path):
    """PEFT fallback and Unsloth load the same 4-bit base and get the same seeded LoRA init; the one loop
    then gives the same losses (Unsloth on CPU runs stock kernels, so to float tolerance).

    The base NLL is taken first on purpose: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights
    on the first no-grad forward, which breaks later backward passes unless the Trainer turns that off."""
    task = recolor_task("both", seed=5)
    runs = {}
    for backend in ("peft", "unsloth"):
        with Trainer(model_dir, TrainConfig(backend=backend, **FAST)) as t:
            nll_base = t.nll(held_out(t, task))
            r = t.train_task(task.id, leave_one_out(task), tmp_path / backend, steps=40)
            runs[backend] = (t.backend, r, nll_base, t.nll(held_out(t, task), r.adapter_dir))
    backend, r, nll_base, nll_adapted = runs["peft"]
    assert backend.startswith("peft ") and "4-bit" in backend, backend
    assert nll_adapted < 0.7 * nll_base
    assert runs["unsloth"][0].startswith("unsloth ")
    np.testing.assert_allclose(runs["unsloth"][1].losses, r.losses, rtol=1e-3)


@pytest.mark.slow
def test_shared_adapter_trains_once_on_all_tasks(model_dir, tmp_path):
    tasks = [recolor_task("s1", seed=6), recolor_task("s2", seed=7)]
    with Trainer(model_dir, TrainConfig(backend="peft", shared_adapter=True, steps=6, **FAST)) as t:
        results = t.train_all({task.id: leave_one_out(task) for task in tasks}, tmp_path)
    assert results["s1"] is results["s2"]
    assert results["s1"].adapter_dir == tmp_path / "shared" and results["s1"].examples_used == 10
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]
