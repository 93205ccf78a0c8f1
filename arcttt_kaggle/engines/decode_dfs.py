"""DFS candidate enumeration (``DecodeConfig.method="dfs"``): for every view, ALL completions whose probability is
at least a threshold tau, each with its exact log-probability, for all tasks and their adapters together.

Instead of one greedy sample per view, the winners of ARC Prize 2024 (the ARChitects, DFS at tau = 10%) and
2025 (NVARC, tau = 0.2) enumerate every sufficiently likely completion depth-first in transformers, one task at
a time. Here the same set is enumerated with vLLM in *rounds*, so every task and adapter share each batch:

1. every view starts as one open *branch* (an empty completion prefix, log-probability 0);
2. a round decodes every open branch greedily to its end in ONE ``LLM.generate`` call (the branch's tokens are
   appended to the prompt: automatic prefix caching makes a branch pay only for its own new tokens), with the
   log-probabilities of the alternatives at every step;
3. ``walk`` follows each greedy path while its probability stays >= tau; at every step, every other token
   whose path probability is >= tau ends a completion (eos, or the output bound reached) or opens a new branch
   for the next round;
4. rounds repeat until no branch is open or a per-task cap (candidates, tokens, seconds) or the deadline
   stops them; a cap that cuts an enumeration is reported (``truncated`` on its candidates, the reason in
   ``DecodeStats.dfs_truncated``), never silent.

Exactness. Probabilities only shrink along a path, so pruning a prefix below tau loses nothing. A node of
probability p >= tau has children with q >= tau / p >= tau, and at most floor(1/tau) tokens have q >= tau, so
the top-k alternatives with k = floor(1/tau) hold every child that can stay above tau.

The grid grammar (``constrain_grid``). vLLM's structured-output regex compiles against the completion from its
first token; a branch prefix is part of the prompt, so the regex would restart at the branch point and accept
a different language. DFS therefore does not use the regex: the grammar lives on this side as a
``format.GridState`` per branch (copied at every branch point), and vLLM is asked for
``logprob_token_ids`` = the grid tokens (digits, row separator, eos) at every step, raw (normalized over the
whole vocabulary; vLLM's default ``raw_logprobs`` mode computes them before ``allowed_token_ids``) together with
``allowed_token_ids`` = the grid tokens (so the greedy path stays on grid symbols). ``step_logprobs`` then
renormalizes over the tokens the grammar allows at that step: log q(t) = l(t) - logsumexp_{u allowed} l(u),
exact whatever the normalization of l, and the same quantity the sampling path reports with the grammar on
and the transformers reference computes with a masked softmax. A greedy token that the grammar forbids (the
engine knows only the grid tokens, not the position in the grid) ends that walk: every allowed alternative at
that step was already opened. Without the grammar the distribution is the model's own over the whole
vocabulary: top-k raw log-probabilities, k = floor(1/tau) (vLLM's ``max_logprobs`` default of 20 bounds tau
>= 0.05 there; the config refuses smaller tau without the grammar).

Cost. vLLM cannot stop a request when its path probability falls below tau, so a branch's continuation is
decoded in chunks (``dfs_chunk_tokens``, doubling each round the path stays above tau): a branch that dies
early wastes at most its chunk, a confident path needs log2(length / chunk) extra rounds (prefix caching makes
each resubmission pay only for the new tokens). A newly opened branch's chunk is sized by ``sized_chunk``: its
slack above tau over the mean cost (-log q) of the greedy tokens of the walk that opened it, so an unsure
model's branches (which die within a token or two) decode 1-2 tokens instead of the whole chunk. Open branches
at once <= floor(1/tau) per view (their subtrees are disjoint, each >= tau).

Failures. The enumeration goes through ``decode_isolate.run_isolated`` like a sampling pass, one whole DFS over
the retried requests standing for an engine call: adapters that fail their check are replaced by the base model
up front, and a round that raises is isolated by bisection to the adapter or request at fault (rerouted to the
base model, or dropped), within ``retry_calls`` and the deadline; ``Decoder.last_failures`` says what happened.
A cap group split by a bisection is capped per part.

``depth_first`` is the reference algorithm (the winners' way: one sequence, a KV cache, greedy child first);
``decode_dfs_hf`` runs it with transformers + PEFT and is the fallback backend. The tests compare both with a
brute-force enumeration on toy distributions and with each other on the tiny model with trained adapters.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from arcttt_kaggle.arc.candidates import Candidate
from .format import GridState

if TYPE_CHECKING:  # "Decoder"/"DecodeRequest" below are decode's; not imported, so decode -> decode_dfs stays one way
    from .engine_base import Job as _Job


@dataclass(frozen=True)
class DfsLimits:
    """The threshold and the per-task caps of one enumeration (from ``DecodeConfig``; 0 = no cap)."""

    threshold: float
    max_candidates: int = 0
    max_tokens: int = 0
    max_seconds: float = 0.0

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"DFS threshold must be in (0, 1), got {self.threshold}")
        if self.max_candidates < 0 or self.max_tokens < 0 or self.max_seconds < 0:
            raise ValueError(f"DFS caps must be >= 0 (0 = no cap), got {self}")

    @property
    def log_tau(self) -> float:
        return math.log(self.threshold)

    @property
    def top_k(self) -> int:
        """Alternatives per step that hold every child able to stay >= tau (see the module docstring)."""
        return int(math.floor(1.0 / self.threshold + 1e-9))


@dataclass(frozen=True)
class Found:
    """One enumerated completion of root ``root``: its tokens (eos included when it ended there)."""

    root: int
    tokens: tuple[int, ...]
    logprob: float
    finish: str  # "stop" (eos) | "length" (the output bound)


@dataclass
class Branch:
    """An open prefix: decoding continues from ``tokens`` (appended to the root's prompt)."""

    root: int
    tokens: tuple[int, ...]
    logprob: float
    state: GridState | None  # the grammar state after ``tokens``; None without the grammar
    chunk: int = 0  # tokens to decode in its next round (0 = to eos or the bound)


@dataclass(frozen=True)
class Root:
    """One view to enumerate: its cap group (the task), its output bound and its grammar start (None = raw)."""

    group: str
    max_tokens: int
    grammar: GridState | None = None


@dataclass
class DfsResult:
    """What an enumeration produced: completions per root, why each group was cut (absent = complete), work."""

    found: list[list[Found]]
    truncated: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    branches: int = 0  # prefixes decoded (rounds) or expanded nodes (depth-first)
    tokens: int = 0  # tokens the engine generated (rounds) or ran one at a time (depth-first)


# -- the branching logic (pure) -----------------------------------------------------------------------------------
def step_logprobs(logprobs: Mapping[int, float], allowed: Sequence[int] | None) -> dict[int, float]:
    """Exact next-token log-probabilities from an engine's report: as given without the grammar (``allowed`` None),
    else renormalized over the ``allowed`` tokens (each must be in ``logprobs``; -inf ones are dropped)."""
    if allowed is None:
        return {int(t): float(v) for t, v in logprobs.items() if v > -math.inf}
    missing = [t for t in allowed if t not in logprobs]
    if missing:
        raise ValueError(f"the engine reported no log-probability for allowed token ids {missing}")
    vals = {int(t): float(logprobs[t]) for t in allowed if logprobs[t] > -math.inf}
    if not vals:
        return {}
    top = max(vals.values())
    norm = top + math.log(sum(math.exp(v - top) for v in vals.values()))
    return {t: v - norm for t, v in vals.items()}


def _advanced(state: GridState | None, token: int) -> GridState | None:
    if state is None:
        return None
    nxt = copy.copy(state)
    nxt.push(token)
    return nxt


def walk(branch: Branch, generated: Sequence[int], reported: Sequence[Mapping[int, float]], max_tokens: int,
         log_tau: float, eos: int, chunk: int = 0) -> tuple[list[Found], list[Branch]]:
    """Follow one greedy continuation of ``branch``: the completions it ends and the branches it opens.

    ``reported[j]`` is the engine's log-probabilities at step j (grid tokens, or the top-k); every token the
    grammar allows there (all reported ones without it) other than ``generated[j]`` whose path stays >= tau
    ends a completion (eos, or ``max_tokens`` reached) or opens a branch. The walk stops where the path drops
    below tau, where the grammar forbids the generated token, or at the end of ``generated``; a path that ran
    out of generated tokens before eos or the bound is opened again (the engine stopped it at its chunk) with
    twice the chunk (a path still above tau is likely to go on). Opened alternatives get ``sized_chunk``: at
    most ``chunk``, fewer where this walk's own tokens say the alternative's slack above tau will be spent
    sooner (any chunk is exact: a branch cut short is opened again; the size only trades rounds for waste).
    """
    if not generated:
        raise RuntimeError(f"the engine generated no token for a branch of root {branch.root} "
                           f"({len(branch.tokens)} of {max_tokens} tokens): it would be decoded again forever")
    found: list[Found] = []
    opened: list[Branch] = []
    costs: list[float] = []  # -log q of each greedy token this walk decoded
    toks, lp, state = list(branch.tokens), branch.logprob, branch.state
    for g, rep in zip(generated, reported):
        allowed = None if state is None else state.allowed()
        probs = step_logprobs(rep, allowed)
        for t, l in sorted(probs.items(), key=lambda kv: (-kv[1], kv[0])):
            if t == g or lp + l < log_tau:
                continue
            path = (*toks, t)
            if t == eos or len(path) >= max_tokens:
                found.append(Found(branch.root, path, lp + l, "stop" if t == eos else "length"))
            else:
                opened.append(Branch(branch.root, path, lp + l, _advanced(state, t), chunk))
        if g in probs:
            costs.append(-probs[g])
        if g not in probs or lp + probs[g] < log_tau:
            return found, _sized(opened, costs, log_tau, chunk)  # forbidden, or below tau: this path ends here
        lp += probs[g]
        toks.append(g)
        if g == eos or len(toks) >= max_tokens:
            found.append(Found(branch.root, tuple(toks), lp, "stop" if g == eos else "length"))
            return found, _sized(opened, costs, log_tau, chunk)
        state = _advanced(state, g)
    opened = _sized(opened, costs, log_tau, chunk)
    opened.append(Branch(branch.root, tuple(toks), lp, state, 2 * branch.chunk))
    return found, opened


def sized_chunk(slack: float, cost: float, chunk: int) -> int:
    """Tokens to decode for a branch ``slack`` nats above log tau when a token costs ``cost`` nats on average:
    the tokens it can afford plus the one that takes it below tau (whose alternatives may still be above), at
    most ``chunk`` (0: no chunking). A confident model (cost ~0) gets the whole chunk; a near-uniform one, whose
    branches die within a token or two, gets 1-2 instead of wasting the rest of the chunk."""
    if chunk <= 0 or cost <= 1e-6:
        return chunk
    return max(1, min(chunk, int(slack / cost) + 1))


def _sized(opened: list[Branch], costs: Sequence[float], log_tau: float, chunk: int) -> list[Branch]:
    if not costs:
        return opened
    cost = sum(costs) / len(costs)
    return [replace(b, chunk=sized_chunk(b.logprob - log_tau, cost, chunk)) for b in opened]


Decode = Callable[[list[Branch], float | None], list[tuple[list[int], list[Mapping[int, float]]] | None]]


def enumerate_rounds(roots: Sequence[Root], decode: Decode, limits: DfsLimits, eos: int,
                     deadline: float | None = None, clock: Callable[[], float] = time.time,
                     chunk: int = 0) -> DfsResult:
    """The round-based enumeration: ``decode(branches, round_deadline)`` continues every branch greedily (one
    engine call) and returns, per branch, (generated ids, reported log-probabilities per step), or None where the
    round deadline cut it. Caps apply per ``Root.group``; tokens and candidates are checked between rounds,
    seconds (from this call's start: all groups run together) also inside a round via the round deadline.
    ``chunk`` > 0: a branch's first round decodes at most that many tokens, doubling each round it survives, so
    a branch that falls below tau early wastes at most its chunk (``decode`` must honour ``Branch.chunk``)."""
    t0 = clock()
    cutoff = deadline
    if limits.max_seconds > 0:
        cutoff = t0 + limits.max_seconds if cutoff is None else min(cutoff, t0 + limits.max_seconds)
    res = DfsResult([[] for _ in roots])
    counts: dict[str, int] = {}
    tokens: dict[str, int] = {}
    open_: list[Branch] = [Branch(i, (), 0.0, r.grammar, chunk) for i, r in enumerate(roots)]
    while open_:
        now = clock()
        if cutoff is not None and now >= cutoff:
            why = "deadline" if deadline is not None and now >= deadline else f"max_seconds {limits.max_seconds:g}"
            _cut(res, roots, open_, why)
            break
        res.rounds += 1
        res.branches += len(open_)
        outs = decode(open_, cutoff)
        nxt: list[Branch] = []
        for b, out in zip(open_, outs):
            g = roots[b.root].group
            if out is None:
                res.truncated.setdefault(g, "deadline" if deadline is not None and clock() >= deadline
                                         else f"max_seconds {limits.max_seconds:g}")
                continue
            gen, rep = out
            tokens[g] = tokens.get(g, 0) + len(gen)
            res.tokens += len(gen)
            found, opened = walk(b, gen, rep, roots[b.root].max_tokens, limits.log_tau, eos, chunk)
            for f in found:
                res.found[f.root].append(f)
                counts[g] = counts.get(g, 0) + 1
            nxt.extend(opened)
        open_ = []
        for b in nxt:
            g = roots[b.root].group
            if g in res.truncated:
                continue
            if limits.max_candidates and counts.get(g, 0) >= limits.max_candidates:
                res.truncated[g] = f"max_candidates {limits.max_candidates} reached with branches open"
            elif limits.max_tokens and tokens.get(g, 0) >= limits.max_tokens:
                res.truncated[g] = f"max_tokens {limits.max_tokens} reached with branches open"
            else:
                open_.append(b)
    if limits.max_candidates:
        keep_best(res, roots, limits.max_candidates)
    return res


def _cut(res: DfsResult, roots: Sequence[Root], open_: Sequence[Branch], why: str) -> None:
    for b in open_:
        res.truncated.setdefault(roots[b.root].group, why)


def keep_best(res: DfsResult, roots: Sequence[Root], cap: int) -> None:
    """At most ``cap`` completions per group, the most probable; dropping any marks the group truncated."""
    by_group: dict[str, list[Found]] = {}
    for per_root in res.found:
        for f in per_root:
            by_group.setdefault(roots[f.root].group, []).append(f)
    for g, fs in by_group.items():
        if len(fs) <= cap:
            continue
        keep = {id(f) for f in sorted(fs, key=lambda f: (-f.logprob, f.root, f.tokens))[:cap]}
        res.found = [[f for f in per_root if roots[f.root].group != g or id(f) in keep] for per_root in res.found]
        res.truncated[g] = f"max_candidates {cap}: {len(fs) - cap} less probable completions dropped"


Expand = Callable[[tuple[int, ...], GridState | None], Mapping[int, float]]


def depth_first(root: int, expand: Expand, max_tokens: int, grammar: GridState | None, log_tau: float, eos: int,
                stop: Callable[[int], str] = lambda found: "") -> tuple[list[Found], str, int]:
    """The reference enumeration of one view: (completions, why it was cut or "", nodes expanded).

    ``expand(path, state)`` returns the EXACT next-token log-probabilities after ``path`` (renormalized over the
    grammar's allowed tokens when ``state`` is given; at least every token with q >= tau). Children are visited
    most probable first (the greedy path first, like the winners' DFS); ``stop(found so far)`` is asked before
    each expansion and a non-empty reason ends the search, reported as truncation when anything was left.
    """
    def children(path: tuple[int, ...], lp: float, state: GridState | None) -> list[tuple[int, float]]:
        probs = expand(path, state)
        return [(t, lp + l) for t, l in sorted(probs.items(), key=lambda kv: (-kv[1], kv[0])) if lp + l >= log_tau]

    found: list[Found] = []
    stack = [((), grammar, children((), 0.0, grammar))]
    nodes = 1
    while stack:
        path, state, todo = stack[-1]
        if not todo:
            stack.pop()
            continue
        t, lp = todo.pop(0)
        nxt = (*path, t)
        if t == eos or len(nxt) >= max_tokens:
            found.append(Found(root, nxt, lp, "stop" if t == eos else "length"))
            continue
        why = stop(len(found))
        if why:
            return found, why, nodes
        st = _advanced(state, t)
        stack.append((nxt, st, children(nxt, lp, st)))
        nodes += 1
    return found, "", nodes


# -- the decoder's entry point --------------------------------------------------------------------------------------
def generate_dfs(decoder: "Decoder", requests: Sequence["DecodeRequest"], progress: bool = False,
                 deadline: float | None = None, hf_search: Callable | None = None) -> list[list[Candidate]]:
    """``Decoder.generate`` for ``method="dfs"``: per request, every completion with probability >= tau (most
    probable first), as candidates in the original frame with ``extra["dfs"]`` and ``extra["truncated"]``.
    ``hf_search``: the transformers search (``decode_dfs_hf.hf_depth_first``) for a non-vLLM backend, passed in
    by ``decode`` so this module never imports the one that imports it."""
    from .decode_isolate import bad_adapters, run_isolated
    from .engine_base import Job as _Job, fit_prompt

    cfg, fmt, stats = decoder.config, decoder.fmt, decoder.stats
    t0 = time.time()
    limits = DfsLimits(cfg.dfs_threshold, cfg.dfs_max_candidates, cfg.dfs_max_tokens, cfg.dfs_max_seconds)
    adapters_of: dict[str, set] = {}
    for r in requests:
        if not 0 <= r.test_index < len(r.task.test):
            raise IndexError(f"task {r.task.id}: test_index {r.test_index} of {len(r.task.test)} test inputs")
        adapters_of.setdefault(r.task.id, set()).add(None if r.adapter_dir is None else str(r.adapter_dir))
    jobs: list[_Job] = []
    roots: list[Root] = []
    for i, r in enumerate(requests):
        vt = r.view.apply_task(r.task)
        fit = fit_prompt(fmt, vt.train, vt.test[r.test_index].input, cfg.max_model_len)
        if fit is None:
            stats.skipped_prompts += 1
            continue
        prompt, bound, dropped, hw = fit
        stats.trimmed_prompts += dropped > 0
        stats.prompt_tokens += len(prompt)
        stats.bound_tokens += bound  # one greedy decode's worth: tokens_generated / bound_tokens = DFS's multiple
        adapter = None if r.adapter_dir is None else Path(r.adapter_dir)
        jobs.append(_Job(i, prompt, bound, adapter, dropped, hw))
        group = r.task.id if len(adapters_of[r.task.id]) == 1 else \
            f"{r.task.id}/{'base' if adapter is None else adapter.name}"
        roots.append(Root(group, bound, fmt.grid_start(*hw) if cfg.constrain_grid else None))

    out: list[list[Candidate]] = [[] for _ in requests]
    decoder.last_token_ids = [[] for _ in requests]
    if not jobs:
        stats.seconds += time.time() - t0
        return out
    if deadline is not None and time.time() >= deadline:
        stats.aborted_prompts += len(jobs)
        for root in roots:
            stats.dfs_truncated.setdefault(root.group, "deadline")
        stats.seconds += time.time() - t0
        return out
    by_index = {job.index: root for job, root in zip(jobs, roots)}
    eos = fmt.eos_id

    def search(batch: list["_Job"]) -> list[tuple[list[Found], str]]:
        """One DFS over ``batch`` (all of it, or the part ``run_isolated`` retries): per job, what it found and
        why a cap cut its group ("" = complete)."""
        sub = [by_index[j.index] for j in batch]
        if hf_search is None:  # _VllmRounds counts its generate calls in stats.engine_calls, failed ones too
            res = enumerate_rounds(sub, _VllmRounds(decoder._engine, batch, limits, cfg.constrain_grid, progress,
                                                    stats), limits, eos, deadline, chunk=cfg.dfs_chunk_tokens)
        else:
            res = hf_search(decoder._engine, batch, sub, limits, deadline)
            stats.engine_calls += res.branches
        stats.dfs_rounds += res.rounds
        stats.dfs_branches += res.branches
        stats.tokens_generated += res.tokens
        return [(found, res.truncated.get(root.group, "")) for root, found in zip(sub, res.found)]

    # One bad adapter or request must not sink every task's enumeration: the same isolation as sampling
    # (decode_isolate), with a whole DFS over the retried part as the "engine call".
    iso = run_isolated(search, jobs, deadline=deadline, retry_calls=cfg.retry_calls,
                       fatal=decoder._engine.fatal, bad=bad_adapters(jobs))
    decoder._record_isolation(iso, jobs, requests)
    stats.engine_calls += iso.failed_calls if hf_search is not None else 0  # an hf search that raised: one call
    for root, job in zip(roots, jobs):
        got = iso.results.get(job.index)
        if got is None:
            stats.aborted_prompts += job.index not in iso.dropped
            continue
        found, why = got
        r = requests[job.index]
        stats.prompts += 1
        stats.dfs_candidates[root.group] = stats.dfs_candidates.get(root.group, 0) + len(found)
        if why:
            stats.dfs_truncated.setdefault(root.group, why)
        rerouted = iso.rerouted.get(job.index)
        for j, f in enumerate(sorted(found, key=lambda f: (-f.logprob, f.tokens))):
            out[job.index].append(decoder._make_candidate(
                r, job, j, f.tokens, f.finish, f.logprob, rerouted,
                {"dfs": True, "truncated": bool(why), "dfs_threshold": cfg.dfs_threshold}))
            decoder.last_token_ids[job.index].append(list(f.tokens))
    stats.seconds += time.time() - t0
    return out


class _VllmRounds:
    """One round = one ``LLM.generate`` over every open branch (all tasks, all adapters): greedy continuations
    with the log-probabilities ``walk`` needs at every step (see the module docstring)."""

    def __init__(self, engine, jobs: Sequence["_Job"], limits: DfsLimits, grammar: bool, progress: bool, stats=None):
        self.engine, self.jobs, self.grammar, self.progress, self.stats = engine, jobs, grammar, progress, stats
        self.grid = engine.fmt.grid_tokens()
        # vLLM's sampler takes top-k over the model's vocabulary: a reduced one (NVARC's 16 tokens) can hold fewer
        # than floor(1/tau) entries, and asking for more fails every round ("selected index k out of range").
        self.k = min(limits.top_k, engine.llm.llm_engine.model_config.get_vocab_size())
        for j in jobs:  # register adapters first: the first one also creates the null LoRA (CPU)
            if j.adapter is not None:
                engine._lora(j.adapter)

    def __call__(self, branches: list[Branch], cutoff: float | None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from .decode_vllm import _bar_factory

        eng = self.engine
        extra = dict(logprob_token_ids=self.grid, allowed_token_ids=self.grid) if self.grammar else \
            dict(logprobs=self.k)
        params, prompts, loras = [], [], []
        for b in branches:
            job = self.jobs[b.root]
            left = job.max_tokens - len(b.tokens)
            params.append(SamplingParams(n=1, temperature=0.0, max_tokens=min(left, b.chunk) if b.chunk else left,
                                         stop_token_ids=[eng.eos_id], detokenize=False, **extra))
            prompts.append(TokensPrompt(prompt_token_ids=list(job.prompt) + list(b.tokens)))
            loras.append(eng._lora(job.adapter))
        start = eng.llm.request_counter.counter  # request ids are str(start + k), in submission order
        ids = [str(start + k) for k in range(len(branches))]
        bar = _bar_factory(lambda: eng.llm.llm_engine.abort_request(ids), cutoff, self.progress)
        if self.stats is not None:
            self.stats.engine_calls += 1
        outs = eng.llm.generate(prompts, params, lora_request=loras, use_tqdm=bar)
        results: list = [None] * len(branches)
        for o in outs:
            k = int(o.request_id) - start
            if self.stats is not None and 0 <= k < len(branches):  # the prefill the prefix cache did not serve
                self.stats.dfs_prefill_computed += len(prompts[k]["prompt_token_ids"]) - (o.num_cached_tokens or 0)
            c = o.outputs[0] if o.outputs else None
            if 0 <= k < len(branches) and c is not None and c.finish_reason in ("stop", "length"):
                rep = [{int(t): float(lp.logprob) for t, lp in d.items()} for d in (c.logprobs or [])]
                if len(rep) != len(c.token_ids):
                    raise RuntimeError(f"vLLM reported log-probabilities for {len(rep)} of {len(c.token_ids)} "
                                       f"generated tokens")
                results[k] = (list(c.token_ids), rep)
        return results
