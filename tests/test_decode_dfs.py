"""decode_dfs.py: DFS candidate enumeration, every completion with probability >= tau, exact log-probabilities.

Pure tests (no engine): on toy "models" (a seeded function from the token path to logits) both enumerations,
the vLLM-style rounds (``enumerate_rounds`` driven by an emulated engine that decodes greedily and reports
log-probabilities the way vLLM does) and the reference ``depth_first``, return EXACTLY the set a brute-force
enumeration of every sequence finds, with the grid grammar (renormalized over the allowed tokens; the engine's
greedy path may leave the grammar) and without it (top-k raw log-probabilities); caps truncate and say so.

Slow tests (real engines, fp32 CPU): vLLM DFS (all requests of two trained adapters and the base model in
shared rounds) and the transformers KV-cache DFS return the same candidate sets with log-probabilities within
1e-4, with and without the grammar; a cap that truncates is reported on the candidates and in the stats.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.engines.decode import DecodeConfig, plan_requests
from arcttt_kaggle.engines.decode_dfs import (Branch, DfsLimits, Root, depth_first, enumerate_rounds, step_logprobs,
                                      walk)
from arcttt_kaggle.engines.format import ArcFormat
from arcttt_kaggle.engines.tinymodel import build_tokenizer

EOS = 0


# -- toy models and brute force --------------------------------------------------------------------------------------
def toy_logprobs(seed: int, path: tuple[int, ...], vocab: int, sharpness: float) -> np.ndarray:
    """The toy model: full-vocabulary log-probabilities after ``path`` (float64, deterministic in seed and path)."""
    logits = np.random.default_rng([seed, len(path), *path]).normal(size=vocab) * sharpness
    return logits - np.logaddexp.reduce(logits)


def masked(lp: np.ndarray, allowed) -> dict[int, float]:
    """Direct renormalization over ``allowed`` (a masked softmax), independent of ``step_logprobs``."""
    sub = lp[list(allowed)]
    return {int(t): float(v) for t, v in zip(allowed, sub - np.logaddexp.reduce(sub))}


def brute_force(seed, vocab, sharpness, max_tokens, log_tau, eos=EOS, grammar=None) -> dict[tuple, float]:
    """Every terminal sequence (eos, or max_tokens reached) with log-probability >= log tau, by visiting EVERY
    sequence (no pruning)."""
    out: dict[tuple, float] = {}

    def visit(path, lp, state):
        full = toy_logprobs(seed, path, vocab, sharpness)
        probs = masked(full, state.allowed()) if state is not None else dict(enumerate(full.tolist()))
        for t, l in probs.items():
            nxt = (*path, t)
            if t == eos or len(nxt) >= max_tokens:
                if lp + l >= log_tau:
                    out[nxt] = lp + l
                continue
            st_ = None
            if state is not None:
                import copy
                st_ = copy.copy(state)
                st_.push(t)
            visit(nxt, lp + l, st_)

    visit((), 0.0, None if grammar is None else grammar)
    return out


def emulated_engine(seed, vocab, sharpness, roots, grid_tokens=None, k=1, eos=EOS):
    """What ``_VllmRounds`` gets from vLLM: per branch the greedy continuation to eos or the bound (argmax over
    ``grid_tokens`` when given: allowed_token_ids knows no grammar position) and per step the raw
    full-vocabulary log-probabilities of the grid tokens (grammar) or of the top k (raw); at most ``Branch.chunk``
    tokens per round when it is set, as ``max_tokens`` does."""
    def decode(branches, cutoff):
        outs = []
        for b in branches:
            path, gen, rep = list(b.tokens), [], []
            while len(path) < roots[b.root].max_tokens and not (b.chunk and len(gen) >= b.chunk):
                full = toy_logprobs(seed, tuple(path), vocab, sharpness)
                if grid_tokens is not None:
                    g = max(grid_tokens, key=lambda t: full[t])
                    rep.append({t: float(full[t]) for t in grid_tokens})
                else:
                    g = int(np.argmax(full))
                    top = np.argsort(-full)[:k]
                    rep.append({int(t): float(full[t]) for t in [*top, g]})
                gen.append(g)
                path.append(g)
                if g == eos:
                    break
            outs.append((gen, rep))
        return outs
    return decode


def as_dict(found) -> dict[tuple, float]:
    return {f.tokens: f.logprob for f in found}


def same_sets(got: dict, want: dict, log_tau: float, tol: float) -> None:
    """Equal sets and log-probabilities; a sequence within ``tol`` of log tau may be on either side."""
    near = {s for s, v in {**got, **want}.items() if abs(v - log_tau) <= tol}
    assert set(got) - near == set(want) - near
    for s in set(got) & set(want):
        assert got[s] == pytest.approx(want[s], abs=tol)


# -- the renormalization ----------------------------------------------------------------------------------------------
@given(st.lists(st.floats(-30, 5), min_size=3, max_size=12), st.data())
def test_step_logprobs_renormalizes_over_the_allowed_tokens_like_a_masked_softmax(logits, data):
    lp = np.asarray(logits) - np.logaddexp.reduce(np.asarray(logits))
    allowed = data.draw(st.lists(st.sampled_from(range(len(logits))), min_size=1, unique=True))
    got = step_logprobs(dict(enumerate(lp.tolist())), allowed)
    want = masked(lp, allowed)
    assert set(got) == set(want) and all(got[t] == pytest.approx(want[t], abs=1e-9) for t in want)
    assert math.fsum(math.exp(v) for v in got.values()) == pytest.approx(1.0, abs=1e-9)
    # the same from log-probabilities normalized over any superset (vLLM's raw or its masked ones)
    shifted = {t: v - 3.7 for t, v in enumerate(lp.tolist())}
    assert all(step_logprobs(shifted, allowed)[t] == pytest.approx(want[t], abs=1e-9) for t in want)


def test_step_logprobs_refuses_a_report_missing_an_allowed_token():
    with pytest.raises(ValueError, match="no log-probability for allowed token ids \\[5\\]"):
        step_logprobs({1: -0.1, 2: -2.0}, [1, 5])


# -- both enumerations == brute force ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 4), sharpness=st.floats(0.5, 4.0),
       max_tokens=st.integers(1, 5), tau=st.floats(0.01, 0.6), chunk=st.integers(0, 3))
def test_raw_distribution_rounds_and_depth_first_return_exactly_the_completions_above_tau(
        seed, vocab, sharpness, max_tokens, tau, chunk):
    limits = DfsLimits(tau)
    want = brute_force(seed, vocab, sharpness, max_tokens, limits.log_tau)
    roots = [Root("t", max_tokens)]
    res = enumerate_rounds(roots, emulated_engine(seed, vocab, sharpness, roots, k=limits.top_k), limits, EOS,
                           chunk=chunk)
    assert not res.truncated
    same_sets(as_dict(res.found[0]), want, limits.log_tau, 1e-12)

    def expand(path, state):  # the reference gets the top floor(1/tau), like the transformers stepper
        full = toy_logprobs(seed, path, vocab, sharpness)
        return {int(t): float(full[t]) for t in np.argsort(-full)[:limits.top_k]}

    found, why, _ = depth_first(0, expand, max_tokens, None, limits.log_tau, EOS)
    assert why == ""
    same_sets(as_dict(found), want, limits.log_tau, 1e-12)
    assert len(want) <= 1 / tau + 1e-9  # disjoint completions, each >= tau


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), sharpness=st.floats(1.0, 5.0), tau=st.floats(0.002, 0.5),
       bound=st.sampled_from([(1, 2), (2, 1), (2, 2), (1, 3)]), chunk=st.sampled_from([0, 1, 2, 3, 16]))
def test_grid_grammar_rounds_and_depth_first_return_exactly_the_grids_above_tau(seed, sharpness, tau, bound, chunk):
    """The engine greedy-decodes over the grid tokens without knowing the grammar's position (it may emit eos or
    a row separator where the grammar forbids it); the rounds still find every grid >= tau."""
    fmt = ArcFormat(build_tokenizer())
    vocab, eos = len(build_tokenizer()), fmt.eos_id
    limits = DfsLimits(tau)
    max_tokens = fmt.max_output_tokens(*bound)
    want = brute_force(seed, vocab, sharpness, max_tokens, limits.log_tau, eos, fmt.grid_start(*bound))
    assert all(s[-1] == eos and fmt.parse(s).grid is not None for s in want)
    roots = [Root("t", max_tokens, fmt.grid_start(*bound))]
    res = enumerate_rounds(roots, emulated_engine(seed, vocab, sharpness, roots, fmt.grid_tokens(), eos=eos),
                           limits, eos, chunk=chunk)
    same_sets(as_dict(res.found[0]), want, limits.log_tau, 1e-9)

    def expand(path, state):
        return masked(toy_logprobs(seed, path, vocab, sharpness), state.allowed())

    found, _, _ = depth_first(0, expand, max_tokens, fmt.grid_start(*bound), limits.log_tau, eos)
    same_sets(as_dict(found), want, limits.log_tau, 1e-9)


def test_walk_opens_every_alternative_above_tau_and_stops_where_the_path_drops_below():
    # step 0: greedy 1 (p .5), alternatives 2 (.3, opens a branch) and eos (.2, a completion)
    # step 1: greedy 1 (p .5 -> path .25 >= .2), alternative 2 (.4 -> path .2, kept: >= tau), eos (.1 -> .05, pruned)
    # step 2: greedy 1 (p .5 -> path .125 < .2): the walk ends; nothing at this step survives either
    rep = [{1: math.log(.5), 2: math.log(.3), EOS: math.log(.2)},
           {1: math.log(.5), 2: math.log(.4), EOS: math.log(.1)},
           {1: math.log(.5), 2: math.log(.3), EOS: math.log(.2)}]
    found, opened = walk(Branch(0, (), 0.0, None), [1, 1, 1], rep, 10, math.log(0.2) - 1e-12, EOS)
    assert [(f.tokens, f.finish) for f in found] == [((EOS,), "stop")]
    assert [(b.tokens, round(math.exp(b.logprob), 6)) for b in opened] == [((2,), 0.3), ((1, 2), 0.2)]


def test_opened_branches_decode_what_their_slack_affords_at_this_walks_token_cost():
    """Chunk sizing: a branch whose slack above log tau buys n tokens at the walk's mean greedy cost decodes n + 1
    (the last shows the step where it falls below, whose alternatives may survive); never more than the chunk,
    never less than 1; a confident walk (cost ~0) keeps the whole chunk; the continuation doubles its own."""
    from arcttt_kaggle.engines.decode_dfs import sized_chunk

    assert sized_chunk(2.9, 2.4, 16) == 2 and sized_chunk(0.1, 2.4, 16) == 1 and sized_chunk(50.0, 0.5, 16) == 16
    assert sized_chunk(5.0, 0.0, 16) == 16 and sized_chunk(5.0, 1.0, 0) == 0
    # a near-uniform step: greedy q = .4 (cost .92 nats), alternative .35 opens with slack log(.35/.01) = 3.56
    rep = [{1: math.log(.4), 2: math.log(.35), EOS: math.log(.25)}] * 2
    _, opened = walk(Branch(0, (), 0.0, None, 16), [1, 1], rep, 10, math.log(0.01), EOS, chunk=16)
    alt = [b for b in opened if b.tokens == (2,)][0]
    assert alt.chunk == int(math.log(.35 / .01) / -math.log(.4)) + 1 == 4
    assert opened[-1].tokens == (1, 1) and opened[-1].chunk == 32  # the continuation, cut at its chunk


def test_walk_at_the_bound_ends_completions_by_length_and_refuses_an_empty_continuation():
    rep = [{1: math.log(.9), 2: math.log(.1)}]
    found, opened = walk(Branch(0, (3,), 0.0, None), [1], rep, 2, math.log(0.05), EOS)
    assert sorted((f.tokens, f.finish) for f in found) == [((3, 1), "length"), ((3, 2), "length")] and not opened
    with pytest.raises(RuntimeError, match="no token"):
        walk(Branch(0, (), 0.0, None), [], [], 2, math.log(0.05), EOS)


# -- caps: a cut enumeration is reported, never silent ----------------------------------------------------------------
def flat_engine_roots(n_roots=2, max_tokens=4):
    return [Root("a" if i == 0 else "b", max_tokens) for i in range(n_roots)]


def test_candidate_cap_keeps_the_most_probable_and_reports_the_cut():
    roots = flat_engine_roots()
    decode = emulated_engine(3, 3, 0.3, roots, k=50)  # near-uniform: many completions >= tau
    full = enumerate_rounds(roots, decode, DfsLimits(0.02), EOS)
    capped = enumerate_rounds(roots, decode, DfsLimits(0.02, max_candidates=3), EOS)
    assert len(full.found[0]) > 3 and not full.truncated
    assert len(capped.found[0]) == 3 and "max_candidates 3" in capped.truncated["a"]
    assert {f.tokens for f in capped.found[0]} <= {f.tokens for f in full.found[0]}
    # what the capped search found beyond the cap is dropped least probable first
    unc = enumerate_rounds(roots, decode, DfsLimits(0.02, max_candidates=10_000), EOS)
    assert len(capped.found[1]) == 3 and not set(unc.truncated)


def test_token_and_second_caps_and_the_deadline_truncate_and_say_which():
    roots = flat_engine_roots()
    decode = emulated_engine(3, 3, 0.3, roots, k=50)
    res = enumerate_rounds(roots, decode, DfsLimits(0.02, max_tokens=5), EOS)
    assert set(res.truncated) == {"a", "b"} and all("max_tokens 5" in v for v in res.truncated.values())
    ticks = iter(range(100))
    res = enumerate_rounds(roots, decode, DfsLimits(0.02, max_seconds=1.5), EOS, clock=lambda: next(ticks))
    assert res.rounds == 1 and all("max_seconds" in v for v in res.truncated.values())
    res = enumerate_rounds(roots, decode, DfsLimits(0.02), EOS, deadline=time.time() - 1)
    assert res.rounds == 0 and res.truncated == {"a": "deadline", "b": "deadline"}


def test_depth_first_stop_reports_the_reason_and_keeps_what_it_found():
    def expand(path, state):
        return {t: math.log(1 / 3) for t in range(3)}

    found, why, nodes = depth_first(0, expand, 3, None, math.log(0.01), EOS,
                                    stop=lambda n: "max_candidates 2" if n >= 2 else "")
    assert why == "max_candidates 2" and len(found) >= 2 and nodes >= 1


def test_dfs_config_validates():
    with pytest.raises(ValueError, match="dfs_threshold"):
        DecodeConfig(method="dfs", dfs_threshold=1.0)
    with pytest.raises(ValueError, match="temperature=0"):
        DecodeConfig(method="dfs", temperature=1.0, samples_per_view=2)
    with pytest.raises(ValueError, match="max_logprobs"):
        DecodeConfig(method="dfs", dfs_threshold=0.01)  # top-100 without the grammar
    assert DecodeConfig(method="dfs", dfs_threshold=0.01, constrain_grid=True).dfs_threshold == 0.01
    with pytest.raises(ValueError, match="method"):
        DecodeConfig(method="beam")
    with pytest.raises(ValueError, match=">= 0"):
        DecodeConfig(method="dfs", dfs_max_candidates=-1)


# -- the real engines: vLLM rounds vs the transformers KV-cache DFS -------------------------------------------------
AGREE_TAU = 0.01  # the 8-step tiny adapters are unsure per cell: at 0.1 no 6x6 or 9x9 grid is that likely
RAW_TAU = 0.05  # the GPU presets' DFS threshold without the grid grammar (DecodeConfig refuses less there)
TASKS = ("00576224", "0692e18c")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tiny model, [adapter A, adapter B], how they were made): trained by ``Trainer(backend="unsloth")`` in a
    subprocess (the script of test_engines_agreement). The test fails when training fails: the issue asks for
    trained adapters, never random stand-ins."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_engines_agreement import TRAIN_SCRIPT

    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    root = tmp_path_factory.mktemp("dfs")
    model = ensure_tiny_model(root / "tiny")
    script = root / "train_adapters.py"
    script.write_text(TRAIN_SCRIPT)
    jobs = json.dumps({t: "float32" for t in TASKS})  # the script's {task: training dtype}
    proc = subprocess.run([sys.executable, str(script), str(model), str(root / "adapters"), jobs],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode == 0 and line:
        info = json.loads(line[len("RESULT "):])
        return model, [Path(info[t]["dir"]) for t in TASKS], f"Trainer: {info[TASKS[0]]['backend']}"
    pytest.fail(f"Trainer(backend='unsloth') failed (rc {proc.returncode}): {proc.stderr[-2000:]}")


@pytest.fixture(scope="module")
def dfs_requests(trained, sample_tasks):
    """2 tasks x 2 views under adapter A, adapter B and the base model: 12 requests in one DFS call."""
    plans = [r for t in TASKS for r in plan_requests(sample_tasks[t], None, 2, seed=0)]
    return [replace(r, adapter_dir=ad) for ad in (*trained[1], None) for r in plans]


def dfs_config(backend: str, **kw) -> DecodeConfig:
    return DecodeConfig(**{**dict(backend=backend, dtype="float32", max_loras=4, max_lora_rank=8, max_model_len=2048,
                                  enforce_eager=True, method="dfs", constrain_grid=True, dfs_threshold=AGREE_TAU),
                           **kw})


@pytest.fixture(scope="module")
def vllm_dfs(trained, dfs_requests):
    """(full enumeration, the decoder's stats, a token-capped enumeration and its stats, the backend name, and
    an enumeration whose engine raised whenever adapter A ran: (its output, stats, failures)) from ONE vLLM
    engine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        from arcttt_kaggle.engines.decode import DecodeStats, Decoder

        d = Decoder(trained[0], dfs_config("vllm"))
        try:
            full = d.generate(dfs_requests)
            stats = d.stats
            d.stats, d.config = DecodeStats(), dfs_config("vllm", dfs_max_tokens=40)
            capped = d.generate(dfs_requests)
            capped_stats = d.stats
            # the one stand-in: an engine error whenever adapter A is in a round (a load error naming nothing)
            name, real = trained[1][0].resolve().name, d._engine.llm.generate

            def failing(prompts, params, **kw):
                if any(lr is not None and lr.lora_name.startswith(name + "-") for lr in kw.get("lora_request") or []):
                    raise RuntimeError("injected fault")
                return real(prompts, params, **kw)

            d.stats, d.config, d._engine.llm.generate = DecodeStats(), dfs_config("vllm"), failing
            faulted = d.generate(dfs_requests), d.stats, d.last_failures
            d._engine.llm.generate = real
            # the GPU presets' setting: no grid grammar (raw top-k log-probabilities), tau >= 0.05
            d.stats, d.config = DecodeStats(), dfs_config("vllm", constrain_grid=False, dfs_threshold=RAW_TAU)
            raw = d.generate(dfs_requests), d.stats
            yield full, stats, capped, capped_stats, d.backend, faulted, raw
        finally:
            d.close()


@pytest.fixture(scope="module")
def hf_dfs(trained, dfs_requests, vllm_dfs):
    from arcttt_kaggle.engines.decode import DecodeStats, Decoder

    d = Decoder(trained[0], dfs_config("hf"))
    try:
        out, stats = d.generate(dfs_requests), d.stats
        d.stats, d.config = DecodeStats(), dfs_config("hf", constrain_grid=False, dfs_threshold=RAW_TAU)
        yield (out, stats), (d.generate(dfs_requests), d.stats)
    finally:
        d.close()


@pytest.mark.slow
def test_vllm_rounds_and_transformers_dfs_give_the_same_candidates_and_logprobs(trained, dfs_requests, vllm_dfs,
                                                                                 hf_dfs):
    v_out, v_stats, _, _, backend, _, _ = vllm_dfs
    h_out, h_stats = hf_dfs[0]
    assert "dfs tau=0.01" in backend and v_stats.dfs_rounds >= 2 and v_stats.engine_calls == v_stats.dfs_rounds
    assert len(v_out) == len(h_out) == len(dfs_requests)
    log_tau = math.log(AGREE_TAU)
    for r, vc, hc in zip(dfs_requests, v_out, h_out):
        got = {(c.key, c.view): c.logprob for c in vc}
        want = {(c.key, c.view): c.logprob for c in hc}
        same_sets(got, want, log_tau, 1e-4)
        for c in vc:
            assert c.extra["dfs"] and c.extra["truncated"] is False and c.grid is not None
            assert c.logprob >= log_tau and c.extra["finish"] == "stop"
    found = sum(len(c) for c in v_out)
    assert found >= 2, f"too few candidates above tau to compare ({trained[2]})"
    assert not v_stats.dfs_truncated and not h_stats.dfs_truncated
    assert sum(v_stats.dfs_candidates.values()) == found == sum(h_stats.dfs_candidates.values())
    # both enumerate the whole tree above tau: the reference expands each node once
    assert h_stats.dfs_branches >= found


@pytest.mark.slow
def test_without_the_grid_grammar_vllm_and_transformers_dfs_agree_at_the_gpu_presets_tau(dfs_requests, vllm_dfs,
                                                                                          hf_dfs):
    """The GPU presets decode DFS with ``constrain_grid=False`` (raw top-k log-probabilities, tau >= 0.05): the
    two engines must find the same completions with the same log-probabilities there too."""
    (v_out, v_stats), (h_out, h_stats) = vllm_dfs[6], hf_dfs[1]
    log_tau = math.log(RAW_TAU)
    for vc, hc in zip(v_out, h_out):
        same_sets({(c.key, c.view): c.logprob for c in vc}, {(c.key, c.view): c.logprob for c in hc}, log_tau, 1e-4)
        assert all(c.logprob >= log_tau and c.extra["dfs"] for c in vc)
    found = sum(len(c) for c in v_out)
    assert found >= 1, "no completion above tau to compare"
    assert sum(v_stats.dfs_candidates.values()) == found == sum(h_stats.dfs_candidates.values())


@pytest.mark.slow
def test_a_cap_that_truncates_is_reported_on_the_candidates_and_in_the_stats(dfs_requests, vllm_dfs):
    full, _, capped, stats, _, _, _ = vllm_dfs
    assert stats.dfs_truncated and all("max_tokens 40" in v for v in stats.dfs_truncated.values())
    for r, cands in zip(dfs_requests, capped):  # one task under 3 adapters: a cap group per (task, adapter)
        group = f"{r.task.id}/{'base' if r.adapter_dir is None else r.adapter_dir.name}"
        assert all(c.extra["truncated"] is (group in stats.dfs_truncated) for c in cands)
    # what a truncated search found is a subset of the full enumeration
    for f, c in zip(full, capped):
        assert {x.key for x in c} <= {x.key for x in f}


@pytest.mark.slow
def test_a_dfs_round_that_raises_for_one_adapter_is_isolated_and_its_views_enumerated_with_the_base(
        trained, dfs_requests, vllm_dfs):
    """The same isolation as sampling: bisection finds the requests whose adapter makes the engine raise, their
    retry on the base model succeeds, so adapter A is blamed and its views get exactly the base model's
    candidates; adapter B's and the base model's views keep what the clean enumeration found."""
    full, _, _, _, _, (out, stats, failures), _ = vllm_dfs
    a = trained[1][0].resolve()
    key = lambda cands: {(c.key, c.view): c.logprob for c in cands}  # noqa: E731
    log_tau = math.log(AGREE_TAU)
    n = len(dfs_requests) // 3  # requests: adapter A's views, then B's, then the base model's (same views)
    for i in range(n):
        same_sets(key(out[i]), key(full[2 * n + i]), log_tau, 1e-4)  # A's views, enumerated with the base model
        assert all(c.extra["adapter_failed"] == a.name and c.extra["adapter"] == "base" for c in out[i])
    for i in range(n, 3 * n):
        same_sets(key(out[i]), key(full[i]), log_tau, 1e-4)
    assert sum(len(c) for c in full[n:]) > 0, "nothing above tau to compare"
    assert stats.failed_calls >= 1 and stats.base_fallback_prompts == n and stats.dropped_prompts == 0
    assert {(f.adapter, f.action) for f in failures} == {(str(a), "base")}
    assert sum(f.requests for f in failures) == n and all("injected fault" in f.reason for f in failures)
