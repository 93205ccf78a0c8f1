"""The transformers + PEFT DFS (``method="dfs"`` with ``backend="hf"``): the winners' way and the reference the
vLLM rounds are tested against.

One view at a time, one sequence, one KV cache: the prompt is prefilled once, and ``decode_dfs.depth_first``
walks the tree most probable child first; expanding a node crops the cache back to the node's parent and runs
the node's last token (one token per forward pass), so each node costs one token whatever its depth. The
next-token distribution is computed here independently of the vLLM path: the logits in float32, masked to the
tokens the grid grammar allows (``GridState.allowed``) when the grammar is on, then ``log_softmax``; without
the grammar, the top floor(1/tau) tokens of the full softmax.

Views are grouped by adapter (one PEFT adapter loaded at a time, ``PeftSwitch``). Per-task caps: candidates
and tokens count over the task's views; seconds run from the task's first view (tasks run one after another
here, unlike the vLLM rounds where all tasks share every round).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

from .decode_dfs import DfsLimits, DfsResult, Root, depth_first, keep_best

if TYPE_CHECKING:
    from .engine_base import Job as _Job
    from .decode_hf import HfBackend
    from .format import GridState


class _KvStepper:
    """``expand(path, state)`` for one prompt: the exact next-token log-probabilities after ``path``, with the KV
    cache cropped to the path's parent before its last token runs."""

    def __init__(self, module, torch, device, prompt: Sequence[int], k: int):
        self.module, self.torch, self.device, self.k = module, torch, device, k
        self.prompt_len = len(prompt)
        # Only the last position's logits are needed: the full prompt's would be len(prompt) * vocab floats.
        out = module(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        self.root_logits = out.logits[0, -1].float()
        self.tokens = len(prompt)

    def __call__(self, path: tuple[int, ...], state: "GridState | None") -> dict[int, float]:
        torch = self.torch
        if path:
            keep = self.prompt_len + len(path) - 1
            extra = self.cache.get_seq_length() - keep
            if extra > 0:
                self.cache.crop(-extra)  # negative: remove that many positions (the 5.x spelling)
            out = self.module(input_ids=torch.tensor([[path[-1]]], device=self.device), past_key_values=self.cache,
                              use_cache=True)
            self.cache = out.past_key_values
            logits = out.logits[0, -1].float()
            self.tokens += 1
        else:
            logits = self.root_logits
        if state is not None:
            allowed = torch.tensor(state.allowed(), device=logits.device)
            masked = torch.full_like(logits, float("-inf"))
            masked[allowed] = logits[allowed]
            lp = torch.log_softmax(masked, dim=-1)
            vals = lp[allowed].cpu().tolist()
            return {int(t): float(v) for t, v in zip(allowed.cpu().tolist(), vals) if v > float("-inf")}
        lp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(lp, min(self.k, lp.shape[0]))
        return {int(t): float(v) for t, v in zip(top.indices.cpu().tolist(), top.values.cpu().tolist())}


def hf_depth_first(backend: "HfBackend", jobs: Sequence["_Job"], roots: Sequence[Root], limits: DfsLimits,
                   deadline: float | None) -> DfsResult:
    """Every job's completions with probability >= tau, one view at a time (see the module docstring)."""
    torch = backend.torch
    res = DfsResult([[] for _ in jobs])
    counts: dict[str, int] = {}
    tokens: dict[str, int] = {}
    started: dict[str, float] = {}
    order = sorted(range(len(jobs)), key=lambda k: ("" if jobs[k].adapter is None else str(jobs[k].adapter), k))
    for k in order:
        job, root = jobs[k], roots[k]
        g = root.group
        if g in res.truncated:
            continue
        started.setdefault(g, time.time())
        why = _group_stop(limits, deadline, started[g], counts.get(g, 0), tokens.get(g, 0))
        if why:
            res.truncated[g] = why
            continue
        with torch.inference_mode(), backend.adapters.use(job.adapter):
            stepper = _KvStepper(backend.adapters.module, torch, backend.device, job.prompt, limits.top_k)

            def stop(found_here: int, _g=g, _s=stepper, _n=len(job.prompt)) -> str:
                return _group_stop(limits, deadline, started[_g], counts.get(_g, 0) + found_here,
                                   tokens.get(_g, 0) + _s.tokens - _n)

            found, why, nodes = depth_first(k, stepper, job.max_tokens, root.grammar, limits.log_tau,
                                            backend.eos_id, stop)
        res.found[k] = list(found)
        res.branches += nodes
        generated = stepper.tokens - len(job.prompt)
        res.tokens += generated
        tokens[g] = tokens.get(g, 0) + generated
        counts[g] = counts.get(g, 0) + len(found)
        if why:
            res.truncated[g] = why
    if limits.max_candidates:
        keep_best(res, roots, limits.max_candidates)
    return res


def _group_stop(limits: DfsLimits, deadline: float | None, started: float, found: int, tokens: int) -> str:
    """Why a task's enumeration must stop now ("" = go on): the deadline or one of its caps."""
    now = time.time()
    if deadline is not None and now >= deadline:
        return "deadline"
    if limits.max_seconds and now - started >= limits.max_seconds:
        return f"max_seconds {limits.max_seconds:g}"
    if limits.max_candidates and found >= limits.max_candidates:
        return f"max_candidates {limits.max_candidates} reached with branches open"
    if limits.max_tokens and tokens >= limits.max_tokens:
        return f"max_tokens {limits.max_tokens} reached with branches open"
    return ""
