"""What the model engines share: the vLLM and transformers decode backends (``decode_vllm``, ``decode_hf``) and
the candidate scorer (``score_candidates``).

- dtype and base-weight quantization: ``resolve_dtype``, ``load_causal_lm`` (bitsandbytes NF4 for transformers);
- the records a decode backend runs and returns: ``Job`` (one prompt) and ``Sample`` (one output);
- adapter folders: ``adapter_key`` (identity), ``check_adapter`` (integrity, without loading any weight);
- ``PeftSwitch``: one base model, one PEFT adapter loaded at a time.

This module imports no other engine module, so imports flow one way: ``decode`` -> ``decode_vllm`` /
``decode_hf`` -> ``engine_base`` and ``score_candidates`` -> ``engine_base``.
"""

from __future__ import annotations

import json
import struct
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

DTYPES = ("auto", "float16", "bfloat16", "float32")
QUANTIZATIONS = ("none", "bitsandbytes")
# Bytes of base weights per parameter: NF4 packs two weights per byte plus double-quantized block scales.
WEIGHT_BYTES = {"none": 2.0, "bitsandbytes": 0.56}


def resolve_dtype(dtype: str, cuda: bool | None = None) -> str:
    """The concrete dtype for ``"auto"``: bf16 on Ampere+ GPUs (L4, A100), fp16 on older ones (T4 has no bf16;
    ``torch.cuda.is_bf16_supported`` says True there because it emulates), fp32 on CPU (exact, and CPUs
    without AMX gain nothing from 16-bit)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        return "float32"
    return "bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float16"


def hf_load_kwargs(dtype: str, quantization: str, device: str) -> dict:
    """``AutoModelForCausalLM.from_pretrained`` keyword arguments for a concrete ``dtype`` (not "auto") and
    ``quantization``: "bitsandbytes" loads the base in NF4 4-bit (double-quantized scales, ~0.56 byte/param
    instead of 2; lm_head stays in ``dtype``, as in training and in vLLM, where the head takes no LoRA) with
    ``dtype`` as the compute dtype, placed by ``device_map`` (a 4-bit model cannot be moved with ``.to``)."""
    import torch

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    torch_dtype = getattr(torch, resolve_dtype(dtype, device == "cuda"))
    if quantization == "none":
        return {"dtype": torch_dtype}
    from transformers import BitsAndBytesConfig

    return {"dtype": torch_dtype, "device_map": {"": 0} if device == "cuda" else "cpu",
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype, llm_int8_skip_modules=["lm_head"])}


def load_causal_lm(model_path: Path, dtype: str, quantization: str, device):
    """The base model on ``device`` (a torch.device), in eval mode, loaded per ``hf_load_kwargs``."""
    from transformers import AutoModelForCausalLM

    kwargs = hf_load_kwargs(dtype, quantization, device.type)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs)
    return (model if "device_map" in kwargs else model.to(device)).eval()


class EngineConfig(Protocol):
    """The decode settings a backend reads (``decode.DecodeConfig`` has them all; see its help)."""

    dtype: str
    quantization: str
    temperature: float
    samples_per_view: int
    seed: int
    constrain_grid: bool
    hf_batch_size: int
    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int | None
    max_model_len: int
    enforce_eager: bool
    gpu_memory_utilization: float
    cpu_kvcache_gib: float
    kv_block_size: int
    method: str


@dataclass(frozen=True)
class Job:
    """One engine request: prompt ids, its output bound, and the adapter it runs with (None = base)."""

    index: int  # the request's position in ``Decoder.generate``'s list
    prompt: list[int]
    max_tokens: int
    adapter: Path | None
    dropped_demos: int
    bound: tuple[int, int]  # (height, width) of the largest plausible output: the grid grammar's bound


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    logprob: float
    finish: str  # "stop" (eos) | "length"


VOCAB_MODULES = ("embed_tokens", "lm_head")  # LoRA there: transformers serves it, vLLM cannot

# Messages of errors after which a CUDA context is unusable (every later call fails the same way): no retry or
# bisection can help, the process must end. An out-of-memory error is not one of them (the allocator recovers).
CUDA_CONTEXT_ERRORS = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error", "device-side assert",
                       "illegal memory access", "unspecified launch failure", "NCCL error")


class EngineBroken(RuntimeError):
    """The engine's device context is broken (a CUDA error): the process that holds it must end and be
    replaced; nothing it runs from now on can be trusted."""


def cuda_context_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a CUDA error that leaves the context unusable:
    ``torch.AcceleratorError`` or a message naming one (``CUDA_CONTEXT_ERRORS``); out-of-memory is not."""
    seen = 0
    while exc is not None and seen < 8:
        if type(exc).__name__ in ("AcceleratorError", "CudaError"):
            return True
        msg = str(exc)
        if "out of memory" not in msg and any(m in msg for m in CUDA_CONTEXT_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class AdapterError(ValueError):
    """An adapter folder that cannot be used; ``adapter`` names it, ``reason`` says why."""

    def __init__(self, adapter: Path, reason: str):
        super().__init__(f"adapter {adapter}: {reason}")
        self.adapter, self.reason = Path(adapter), reason


def adapter_key(adapter_dir: Path) -> tuple[str, int]:
    """Identity of an adapter on disk: its resolved folder and weights' mtime, so an adapter re-trained into the
    same folder gets a new vLLM id instead of the stale cached weights."""
    adapter_dir = Path(adapter_dir).resolve()
    weights = [adapter_dir / n for n in ("adapter_model.safetensors", "adapter_model.bin")]
    present = [w for w in weights if w.exists()]
    if not (adapter_dir / "adapter_config.json").exists() or not present:
        raise AdapterError(adapter_dir, "not a PEFT adapter folder (adapter_config.json + adapter_model.*)")
    return str(adapter_dir), present[0].stat().st_mtime_ns


def adapter_rank(adapter_dir: Path) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"])


_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def check_adapter(adapter_dir: Path) -> None:
    """Raise ``AdapterError`` unless ``adapter_dir`` holds a readable PEFT LoRA: adapter_config.json a JSON
    object with an int rank ``r`` >= 1 and ``target_modules``, and weights whose safetensors header parses and
    accounts for exactly the file's bytes (what a truncated or overwritten file fails). Reads the config and
    the header only: milliseconds, whatever the adapter's size."""
    d = Path(adapter_dir)
    if not d.is_dir():
        raise AdapterError(d, "folder missing")
    try:
        cfg = json.loads((d / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise AdapterError(d, "adapter_config.json missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(d, f"adapter_config.json unreadable: {e}") from None
    if not isinstance(cfg, dict):
        raise AdapterError(d, "adapter_config.json is not a JSON object")
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1:
        raise AdapterError(d, f"adapter_config.json has no int rank r >= 1 (r={cfg.get('r')!r})")
    if not cfg.get("target_modules"):
        raise AdapterError(d, "adapter_config.json names no target_modules")
    weights = d / "adapter_model.safetensors"
    if weights.exists():
        _check_safetensors(d, weights)
    elif not (d / "adapter_model.bin").exists():
        raise AdapterError(d, "no adapter_model.safetensors or adapter_model.bin")
    elif (d / "adapter_model.bin").stat().st_size == 0:
        raise AdapterError(d, "adapter_model.bin is empty")


def _check_safetensors(d: Path, path: Path) -> None:
    """The safetensors layout: 8-byte little-endian header length, JSON header, then the tensors' bytes, each
    tensor's ``data_offsets`` span exactly dtype size x shape, together covering the rest of the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or n > size - 8:
            raise AdapterError(d, f"{path.name}: header length {n} does not fit the file's {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AdapterError(d, f"{path.name}: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise AdapterError(d, f"{path.name}: header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise AdapterError(d, f"{path.name}: holds no tensor")
    end = 0
    for name, t in tensors.items():
        try:
            (b, e), width = t["data_offsets"], _ST_BYTES[t["dtype"]]
            count = 1
            for s in t["shape"]:
                count *= int(s)
        except (KeyError, TypeError, ValueError):
            raise AdapterError(d, f"{path.name}: tensor {name!r} has a malformed header entry") from None
        if not 0 <= b <= e or e - b != count * width:
            raise AdapterError(d, f"{path.name}: tensor {name!r} spans bytes {b}..{e}, its shape needs "
                                  f"{count * width}")
        end = max(end, e)
    if end != size - 8 - n:
        raise AdapterError(d, f"{path.name}: header describes {end} bytes of tensors, the file holds "
                              f"{size - 8 - n} (truncated or overwritten)")


class PeftSwitch:
    """One base model, at most one PEFT adapter loaded at a time: ``use(dir)`` loads ``dir`` (dropping the
    previous adapter, so memory stays one adapter however many tasks pass through) and returns a context in
    which ``module`` runs with it; ``use(None)`` runs the base (LoRA layers disabled).

    A folder that fails ``check_adapter`` raises ``AdapterError`` before the model is touched. A load that
    fails later leaves the previous adapter active (the half-loaded one is deleted); if the very first load
    fails after PEFT has put LoRA layers into the base model, the base can no longer be trusted: ``broken``
    says so and every later ``use`` raises."""

    def __init__(self, model):
        self.model = model
        self.peft = None
        self.active: tuple[str, int] | None = None
        self.broken = ""
        self._loaded = 0

    @property
    def module(self):
        return self.peft if self.peft is not None else self.model

    def use(self, adapter_dir: Path | None):
        if self.broken:
            raise RuntimeError(f"PeftSwitch unusable: {self.broken}")
        if adapter_dir is None:
            return self.peft.disable_adapter() if self.peft is not None else nullcontext()
        check_adapter(adapter_dir)
        key = adapter_key(adapter_dir)
        if key != self.active:
            name, self._loaded = f"a{self._loaded}", self._loaded + 1
            if self.peft is None:
                self._first_load(key[0], name)
            else:
                old = self.peft.active_adapter
                try:
                    self.peft.load_adapter(key[0], adapter_name=name)
                except Exception:
                    if name in self.peft.peft_config:  # added, then its weights failed: drop it, keep ``old``
                        self.peft.delete_adapter(name)
                    raise
                self.peft.set_adapter(name)
                self.peft.delete_adapter(old)
            self.peft.eval()
            self.active = key
        return nullcontext()

    def _first_load(self, path: str, name: str) -> None:
        from peft import PeftModel

        try:
            self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
        except Exception as e:
            if any(hasattr(m, "lora_A") for m in self.model.modules()):
                self.broken = f"the first adapter load ({path}) failed after injecting LoRA layers: {e!r}"
            raise


def fit_prompt(fmt, demos: Sequence, query_input, max_model_len: int
               ) -> tuple[list[int], int, int, tuple[int, int]] | None:
    """``fmt`` an ``ArcFormat``, ``demos`` its demonstration pairs: (prompt ids, max new tokens, demonstrations dropped, output bound (h, w)) such that prompt + max new
    tokens fits ``max_model_len``, dropping the largest demonstrations first (a shorter prompt that still shows
    the rule beats no answer); None when even one demonstration does not fit."""
    demos = list(demos)
    dropped = 0
    while True:
        prompt = fmt.prompt_ids(demos, query_input)
        hw = fmt.output_bound(demos, query_input)
        bound = fmt.max_output_tokens(*hw)
        if len(prompt) + bound <= max_model_len:
            return prompt, bound, dropped, hw
        if len(demos) <= 1:
            return None
        largest = max(range(len(demos)), key=lambda i: demos[i].input.size + demos[i].output.size)
        demos.pop(largest)
        dropped += 1
