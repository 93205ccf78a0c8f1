"""Specification of the TTT trainer, on the real CPU engines (Unsloth, PEFT, bitsandbytes 4-bit) and the tiny model.

The synthetic task "recolor every nonzero cell to 3" is learnable from its demonstrations; the tests judge
learning by the held-out NLL of a pair the adapter never trained on, not by "training ran". Engine tests are
``slow`` (the unsloth import alone is ~20 s on 2 cores; the whole file ~2 minutes).
"""

from __future__ import annotations

import errno
import gc
import json
import sys
import time
import weakref

import numpy as np
import pytest

from arcttt_kaggle.arc.data import Pair, Task
from arcttt_kaggle.engines.format import Encoded
from arcttt_kaggle.engines.train import (TARGET_MODULES, WEIGHTS_FILE, AdapterSaveError, TrainConfig, Trainer, _load_dtype,
                                 _lr_factor, _nonfinite_reason)

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
        from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples
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

    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trainer(model_dir):
    """The default CPU path: Unsloth, 4-bit, Unsloth's own dtype choice (bf16 on this CPU)."""
    t = Trainer(model_dir, TrainConfig(backend="unsloth", **TINY))
    yield t
    t.close()


@pytest.fixture(scope="module")
def trainer32(model_dir):
    """The cpu-tiny preset's path (Unsloth, 4-bit, fp32) with 2 micro-batches per step."""
    t = Trainer(model_dir, TrainConfig(backend="unsloth", grad_accum=2, **FAST))
    yield t
    t.close()


# -- configuration (fast) ----------------------------------------------------------------------------------------
def test_config_documents_and_validates_every_field():
    assert all(TrainConfig.help().values())
    assert TrainConfig().target_modules == TARGET_MODULES
    assert "lm_head" in TrainConfig(target_modules=("q_proj", "lm_head")).target_modules  # refused with vLLM only
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


def test_auto_dtype_is_decode_resolve_dtype_rule_fp16_on_a_t4(monkeypatch):
    """A T4 (compute capability 7.5) says ``is_bf16_supported() == True`` (emulated, slow): auto must still
    load fp16 there, bf16 only from capability 8, as the decoder does."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    assert _load_dtype("auto", "peft") is torch.float16 and _load_dtype("auto", "unsloth") is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 9))  # L4
    assert _load_dtype("auto", "peft") is torch.bfloat16 and _load_dtype("auto", "unsloth") is torch.bfloat16
    assert _load_dtype("float32", "peft") is torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load_dtype("auto", "peft") is torch.float32 and _load_dtype("auto", "unsloth") is None


def test_nonfinite_reason_names_the_loss_step_or_the_tensor_that_overflows_its_saved_dtype():
    import torch

    ok = {"a.lora_A.weight": torch.ones(2, 2, dtype=torch.float16)}
    assert _nonfinite_reason([1.0, 0.5], ok, torch.float16) == ""
    assert _nonfinite_reason([1.0, float("nan"), float("inf")], ok, torch.float16) == \
        "non-finite loss at step(s) [1, 2]"
    overflow = {"b.lora_B.weight": torch.tensor([7e4]).to(torch.float16)}  # fp16 max is 65504
    assert _nonfinite_reason([1.0], {**ok, **overflow}, torch.float16) == \
        "1 of 2 LoRA tensors not finite in float16 (b.lora_B.weight)"


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
    # The saved adapter (weights rounded to bf16, the compute dtype), the in-memory adapter (fp32 master
    # weights) and the base are three distinct, reproducible evaluations.
    assert trainer.nll(evals, current_adapter=True) == pytest.approx(nll_adapted, rel=1e-2)
    assert trainer.nll(evals, r.adapter_dir) == nll_adapted
    assert trainer.nll(evals) == pytest.approx(nll_base, rel=1e-5)

    lora = trainer.lora_state()
    assert all(np.abs(v.numpy()).max() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    after = frozen_state(trainer)
    assert after.keys() == base_before.keys()
    changed = [k for k in after if not np.array_equal(after[k], base_before[k])]
    assert not changed, f"frozen base weights changed: {changed[:5]}"


@pytest.mark.slow
def test_adapter_is_peft_format_vllm_can_serve(trainer, model_dir, tmp_path):
    from safetensors.torch import load_file

    task = recolor_task("fmt", seed=1)
    r = trainer.train_task(task.id, leave_one_out(task), tmp_path / "fmt", steps=2, progress=True)
    cfg = json.loads((r.adapter_dir / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir.resolve())
    assert set(cfg["target_modules"]) == set(TARGET_MODULES) and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert not cfg.get("modules_to_save") and cfg["inference_mode"] is True
    trainer.model.save_pretrained(str(tmp_path / "peft"))  # PEFT's own writer: the same config, the same keys
    assert cfg == json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    weights = load_file(r.adapter_dir / WEIGHTS_FILE)
    assert weights.keys() == load_file(tmp_path / "peft" / WEIGHTS_FILE).keys()
    assert len(weights) == 2 * 7 * 2  # lora_A + lora_B, 7 projections, 2 layers
    assert all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert not any("embed_tokens" in k or "lm_head" in k for k in weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fmt", "peft"]  # no temporary folder left behind


@pytest.mark.slow
def test_adapter_is_saved_in_the_compute_dtype(trainer, trainer32, tmp_path):
    """16-bit compute (Unsloth's bf16 here, fp16/bf16 on GPU) saves 16-bit weights: half of fp32's bytes."""
    import torch
    from safetensors.torch import load_file

    task = recolor_task("dtype", seed=1)
    sizes = {}
    for t in (trainer, trainer32):
        r = t.train_task(task.id, leave_one_out(task), tmp_path / str(t.compute_dtype), steps=2)
        weights = load_file(r.adapter_dir / WEIGHTS_FILE)
        assert {v.dtype for v in weights.values()} == {t.compute_dtype} == {t.save_dtype}
        assert r.adapter_bytes == (r.adapter_dir / WEIGHTS_FILE).stat().st_size
        n_params = sum(v.numel() for v in weights.values())
        sizes[t.compute_dtype] = r.adapter_bytes
        assert n_params * t.compute_dtype.itemsize < r.adapter_bytes < n_params * t.compute_dtype.itemsize + 8192
        # the saved adapter is the in-memory one, rounded to the save dtype
        mem = t.adapter_state()
        assert all(torch.equal(weights[k], mem[k]) for k in weights)
    print(f"adapter bytes (tiny model, r=8, {n_params} params): {sizes}")
    assert trainer.compute_dtype == torch.bfloat16 and sizes[torch.bfloat16] < 0.55 * sizes[torch.float32]


@pytest.mark.slow
def test_deadline_stops_early_and_still_saves(trainer, tmp_path):
    task = recolor_task("late", seed=2)
    r = trainer.train_task(task.id, leave_one_out(task), tmp_path / "late", steps=50, deadline=time.time() - 1)
    assert r.stopped_early and r.steps_done == 0 and r.losses == []
    assert (r.adapter_dir / "adapter_model.safetensors").exists()
    evals = held_out(trainer, task)  # a freshly reset adapter (B = 0) is exactly the base model
    assert trainer.nll(evals, r.adapter_dir) == pytest.approx(trainer.nll(evals), rel=1e-6)


def test_examples_longer_than_max_seq_len_are_left_out_and_counted(trainer32, tmp_path):
    """The count the worker's train event and the report's ``examples_skipped_for_length`` carry."""
    task = recolor_task("long", seed=6)
    fits = [trainer32.fmt.encode_example(e.demos, e.query, "all_outputs") for e in leave_one_out(task)]
    n = trainer32.config.max_seq_len + 1
    too_long = [Encoded([fits[0].input_ids[0]] * n, [-100] * (n - 1) + [fits[0].input_ids[0]])] * 2
    r = trainer32.train_task(task.id, fits + too_long, tmp_path / "long", steps=2)
    assert (r.examples_used, r.examples_skipped) == (len(fits), 2)
    with pytest.raises(ValueError, match="no training example fits"):
        trainer32.train_task(task.id, too_long, tmp_path / "none", steps=2)


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


# -- numerics and failures (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_nan_loss_skips_its_step_and_the_adapter_is_not_used(trainer32, tmp_path):
    task = recolor_task("nan", seed=8)
    out = tmp_path / "nan"
    r = trainer32.train_task(task.id, leave_one_out(task), out, steps=6,
                             step_hook=lambda step, loss: loss * float("nan") if step == 2 else loss)
    assert r.skipped_steps == 1 and r.steps_done == 6
    assert not r.finite and r.reason == "non-finite loss at step(s) [2]"
    assert r.adapter_dir is None and r.adapter_bytes == 0
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, no temporary folder
    # the NaN step was not applied: the weights stayed finite and training went on from them
    assert all(bool(v.isfinite().all()) for v in trainer32.lora_state().values())
    assert np.isfinite(r.losses[3:]).all() and r.losses[-1] < r.losses[0]


@pytest.mark.slow
def test_nonfinite_weight_is_caught_before_saving(trainer32, tmp_path):
    """A weight that became inf (every loss still finite) makes the adapter unusable."""
    poisoned, calls = trainer32._lora[-1][1], []

    def poison(step, loss):
        calls.append(step)
        if calls.count(3) == 2:  # after the last forward of the last step: no later loss sees it
            poisoned.data[0, 0] = float("inf")  # .data: an in-place fault that autograd does not see
        return loss

    task = recolor_task("inf", seed=9)
    r = trainer32.train_task(task.id, leave_one_out(task), tmp_path / "inf", steps=4, step_hook=poison)
    assert np.isfinite(r.losses).all() and r.skipped_steps == 1  # its gradients were not finite either
    assert not r.finite and r.reason.startswith("1 of 28 LoRA tensors not finite in float32")
    assert r.adapter_dir is None and not (tmp_path / "inf").exists()


@pytest.mark.slow
def test_exception_in_a_step_leaves_no_gradient_or_activation_for_the_next_task(trainer32, tmp_path):
    """An OOM in the 2nd micro-batch of step 3 of task A: the 1st micro-batch's gradients are already in
    ``.grad``. Task B trained next must be bit-identical to task B trained before A."""
    b, a = recolor_task("B", seed=10), recolor_task("A", seed=11, color=5)
    clean = trainer32.train_task("B", leave_one_out(b), tmp_path / "B0", steps=6, seed=3)
    clean_state = trainer32.lora_state()

    calls, seen = [], []

    def oom(step, loss):
        calls.append(step)
        if step == 3 and calls.count(3) == 2:
            seen.append(weakref.ref(loss))
            raise RuntimeError("CUDA out of memory (injected)")
        return loss

    with pytest.raises(RuntimeError, match="injected") as info:
        trainer32.train_task("A", leave_one_out(a), tmp_path / "A", steps=6, step_hook=oom)
    assert info.value is not None and not (tmp_path / "A").exists()
    assert all(p.grad is None for p in trainer32.model.parameters())
    gc.collect()
    assert seen[0]() is None, "the failed step's loss (and its graph) is still alive"

    after = trainer32.train_task("B", leave_one_out(b), tmp_path / "B1", steps=6, seed=3)
    assert after.losses == clean.losses
    state = trainer32.lora_state()
    assert all(np.array_equal(state[k].numpy(), clean_state[k].numpy()) for k in state)


@pytest.mark.slow
def test_failed_save_names_the_task_removes_the_partial_folder_and_keeps_the_old_adapter(trainer32, tmp_path):
    task = recolor_task("disk", seed=12)
    out = tmp_path / "disk"
    trainer32.train_task(task.id, leave_one_out(task), out, steps=2)
    before = (out / WEIGHTS_FILE).read_bytes()
    partial = []

    def enospc(tmp_dir):
        partial.append(sorted(p.name for p in tmp_dir.iterdir()))
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(AdapterSaveError, match=r"task disk: writing its adapter .* No space left") as info:
        trainer32.train_task(task.id, leave_one_out(task), out, steps=3, save_hook=enospc)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert partial == [["adapter_config.json"]]  # the fault hit mid-write
    assert [p.name for p in tmp_path.iterdir()] == ["disk"] and (out / WEIGHTS_FILE).read_bytes() == before
    r = trainer32.train_task(task.id, leave_one_out(task), out, steps=3)  # a good save replaces it atomically
    assert r.finite and (out / WEIGHTS_FILE).read_bytes() != before and [p.name for p in tmp_path.iterdir()] == ["disk"]


@pytest.mark.slow
@pytest.mark.gpu
def test_fp16_grad_scaler_counts_skipped_steps_on_gpu(model_dir, tmp_path):
    """fp16 on CUDA (the T4 path): an inf loss makes GradScaler skip the step; the count comes from the
    scale drop, the task is not usable, and a clean task saves fp16 weights."""
    import torch
    from safetensors.torch import load_file

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    task = recolor_task("fp16", seed=13)
    with Trainer(model_dir, TrainConfig(backend="peft", load_in_4bit=False, **dict(TINY, dtype="float16"))) as t:
        assert t.compute_dtype == torch.float16
        bad = t.train_task(task.id, leave_one_out(task), tmp_path / "bad", steps=6,
                           step_hook=lambda step, loss: loss * float("inf") if step == 4 else loss)
        good = t.train_task(task.id, leave_one_out(task), tmp_path / "good", steps=6)
    assert bad.skipped_steps >= 1 and not bad.finite and bad.adapter_dir is None and bad.losses[4] == float("inf")
    assert good.skipped_steps < 6  # GradScaler may skip early steps while it finds its scale, not all of them
    assert good.finite and {v.dtype for v in load_file(good.adapter_dir / WEIGHTS_FILE).values()} == {torch.float16}
