"""The transformers + PEFT decoding backend (``DecodeConfig.backend="hf"``): where vLLM is unavailable, and the
reference the tests compare vLLM against (same requests, same candidate layout, greedy token ids equal).

Jobs are grouped by adapter (one loaded at a time, ``PeftSwitch``) and run as left-padded ``generate`` batches.
Two logits processors keep it equal to vLLM: ``_GridMask`` (the grid grammar of ``constrain_grid``, vLLM's
regex on token ids) and ``_LogprobRecorder`` (per-token log-probabilities without storing every step's logits).
``quantization="bitsandbytes"`` loads the base in NF4 4-bit (``engine_base.hf_load_kwargs``), on CUDA or CPU.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Sequence

from .engine_base import EngineConfig, Job, PeftSwitch, Sample, cuda_context_error, load_causal_lm, resolve_dtype
from .format import ArcFormat


class HfBackend:
    """transformers + PEFT ``generate``: jobs grouped by adapter (one loaded at a time), padded batches.
    ``calls`` counts the ``generate`` calls made (one per batch), including ones that raised."""

    def __init__(self, model_path: Path, cfg: EngineConfig, fmt: ArcFormat, pad_id: int):
        import peft
        import torch
        import transformers

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(cfg.dtype, self.device.type == "cuda")
        self.model = load_causal_lm(model_path, self.dtype, cfg.quantization, self.device)
        self.adapters = PeftSwitch(self.model)
        self.fmt, self.eos_id, self.pad_id = fmt, fmt.eos_id, pad_id
        self.calls = 0
        quant = ", bitsandbytes 4-bit" if cfg.quantization == "bitsandbytes" else ""
        self.name = (f"transformers {transformers.__version__} + peft {peft.__version__} generate "
                     f"({self.dtype}{quant}, {self.device.type})")

    def fatal(self, exc: BaseException) -> bool:
        """True once a failed first adapter load left the base model modified (``PeftSwitch.broken``), or a CUDA
        error broke the context."""
        return bool(self.adapters.broken) or cuda_context_error(exc)

    def run(self, jobs: Sequence[Job], cfg: EngineConfig, deadline: float | None, progress: bool
            ) -> list[list[Sample] | None]:
        groups: dict[str, list[int]] = {}
        for k, j in enumerate(jobs):
            groups.setdefault("" if j.adapter is None else str(j.adapter), []).append(k)
        results: list[list[Sample] | None] = [None] * len(jobs)
        for members in groups.values():
            members.sort(key=lambda k: len(jobs[k].prompt))  # similar lengths per batch: less padding
            with self.adapters.use(jobs[members[0]].adapter):
                for b in range(0, len(members), cfg.hf_batch_size):
                    if deadline is not None and time.time() >= deadline:
                        return results
                    batch = members[b:b + cfg.hf_batch_size]
                    self.calls += 1
                    for k, samples in zip(batch, self._generate([jobs[k] for k in batch], cfg)):
                        results[k] = samples
        return results

    def _generate(self, batch: Sequence[Job], cfg: EngineConfig) -> list[list[Sample]]:
        torch = self.torch
        from transformers import LogitsProcessorList

        width = max(len(j.prompt) for j in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, j in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[r, width - len(j.prompt):] = torch.tensor(j.prompt)
            mask[r, width - len(j.prompt):] = 1
        n = cfg.samples_per_view
        recorder = _LogprobRecorder(cfg.temperature)
        # The grammar mask goes first: vLLM masks before it computes log-probabilities, so both backends report
        # log-probabilities renormalized over the tokens the grammar allows.
        processors = [_GridMask(self.fmt, [j.bound for j in batch for _ in range(n)])] if cfg.constrain_grid else []
        processors.append(recorder)
        kwargs: dict = dict(max_new_tokens=max(j.max_tokens for j in batch), eos_token_id=self.eos_id,
                            pad_token_id=self.pad_id, num_return_sequences=n,
                            logits_processor=LogitsProcessorList(processors))
        if cfg.temperature > 0:
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0)
            torch.manual_seed(cfg.seed + batch[0].index)
        else:
            kwargs.update(do_sample=False)
        with torch.inference_mode():
            seqs = self.adapters.module.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                                 **kwargs)
        gen = seqs[:, width:]
        lps = recorder.finish(gen).cpu()
        gen = gen.cpu().tolist()
        out: list[list[Sample]] = [[] for _ in batch]
        for row, toks in enumerate(gen):
            job = batch[row // n]
            toks = toks[:job.max_tokens]
            end = toks.index(self.eos_id) + 1 if self.eos_id in toks else len(toks)
            out[row // n].append(Sample(toks[:end], float(lps[row, :end].double().sum()),
                                         "stop" if end and toks[end - 1] == self.eos_id else "length"))
        return out

    def close(self) -> None:
        self.model = self.adapters = None
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


class _LogprobRecorder:
    """A logits processor that keeps the log-probability of each chosen token, one step at a time (output_logits
    would hold steps x rows x vocab floats: 900 x 8 x 152k fp32 = 4 GB for Qwen). It sees the scores after
    the temperature warper (the only one active: top_k=0, top_p=1), so it undoes the temperature to report
    the model's raw log-probabilities, like vLLM."""

    def __init__(self, temperature: float):
        self.scale = temperature if temperature > 0 else 1.0
        self.prev = None
        self.picked: list = []

    def __call__(self, input_ids, scores):
        import torch

        if self.prev is not None:
            self.picked.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float() * self.scale, dim=-1)
        return scores

    def finish(self, generated):
        import torch

        steps = self.picked + [self.prev.gather(1, generated[:, -1:].to(self.prev.device)).squeeze(1)]
        return torch.stack(steps[:generated.shape[1]], dim=1)


class _GridMask:
    """A logits processor that keeps each sequence inside the grid grammar (``format.GridState``): the hf
    backend's equivalent of vLLM's regex constraint. One state per generated row, advanced by the last token."""

    def __init__(self, fmt: ArcFormat, bounds: Sequence[tuple[int, int]]):
        self.states = [fmt.grid_start(h, w) for h, w in bounds]
        self.started = False

    def __call__(self, input_ids, scores):
        if self.started:
            for state, last in zip(self.states, input_ids[:, -1].tolist()):
                if not state.done:
                    state.push(last)
        self.started = True
        mask = scores.new_full(scores.shape, float("-inf"))
        for row, state in enumerate(self.states):
            mask[row, state.allowed()] = 0.0
        return scores + mask
