"""Pretraining as a specification: what is held out stays out (by id and by content), batches cover the epoch
without mixing lengths, the schedule warms up and decays, a short run learns, resumes exactly, and its folder is a
model every engine of the kit loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.arc.data import Task, load_challenges, package_sample_dir
from arcttt_kaggle.engines.format import IGNORE_INDEX, ArcFormat, FormatSpec
from arcttt_kaggle.engines.tinymodel import build_tokenizer
from arcttt_kaggle.pretrain.corpus import (CorpusConfig, EpochViews, Exclusion, apply_exclusion, bucket_batches,
                                           epoch_sequences, load_task_files, pairs_too_long)
from arcttt_kaggle.pretrain.loop import PretrainConfig, pretrain
from arcttt_kaggle.pretrain.shapes import build_arc_model

SAMPLE = package_sample_dir() / "arc-agi_test_challenges.json"


def write_tasks(path: Path, tasks: dict[str, dict]) -> Path:
    path.write_text(json.dumps(tasks))
    return path


def task_dict(seed: int, pairs: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    grid = lambda: rng.integers(0, 10, size=(3, 4)).tolist()  # noqa: E731
    return {"train": [{"input": grid(), "output": grid()} for _ in range(pairs)], "test": [{"input": grid()}]}


def test_exclusion_drops_the_same_id_a_reordered_copy_under_another_id_and_a_shared_pair(tmp_path):
    held = task_dict(1)
    reordered = {"train": held["train"][::-1], "test": held["test"]}  # the ARC-AGI-2 way of copying a task
    one_shared = {"train": [held["train"][1]] + task_dict(2)["train"][:2], "test": task_dict(2)["test"]}
    unrelated = task_dict(3)
    # The held-out test pair's output is in its solutions file: a training task holding that pair is dropped too.
    solved = {"train": [{"input": held["test"][0]["input"], "output": [[7]]}] + task_dict(4)["train"][:1],
              "test": task_dict(4)["test"]}
    write_tasks(tmp_path / "held_challenges.json", {"aaaa0001": held})
    (tmp_path / "held_solutions.json").write_text(json.dumps({"aaaa0001": [[[7]]]}))
    train = write_tasks(tmp_path / "train_challenges.json", {"aaaa0001": held, "bbbb0002": reordered,
                                                             "cccc0003": one_shared, "dddd0004": unrelated,
                                                             "eeee0005": solved})
    ex = Exclusion.from_files([tmp_path / "held_challenges.json"])
    kept, stats = apply_exclusion(load_task_files([train]), ex)
    assert [t.id for t in kept] == ["dddd0004"]
    assert (stats.excluded_by_id, stats.excluded_by_content, stats.tasks_kept) == (1, 3, 1)


def test_arc_agi_2_training_minus_arc_agi_1_evaluation_drops_its_376_copies(shared_data):
    ex = Exclusion.from_files([shared_data / "arc-agi-1" / "arc-agi_evaluation_challenges.json"])
    tasks = load_task_files([shared_data / "arc-agi-2" / "arc-agi_training_challenges.json"])
    kept, stats = apply_exclusion(tasks, ex)
    # 376 copies by id; one more task shares a pair with an evaluation task up to a rotation or flip and colours
    assert (stats.excluded_by_id, stats.excluded_by_content, len(kept)) == (376, 1, 623)
    # and nothing kept shares a pair with the evaluation set, whatever its id
    assert not any(ex.reason(t) for t in kept)
    # the sample (10 ARC-AGI-1 evaluation tasks) is inside what was dropped
    sample = load_challenges(SAMPLE).tasks
    assert not set(sample) & {t.id for t in kept}


def test_an_epoch_is_augmented_leave_one_out_with_loss_on_outputs_only():
    fmt = ArcFormat(build_tokenizer())
    tasks = list(load_challenges(SAMPLE, solutions=SAMPLE.with_name("arc-agi_test_solutions.json")).tasks.values())
    seqs = epoch_sequences(tasks, fmt, 4096, epoch=0, cfg=CorpusConfig(views_per_task=2, examples_per_task=6))
    assert pairs_too_long(tasks, fmt, 4096) == 0 and pairs_too_long(tasks, fmt, 64) == 49  # every pair at 64
    assert 10 * 3 <= len(seqs) <= 10 * 6
    digits = set(fmt.digit_ids) | {fmt.row_id, fmt.eos_id}
    for ids, labels in seqs:
        learned = [t for t in labels if t != IGNORE_INDEX]
        assert learned and set(learned) <= digits  # outputs only: never a marker of the prompt
        assert ids.count(fmt.eos_id) == learned.count(fmt.eos_id)
    again = epoch_sequences(tasks, fmt, 4096, epoch=0, cfg=CorpusConfig(views_per_task=2, examples_per_task=6))
    assert again == seqs  # the same epoch is the same data


def sample_tasks_solved() -> list[Task]:
    return list(load_challenges(SAMPLE, solutions=SAMPLE.with_name("arc-agi_test_solutions.json")).tasks.values())


@pytest.mark.parametrize("views", [4, 8])
def test_every_example_draws_its_view_uniformly_from_the_pool(views):
    """The identity view's share is about 1/views even for tasks with many pairs (the old builder ordered
    examples view by view, identity first, so a capped task only ever saw the identity view)."""
    fmt = ArcFormat(build_tokenizer())
    drawn = EpochViews()
    for epoch in range(3):
        epoch_sequences(sample_tasks_solved(), fmt, 4096, epoch, CorpusConfig(views_per_task=views,
                                                                                examples_per_task=40), drawn)
    assert drawn.examples > 1000
    assert abs(drawn.identity_share - 1 / views) < 0.4 / views, drawn.as_dict()
    assert len(drawn.distinct) == 10 * views  # every view of every task was drawn


def test_a_task_capped_at_four_examples_sees_four_views_and_another_set_next_epoch():
    fmt = ArcFormat(build_tokenizer())
    tasks = sample_tasks_solved()
    cfg = CorpusConfig(examples_per_task=4)  # the starter's cap, the default pool of 256 views
    per_epoch = []
    for epoch in (0, 1):
        drawn = EpochViews()
        seqs = epoch_sequences(tasks, fmt, 4096, epoch, cfg, drawn)
        assert len(seqs) == 40 and drawn.identity <= 1 and len(drawn.distinct) >= 38
        per_epoch.append([tuple(seqs[4 * i + j][0]) for i in range(10) for j in range(4)])
    changed = sum(set(per_epoch[0][4 * i:4 * i + 4]) != set(per_epoch[1][4 * i:4 * i + 4]) for i in range(10))
    assert changed == 10  # every task's examples differ from one epoch to the next


def test_length_buckets_cover_every_sequence_once_within_the_token_budget_and_pad_less_than_random_batches():
    rng = np.random.default_rng(0)
    seqs = [([1] * n, [2] * n) for n in rng.integers(20, 900, size=300).tolist()]
    batches = bucket_batches(seqs, 4096, pad_id=0, seed=1)
    assert sum(int(b.attention_mask.sum()) for b in batches) == sum(len(s[0]) for s in seqs)
    assert sorted(int(n) for b in batches for n in b.attention_mask.sum(1)) == sorted(len(s[0]) for s in seqs)
    assert all(b.input_ids.size <= 4096 for b in batches)
    padding = 1 - sum(b.tokens for b in batches) / sum(b.input_ids.size for b in batches)
    rows = max(1, 4096 // 900)
    order = rng.permutation(len(seqs))
    random_pad = 1 - sum(len(s[0]) for s in seqs) / sum(
        max(len(seqs[i][0]) for i in order[k:k + rows]) * len(order[k:k + rows]) for k in range(0, len(seqs), rows))
    assert padding < 0.05 < random_pad, (padding, random_pad)


def test_the_schedule_warms_up_peaks_and_decays_to_its_floor_as_the_budget_runs_out():
    cfg = PretrainConfig(minutes=10, tokens=1_000_000, lr=1e-3, warmup=0.1, min_lr_ratio=0.1)
    assert cfg.progress(0, 0) == 0 and cfg.progress(500_000, 60) == 0.5 and cfg.progress(10, 300) == 0.5
    assert cfg.progress(2_000_000, 0) == 1.0
    lrs = [cfg.lr_at(p) for p in np.linspace(0, 1, 101)]
    peak = int(np.argmax(lrs))
    assert lrs[0] < 0.01 * cfg.lr and peak == 10 and lrs[peak] == pytest.approx(cfg.lr)
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="budget"):
        PretrainConfig()
    with pytest.raises(ValueError, match="tokens_per_batch"):
        PretrainConfig(tokens=1, max_seq_len=4096, corpus=CorpusConfig(tokens_per_batch=2048))


@pytest.mark.parametrize("profile", ["kit", "architects", "nvarc"])
def test_a_new_model_folder_speaks_its_profile(tmp_path, profile):
    from transformers import AutoTokenizer

    folder = build_arc_model(tmp_path / profile, "arc-nano", profile)
    tok = AutoTokenizer.from_pretrained(folder)
    fmt = ArcFormat.for_model(tok, folder)
    assert fmt.profile == profile
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["vocab_size"] == len(tok) <= 4 + len(fmt.layout.keep)
    assert fmt.eos_id == cfg["eos_token_id"]  # decoders stop where the profile ends an output


# -- a one-minute run, shared by the tests below ------------------------------------------------------------------
TINY_RUN = dict(shape="arc-nano", max_seq_len=1024, tokens=40_000, lr=3e-3, warmup=0.05, log_every=2,
                corpus=CorpusConfig(examples_per_task=4, tokens_per_batch=2048))


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 40k-token run of arc-nano on the sample tasks (their solutions beside them): (folder, record)."""
    out = tmp_path_factory.mktemp("pretrain") / "model"
    rec = pretrain([SAMPLE], out, PretrainConfig(**TINY_RUN), progress=False)
    return out, rec


def test_a_short_run_learns_and_records_itself(short_run):
    out, rec = short_run
    curve = [c[3] for c in rec["curve"]]
    assert rec["tokens_seen"] >= 40_000 and rec["data"]["tasks_kept"] == 10
    assert curve[-1] < 0.8 * curve[0], curve  # the loss fell
    assert rec["final_loss"] == pytest.approx(np.mean(curve[-5:]))
    assert json.loads((out / "pretrain.json").read_text())["steps"] == rec["steps"]
    views = rec["views"]  # each example drew its own view from a pool of 256
    assert views["identity_view_share"] <= 0.25 and views["distinct_views"] >= 0.9 * views["examples"], views
    assert (out / "loss.png").stat().st_size > 1000 and (out / "checkpoint" / "optimizer.pt").exists()
    from safetensors.numpy import load_file

    init = build_arc_model(out.parent / "init", "arc-nano", "kit", seed=0)  # the same seed: the run's start
    a, b = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(not np.allclose(a[k], b[k]) for k in a if k.endswith("proj.weight"))  # every matrix moved


def test_a_continued_run_records_what_its_init_trained_on(short_run, tmp_path):
    out, rec = short_run
    cont = pretrain([SAMPLE], tmp_path / "cont", PretrainConfig(**{**TINY_RUN, "tokens": 2_000}), init=out,
                    progress=False)
    lineage = json.loads((tmp_path / "cont" / "pretrain.json").read_text())["init_record"]
    assert cont["init"] == str(out) and lineage["init"] == "new arc-nano" and "init_record" not in lineage
    assert lineage["data"] == rec["data"] and lineage["config"]["corpus"] == rec["config"]["corpus"]
    assert lineage["epoch"] == rec["epoch"] and lineage["tokens_seen"] == rec["tokens_seen"]


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from arcttt_kaggle.pretrain import loop

    cfg = PretrainConfig(**{**TINY_RUN, "tokens": 12_000, "checkpoint_minutes": 1e-6})
    whole = pretrain([SAMPLE], tmp_path / "whole", cfg, progress=False)

    real_step, calls = loop.Pretrainer.step, []

    def dies_at_step_4(self, batch, lr):  # the fault: the process is killed mid-run
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real_step(self, batch, lr)

    monkeypatch.setattr(loop.Pretrainer, "step", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        pretrain([SAMPLE], tmp_path / "cut", cfg, progress=False)
    monkeypatch.setattr(loop.Pretrainer, "step", real_step)
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["state"]
    assert saved["step"] == 3
    resumed = pretrain([SAMPLE], tmp_path / "cut", cfg, resume=True, progress=False)
    assert resumed["steps"] == whole["steps"] and resumed["tokens_seen"] == whole["tokens_seen"]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    with pytest.raises(ValueError, match="another config"):
        pretrain([SAMPLE], tmp_path / "cut", PretrainConfig(**{**TINY_RUN, "tokens": 13_000}), resume=True,
                 progress=False)


@pytest.mark.parametrize("change", ["data", "exclude", "init"])
def test_a_resume_on_other_data_exclusions_or_init_is_refused_by_name(short_run, tmp_path, change):
    out, _ = short_run
    other = write_tasks(tmp_path / "other_challenges.json", {"aaaa0001": task_dict(1)})
    kwargs = {"data": {"data": [other]}, "exclude": {"exclude": [other]}, "init": {"init": out}}[change]
    args = {"data": [SAMPLE], "exclude": (), "init": None, **kwargs}
    with pytest.raises(ValueError, match=f"{change} differs from the checkpoint"):
        pretrain(args["data"], out, PretrainConfig(**TINY_RUN), exclude=args["exclude"], init=args["init"],
                 resume=True, progress=False)


@pytest.mark.slow
def test_the_pretrained_folder_trains_decodes_in_vllm_and_transformers_and_scores(short_run, sample_tasks, tmp_path):
    """TTT (PEFT) on the folder, vLLM multi-LoRA greedy equal to the transformers backend's, the scorer's
    log-likelihoods equal to the trainer's NLL of the same text."""
    from dataclasses import replace

    from arcttt_kaggle.engines.decode import DecodeConfig, Decoder, plan_requests
    from arcttt_kaggle.engines.score_candidates import Scorer
    from arcttt_kaggle.engines.train import TrainConfig, Trainer
    from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples

    folder, _ = short_run
    task = sample_tasks["00576224"]
    examples = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=2, max_examples_per_task=4,
                                                      max_tokens=1024))
    cfg = TrainConfig(backend="peft", load_in_4bit=False, dtype="float32", lora_rank=8, lora_alpha=16, steps=6,
                      learning_rate=1e-2, warmup_steps=1, gradient_checkpointing=False, max_seq_len=1024)
    with Trainer(folder, cfg) as trainer:
        assert trainer.fmt.profile == "kit"
        r = trainer.train_task(task.id, examples, tmp_path / "adapter")
        assert r.finite and r.losses[-1] < r.losses[0]
        before, after = trainer.nll(examples), trainer.nll(examples, r.adapter_dir)
    assert after < before

    plans = plan_requests(task, None, 2, seed=0)
    requests = [replace(q, adapter_dir=a) for a in (r.adapter_dir, None) for q in plans]
    ids = {}
    for backend in ("vllm", "hf"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
            d = Decoder(folder, DecodeConfig(backend=backend, dtype="float32", max_loras=2, max_lora_rank=8,
                                             max_model_len=2048, enforce_eager=True))
            try:
                d.generate(requests)
                ids[backend] = [t[0] for t in d.last_token_ids]
            finally:
                d.close()
    assert ids["vllm"] == ids["hf"]
    with Scorer(folder, dtype="float32", device="cpu") as scorer:
        got = scorer.score(task, 0, [task.test[0].output], [plans[0].view], r.adapter_dir)
    assert np.isfinite(got).all() and got[0] < 0
