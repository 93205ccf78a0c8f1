"""GPU memory and disk planner: will this model train, decode and score on this GPU, and what has to give if not.

    .venv/bin/python build_submission.py plan --model PATH [--preset t4x2]

Pure functions over a ``ModelShape`` (read from the model's ``config.json``) and a ``MemoryRun`` (the run's
settings: ``run_from_config`` takes them from a ``RunConfig``). Every number is bytes; ``GIB`` = 2**30. The
three GPU stages run one after the other in a worker (train, then decode, then score; each frees the GPU
before the next, ``isolate_training`` makes that exact for training), so each is checked alone against the
card. ``benchmarks/memory_check.py`` measures each stage (the kit's own trainer, decoder and scorer) and prints
plan vs measured; ``tests/test_memory_measured.py`` holds the planner to those measurements. The formulas, in
``value_bytes`` (b: 2 for bf16/fp16 on a GPU, 4 for fp32 on CPU; the constants below are assumptions):

Parameters (``ModelShape``), a Llama-style decoder (Llama, Mistral, Qwen2, Qwen3):
  per layer: q ``h*q`` + k,v ``2*h*kv`` + o ``q*h`` (+ q/k/v biases for Qwen2) + MLP ``3*h*i`` + 2 norms ``2*h``
  (+ Qwen3's per-head q/k norms ``2*head_dim``), with ``q = heads*head_dim``, ``kv = kv_heads*head_dim``;
  plus embeddings ``V*h``, the lm_head ``V*h`` unless tied, the final norm ``h``.
  The projections are the "linear" parameters (what 4-bit quantizes and LoRA targets); the rest stays 16-bit.

Training (Unsloth or PEFT, LoRA, one process on one GPU):
  context      ``context_bytes`` (CUDA_CONTEXT_BYTES: CUDA context, cuBLAS workspace, allocator slack);
  weights      4-bit: linear * NF4_BYTES_PER_PARAM + (embeddings, lm_head, norms) * b; else all params * b;
  lora+adam    lora_params * 16: fp32 weights 4 + fp32 grads 4 + two fp32 AdamW moments 8 (train.py keeps LoRA
               in fp32); lora_params = r * sum(d_in + d_out) over the target projections * layers;
  checkpoints  with gradient checkpointing one hidden state per layer, ``layers * s * h * b``; Unsloth's
               checkpointing offloads them to host RAM, so 0 on GPU for the unsloth backend;
               without checkpointing every layer keeps its working set: ``layers * layer_working_set``;
  layer        the recompute of one layer in backward: its intermediates and their gradients,
               ``2 * s * (4h + 2q + 2kv + 3i) * b`` (norm in/out, q, k, v, attention out, o out, gate, up,
               act*up, down out; attention by SDPA/flash, never an s x s matrix);
  loss         peft (``train.label_row_loss``): the R label rows gathered and their gradient ``2 * R * h * b``,
               and one chunk of ``c = min(LOSS_CHUNK_ROWS, R)`` rows through the head: ``c * V`` entries of
               logits (b), their fp32 copy (none in fp32), the fp32 log-softmax and its fp32 gradient; R is
               ``label_rows`` (0: every row, the worst case); Unsloth's fused chunked cross-entropy never holds
               more than the 16-bit logits, ``s * V * 2`` (an upper bound of its chunks);
  with ``s = train.max_seq_len * train.batch_size`` tokens. With gradient checkpointing the loss and a layer's
  recompute are never alive together (the loss is done and freed before backward reaches the layers), so the
  plan counts the larger of the two (measured: summing them overshot a 24-layer step at 4k tokens by 17%).

Decoding, by ``decode_backend``:
  vLLM (one engine, multi-LoRA) against ``gpu_memory_utilization * card``: context; CUDA graphs
  VLLM_CUDA_GRAPH_BYTES unless enforce_eager; weights 16-bit (all params * 2); LoRA slots
  ``max_loras * max_lora_rank * sum(d_in + d_out) * layers * 2``; activations, vLLM's profiling pass:
  VLLM_BATCHED_TOKENS tokens through one layer's widest intermediates ``T * (2i + q + 2kv + 2h) * 2`` plus the
  sampler's fp32 logits ``VLLM_MAX_NUM_SEQS * V * 4``; the KV cache of ONE max_model_len sequence,
  ``2 * layers * kv * 2`` bytes per token (what vLLM needs to start; what is left of its share becomes more KV
  blocks, i.e. concurrency, not a requirement).
  transformers (``decode_hf``: one adapter at a time, left-padded ``generate`` batches of ``hf_batch_rows``)
  against the whole card: context, weights (4-bit with bitsandbytes), one adapter ``lora_params * b``, the
  batch's KV cache ``rows * max_model_len * 2 * layers * kv * b``, the batch's prefill through one layer's
  widest intermediates ``rows * max_model_len * (2h + q + 2kv + 2i) * b``, and a step's fp32 scores, their
  log-softmax and the grammar's mask ``rows * V * 12``.

Scoring (transformers + PEFT, ``score_candidates``, one sequence at a time; 16-bit unless ``score_quantization``):
context + weights + one adapter + the KV cache of one max_model_len sequence + its prefill through one layer's
widest intermediates + one block of ``Scorer.HEAD_ROWS`` rows through the head (logits, fp32 copy, log-softmax).

Disk (/kaggle/working, DISK_CAPACITY_BYTES): adapters alive at once * adapter size + a model copy (the tiny
model is built into the output folder; a real model is read from /kaggle/input) + DISK_RESERVE_BYTES. A worker
holds its tasks' adapters until they are decoded and scored (worker.py trains all its tasks first), so every
task's adapter is alive at the peak unless ``adapters_alive`` says otherwise.

The degradation ladder (``plan_memory``): training shortens ``train.max_seq_len`` (halving, not below
MIN_SEQ_LEN), then gives up TTT (decode with the base model); decoding first tries the decoder's own knobs (fewer
LoRA slots, then a shorter ``max_model_len``, halving, not below MIN_SEQ_LEN), and only then a bitsandbytes 4-bit
base, which the transformers decoder loads (vLLM 0.32 has no bitsandbytes; it is slower); scoring falls back to no
product-of-experts scoring; the disk caps the adapters alive at once (``max_adapters``: that many tasks, the
cheapest, get an adapter; the others decode with the base model). The verdict is "fits" (nothing changed), "fits after degrading" (the
returned settings differ), or "does not fit" (no decoding setting fits: the GPUs cannot run).
``MemoryPlan.downgrades`` words each lowered setting as what runs instead of what, and why (the stage that did not
fit as configured); the run applies them and its report's status names each one (``run/pipeline.py``). When the
engine ladder then picks another engine than the one planned for, the run plans again for the engine that runs
(``pipeline._replan_for_rungs``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from .score_candidates import Scorer
from .train import LOSS_CHUNK_ROWS

GIB = 1024 ** 3
# NF4 (bitsandbytes, blocksize 64, double quantization): 4 bits per weight + one 8-bit absmax per 64 weights
# + one fp32 second-level scale per 256 blocks. Without double quantization it would be 0.5 + 4/64 = 0.5625.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT_BYTES = 0.5 * GIB  # assumption: torch's CUDA context + cuBLAS workspace + allocator slack per process
VLLM_CUDA_GRAPH_BYTES = 0.5 * GIB  # assumption: captured CUDA graphs' private pools (0 with enforce_eager)
VLLM_BATCHED_TOKENS = 8192  # vLLM's default max_num_batched_tokens for the offline LLM (chunked prefill)
VLLM_MAX_NUM_SEQS = 256  # vLLM's default max_num_seqs: the sampler's logits rows in the profiling pass
DISK_CAPACITY_BYTES = 20e9  # /kaggle/working: "about 20 GB"
DISK_RESERVE_BYTES = 0.5e9  # submission, candidates, logs, reports, the executed notebook
MIN_SEQ_LEN = 2048  # the shortest training/decoding length the ladder goes down to
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FITS, DEGRADED, NO_FIT, NOT_PLANNED = "fits", "fits after degrading", "does not fit", "not planned (no GPU)"


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model's ``config.json`` that memory depends on."""

    hidden: int = field(metadata={"help": "hidden_size"})
    layers: int = field(metadata={"help": "num_hidden_layers"})
    heads: int = field(metadata={"help": "num_attention_heads"})
    kv_heads: int = field(metadata={"help": "num_key_value_heads (grouped-query attention)"})
    head_dim: int = field(metadata={"help": "head_dim, or hidden_size / num_attention_heads when absent"})
    intermediate: int = field(metadata={"help": "intermediate_size (the MLP width)"})
    vocab: int = field(metadata={"help": "vocab_size"})
    tied: bool = field(default=False, metadata={"help": "tie_word_embeddings: lm_head shares the embeddings"})
    qkv_bias: bool = field(default=False, metadata={"help": "q/k/v projections carry biases (Qwen2)"})
    qk_norm: bool = field(default=False, metadata={"help": "per-head RMSNorm on q and k (Qwen3)"})
    dtype: str = field(default="bfloat16", metadata={"help": "torch_dtype of the checkpoint"})

    def __post_init__(self):
        for name in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelShape.{name} must be a positive int, got {v!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"num_attention_heads {self.heads} is not a multiple of num_key_value_heads {self.kv_heads}")

    @classmethod
    def from_config(cls, config: dict, source: str = "config.json") -> "ModelShape":
        """From a parsed ``config.json`` (a multimodal one's ``text_config`` when the top level has no width)."""
        if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
            config = {**config["text_config"], "model_type": config["text_config"].get("model_type", "")}
        need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        missing = [k for k in need if config.get(k) is None]
        if missing:
            raise ValueError(f"{source}: missing {missing}; the memory plan needs {list(need)}")
        heads = int(config["num_attention_heads"])
        model_type = str(config.get("model_type", ""))
        return cls(hidden=int(config["hidden_size"]), layers=int(config["num_hidden_layers"]), heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
                   intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
                   tied=bool(config.get("tie_word_embeddings", False)),
                   # Qwen2's attention always has q/k/v biases (no config key); others say attention_bias.
                   qkv_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
                   qk_norm=model_type == "qwen3", dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"))

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelShape":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: not a Hugging Face model folder")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        return cls.from_config(config, str(path))

    # -- sizes ----------------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def projection_dims(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of every projection of one layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Weights of all projections (what 4-bit quantizes)."""
        return self.layers * sum(a * b for a, b in self.projection_dims().values())

    @property
    def other_params(self) -> int:
        """Embeddings, lm_head (unless tied), norms and biases: kept 16-bit when the projections are 4-bit."""
        per_layer = 2 * self.hidden + (self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0) \
            + (2 * self.head_dim if self.qk_norm else 0)
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * per_layer + self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, rank: int, targets: tuple[str, ...] = TARGETS) -> int:
        """LoRA weights: r * (d_in + d_out) per targeted projection and layer; ``embed_tokens`` and ``lm_head``
        (once each, not per layer) add r * (vocab + hidden) each."""
        dims = self.projection_dims()
        vocab_targets = {"embed_tokens", "lm_head"} & set(targets)
        unknown = set(targets) - set(dims) - vocab_targets
        if unknown:
            raise ValueError(f"LoRA targets {sorted(unknown)} are not modules of this model "
                             f"{list(dims) + sorted(vocab_targets | {'embed_tokens', 'lm_head'})}")
        per_layer = sum(sum(dims[t]) for t in targets if t in dims)
        return rank * (self.layers * per_layer + len(vocab_targets) * (self.vocab + self.hidden))

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return 2 * self.layers * self.kv_dim * bytes_per_value


@dataclass(frozen=True)
class MemoryRun:
    """The settings memory depends on (``run_from_config`` reads them from a RunConfig)."""

    gpu_memory_gib: float = field(metadata={"help": "usable memory of one GPU; 0 = no GPU (nothing planned)"})
    train_backend: Literal["unsloth", "peft"] = field(default="unsloth", metadata={"help": "train.backend"})
    load_in_4bit: bool = field(default=True, metadata={"help": "train.load_in_4bit"})
    lora_rank: int = field(default=32, metadata={"help": "train.lora_rank"})
    targets: tuple[str, ...] = field(default=TARGETS, metadata={"help": "train.target_modules"})
    train_max_seq_len: int = field(default=8192, metadata={"help": "train.max_seq_len"})
    batch_size: int = field(default=1, metadata={"help": "train.batch_size"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "train.gradient_checkpointing"})
    run_ttt: bool = field(default=True, metadata={"help": "train adapters at all"})
    max_model_len: int = field(default=8192, metadata={"help": "decode.max_model_len"})
    max_lora_rank: int = field(default=32, metadata={"help": "decode.max_lora_rank"})
    max_loras: int = field(default=8, metadata={"help": "decode.max_loras"})
    quantization: Literal["none", "bitsandbytes"] = field(default="none", metadata={
        "help": "decode.quantization: vLLM's base weights 16-bit or bitsandbytes 4-bit"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "decode.gpu_memory_utilization"})
    enforce_eager: bool = field(default=False, metadata={"help": "decode.enforce_eager (no CUDA graphs)"})
    decode_backend: Literal["vllm", "hf"] = field(default="vllm", metadata={
        "help": "decode.backend: vLLM (planned against gpu_memory_utilization of the card) or the transformers "
                "decoder (the whole card)"})
    hf_batch_rows: int = field(default=8, metadata={
        "help": "rows the transformers decoder generates at once: decode.hf_batch_size x samples_per_view"})
    poe_scoring: bool = field(default=True, metadata={"help": "select.method == 'poe': the scorer runs"})
    score_quantization: Literal["none", "bitsandbytes"] = field(default="none", metadata={
        "help": "the scorer's weights (score_candidates loads 16-bit today)"})
    tasks: int = field(default=120, metadata={"help": "tasks of the run (adapters on disk)"})
    adapters_alive: int = field(default=0, metadata={"help": "adapters on disk at the peak; 0 = every task's"})
    adapter_bytes_per_param: int = field(default=2, metadata={"help": "2: adapters saved 16-bit; 4: fp32"})
    model_copy_bytes: float = field(default=0.0, metadata={"help": "a model written under /kaggle/working"})
    disk_capacity_bytes: float = field(default=DISK_CAPACITY_BYTES, metadata={"help": "the output disk"})
    value_bytes: int = field(default=2, metadata={
        "help": "bytes of one weight or activation in the compute dtype: 2 on a GPU (bf16/fp16), 4 in fp32 (CPU)"})
    context_bytes: float = field(default=CUDA_CONTEXT_BYTES, metadata={
        "help": "per-process device overhead (CUDA context, cuBLAS workspace); 0 for a CPU measured above its "
                "baseline"})
    label_rows: int = field(default=0, metadata={
        "help": "label rows of the longest training sequence (the loss's head rows); 0 = every row, the worst case"})

    def __post_init__(self):
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.gpu_memory_gib < 0:
            raise ValueError(f"gpu_memory_gib must be >= 0, got {self.gpu_memory_gib}")
        for name in ("lora_rank", "train_max_seq_len", "batch_size", "max_model_len", "max_lora_rank",
                     "max_loras", "hf_batch_rows", "adapter_bytes_per_param"):
            if getattr(self, name) < 1:
                raise ValueError(f"MemoryRun.{name} must be >= 1, got {getattr(self, name)}")
        if self.quantization not in ("none", "bitsandbytes") or self.score_quantization not in ("none", "bitsandbytes"):
            raise ValueError(f"quantization must be 'none' or 'bitsandbytes', got {self.quantization!r}, "
                             f"{self.score_quantization!r}")
        if self.decode_backend not in ("vllm", "hf"):
            raise ValueError(f"decode_backend must be 'vllm' or 'hf', got {self.decode_backend!r}")
        if self.value_bytes not in (2, 4) or self.label_rows < 0 or self.context_bytes < 0:
            raise ValueError(f"value_bytes must be 2 or 4 and label_rows, context_bytes >= 0, got {self.value_bytes}, "
                             f"{self.label_rows}, {self.context_bytes}")
        if self.train_backend not in ("unsloth", "peft"):
            raise ValueError(f"train_backend must be 'unsloth' or 'peft', got {self.train_backend!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


def run_from_config(cfg, gpu_memory_gib: float | None = None, tasks: int = 120, model_copy_bytes: float = 0.0) -> MemoryRun:
    """The memory-relevant settings of a ``RunConfig``; ``gpu_memory_gib`` defaults to the preset's dial.
    ``decode.quantization`` is read when DecodeConfig has it (else "none", what vLLM does today)."""
    t, d = cfg.train, cfg.decode
    mem = cfg.gpu_memory_gib if gpu_memory_gib is None else gpu_memory_gib
    return MemoryRun(gpu_memory_gib=mem if cfg.device == "cuda" else 0.0, train_backend=t.backend,
                     load_in_4bit=t.load_in_4bit, lora_rank=t.lora_rank, targets=tuple(t.target_modules),
                     train_max_seq_len=t.max_seq_len, batch_size=t.batch_size,
                     gradient_checkpointing=t.gradient_checkpointing, run_ttt=cfg.run_ttt,
                     max_model_len=d.max_model_len, max_lora_rank=d.max_lora_rank, max_loras=d.max_loras,
                     quantization=getattr(d, "quantization", "none"), gpu_memory_utilization=d.gpu_memory_utilization,
                     enforce_eager=d.enforce_eager, decode_backend=d.backend,
                     hf_batch_rows=d.hf_batch_size * d.samples_per_view,
                     poe_scoring=cfg.select.method == "poe", tasks=tasks, model_copy_bytes=model_copy_bytes,
                     adapters_alive=min(cfg.max_adapters, tasks))


@dataclass(frozen=True)
class StageMemory:
    """One stage's memory terms (bytes) against its capacity."""

    stage: str
    terms: tuple[tuple[str, float], ...]
    capacity: float

    @property
    def total(self) -> float:
        return sum(v for _, v in self.terms)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.terms)
        return (f"{self.stage:<6} {self.total / GIB:6.2f} of {self.capacity / GIB:6.2f} GiB "
                f"{'fits' if self.fits else 'DOES NOT FIT'}  ({parts})")

    def need(self, capacity_note: str = "", terms: int = 3) -> str:
        """``needs 28.77 GiB of 20.25: weights 15.67, kv cache 2.50, lora slots 2.80``: the total against the
        capacity (``capacity_note`` follows it), then the ``terms`` largest terms, in GiB."""
        top = sorted(self.terms, key=lambda t: -t[1])[:terms]
        return (f"needs {self.total / GIB:.2f} GiB of {self.capacity / GIB:.2f}{capacity_note}: "
                + ", ".join(f"{k} {v / GIB:.2f}" for k, v in top))


def _weights(shape: ModelShape, four_bit: bool, value_bytes: int = 2) -> float:
    return (shape.linear_params * NF4_BYTES_PER_PARAM + shape.other_params * value_bytes if four_bit
            else shape.params * float(value_bytes))


def _layer_working_set(shape: ModelShape, tokens: int, value_bytes: int = 2) -> float:
    """Intermediates of one layer's recompute and their gradients (see the module docstring)."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    return 2 * tokens * (4 * h + 2 * q + 2 * kv + 3 * i) * value_bytes


def _forward_working_set(shape: ModelShape, tokens: int, value_bytes: int = 2) -> float:
    """One layer's widest live intermediates in a forward without gradients (prefill): ``tokens`` rows."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    return tokens * (2 * h + q + 2 * kv + 2 * i) * value_bytes


def _head_block(rows: int, vocab: int, value_bytes: int) -> float:
    """The LM head and log-softmax of ``rows`` hidden states: the logits in the compute dtype, their fp32 copy
    (none in fp32), the fp32 log-softmax."""
    return rows * vocab * (value_bytes + (4 if value_bytes != 4 else 0) + 4)


def train_memory(shape: ModelShape, run: MemoryRun) -> StageMemory:
    s, vb = run.train_max_seq_len * run.batch_size, run.value_bytes
    checkpoints = 0.0 if run.train_backend == "unsloth" else shape.layers * s * shape.hidden * vb
    layer = _layer_working_set(shape, s, vb)
    if not run.gradient_checkpointing:  # every layer keeps its intermediates until backward
        checkpoints, layer = 0.0, shape.layers * layer
    if run.train_backend == "unsloth":
        loss = s * shape.vocab * 2.0  # its fused chunked cross-entropy: at most the 16-bit logits
    else:  # label_row_loss: the label rows gathered (and their gradient); one chunk's head, log-softmax, gradient
        rows = min(run.label_rows or s, s)
        chunk = min(LOSS_CHUNK_ROWS, rows)
        loss = 2 * rows * shape.hidden * vb + _head_block(chunk, shape.vocab, vb) + chunk * shape.vocab * 4.0
    if run.gradient_checkpointing:  # the loss runs after the last layer, and is freed before the layers' backward
        last = (("loss", float(loss)),) if loss >= layer else (("layer", float(layer)),)
    else:  # every layer's intermediates are alive when the loss runs
        last = (("layer", float(layer)), ("loss", float(loss)))
    terms = (("context", run.context_bytes), ("weights", _weights(shape, run.load_in_4bit, vb)),
             ("lora+adam", shape.lora_params(run.lora_rank, run.targets) * 16.0), ("checkpoints", float(checkpoints)),
             *last)
    return StageMemory("train", terms, run.gpu_memory_gib * GIB)


def decode_memory(shape: ModelShape, run: MemoryRun) -> StageMemory:
    """vLLM (``decode_backend="vllm"``) against its share of the card, or the transformers decoder against all
    of it. vLLM needs room for one full-length sequence's KV cache to start (more only buys concurrency); the
    transformers decoder holds a whole batch's: ``hf_batch_rows`` rows of ``max_model_len`` tokens."""
    h, q, kv, i, vb = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate, run.value_bytes
    four_bit = run.quantization == "bitsandbytes"
    if run.decode_backend == "hf":
        rows = run.hf_batch_rows
        terms = (("context", run.context_bytes), ("weights", _weights(shape, four_bit, vb)),
                 ("adapter", float(shape.lora_params(run.max_lora_rank, run.targets) * vb)),
                 ("kv cache", float(shape.kv_bytes_per_token(vb) * run.max_model_len * rows)),
                 ("prefill", _forward_working_set(shape, rows * run.max_model_len, vb)),
                 ("logits", float(rows * shape.vocab * 4 * 3)))  # fp32 scores, the recorder's log-softmax, a mask
        return StageMemory("decode", terms, run.gpu_memory_gib * GIB)
    activations = VLLM_BATCHED_TOKENS * (2 * i + q + 2 * kv + 2 * h) * 2 + VLLM_MAX_NUM_SEQS * shape.vocab * 4
    slots = run.max_loras * shape.lora_params(run.max_lora_rank, run.targets) * 2
    kv_cache = shape.kv_bytes_per_token() * run.max_model_len
    terms = (("context", run.context_bytes), ("graphs", 0.0 if run.enforce_eager else VLLM_CUDA_GRAPH_BYTES),
             ("weights", _weights(shape, four_bit)), ("lora slots", float(slots)),
             ("activations", float(activations)), ("kv cache", float(kv_cache)))
    return StageMemory("decode", terms, run.gpu_memory_utilization * run.gpu_memory_gib * GIB)


def score_memory(shape: ModelShape, run: MemoryRun) -> StageMemory:
    s, vb = run.max_model_len, run.value_bytes
    terms = (("context", run.context_bytes),
             ("weights", _weights(shape, run.score_quantization == "bitsandbytes", vb)),
             ("adapter", float(shape.lora_params(run.max_lora_rank, run.targets) * vb)),
             ("kv cache", float(shape.kv_bytes_per_token(vb) * s)),
             ("prefill", _forward_working_set(shape, s, vb)),
             ("log-softmax", _head_block(Scorer.HEAD_ROWS, shape.vocab, vb)))
    return StageMemory("score", terms, run.gpu_memory_gib * GIB)


@dataclass(frozen=True)
class DiskPlan:
    adapter_bytes: float
    adapters_alive: int
    model_copy_bytes: float
    capacity_bytes: float

    @property
    def peak_bytes(self) -> float:
        return self.adapters_alive * self.adapter_bytes + self.model_copy_bytes + DISK_RESERVE_BYTES

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes

    @property
    def max_adapters_alive(self) -> int:
        """How many adapters fit on the disk at once (the limit a worker must delete decoded ones under)."""
        free = self.capacity_bytes - self.model_copy_bytes - DISK_RESERVE_BYTES
        return max(0, int(free // self.adapter_bytes))

    def line(self) -> str:
        return (f"disk   peak {self.peak_bytes / 1e9:.2f} of {self.capacity_bytes / 1e9:.1f} GB "
                f"{'fits' if self.fits else 'DOES NOT FIT'}  ({self.adapters_alive} adapters x "
                f"{self.adapter_bytes / 1e6:.0f} MB + model copy {self.model_copy_bytes / 1e9:.2f} GB + reserve "
                f"{DISK_RESERVE_BYTES / 1e9:.1f} GB; at most {self.max_adapters_alive} adapters alive fit)")


def disk_plan(shape: ModelShape, run: MemoryRun) -> DiskPlan:
    alive = run.adapters_alive or (run.tasks if run.run_ttt else 0)
    return DiskPlan(shape.lora_params(run.lora_rank, run.targets) * float(run.adapter_bytes_per_param), alive,
                    run.model_copy_bytes, run.disk_capacity_bytes)


@dataclass(frozen=True)
class MemoryPlan:
    """The verdict, the settings chosen (``run``), what changed, and each stage at those settings."""

    verdict: str
    run: MemoryRun
    requested: MemoryRun
    changes: tuple[str, ...]
    stages: tuple[StageMemory, ...]
    disk: DiskPlan
    requested_stages: tuple[StageMemory, ...]
    shape: ModelShape | None = None  # the model planned (``downgrades`` re-checks the scorer on it)

    def settings(self) -> dict:
        """The settings a run should apply: dotted RunConfig keys (``decode.quantization`` where the decode
        agent's DecodeConfig has it) and ``run_ttt``/PoE flags."""
        r = self.run
        return {"train.max_seq_len": r.train_max_seq_len, "run_ttt": r.run_ttt, "decode.max_model_len": r.max_model_len,
                "decode.max_loras": r.max_loras, "decode.quantization": r.quantization,
                "decode.backend": r.decode_backend, "poe_scoring": r.poe_scoring,
                "max_adapters": self.run.adapters_alive}

    def downgrades(self) -> list[dict]:
        """What the plan lowered, one record per setting of ``settings()``: ``setting``, ``was`` (as configured),
        ``now`` (as chosen), ``what`` (what runs instead of what) and ``why`` (the stage that did not fit as
        configured, its need against its capacity). Only a plan that fits after degrading has any: "does not fit"
        stops the run."""
        if self.verdict != DEGRADED:
            return []
        req, run = self.requested, self.run
        stage = {s.stage: s for s in self.requested_stages}
        out: list[dict] = []

        def add(setting: str, was, now, what: str, why: str) -> None:
            out.append({"setting": setting, "was": was, "now": now, "what": what, "why": why})

        if req.run_ttt and not run.run_ttt:
            add("run_ttt", True, False, "no TTT: the base model decodes every task instead of per-task adapters",
                f"at {req.train_max_seq_len} tokens training {stage['train'].need()}; it does not fit even at "
                f"{_halvings(req.train_max_seq_len)[-1]}")
        elif run.train_max_seq_len != req.train_max_seq_len:
            add("train.max_seq_len", req.train_max_seq_len, run.train_max_seq_len,
                f"training sequences of {run.train_max_seq_len} tokens instead of {req.train_max_seq_len}",
                f"training at {req.train_max_seq_len} tokens {stage['train'].need()}")
        engine = ("vLLM" if req.decode_backend == "vllm" else
                  f"the transformers decoder ({req.hf_batch_rows} rows at once)")
        decode = (f"with {'16-bit' if req.quantization == 'none' else '4-bit'} weights"
                  + (f", {req.max_loras} LoRA slots" if req.decode_backend == "vllm" else "")
                  + f" and {req.max_model_len}-token sequences {engine} "
                  + stage['decode'].need(f" ({req.gpu_memory_utilization:g} of the card)"
                                         if req.decode_backend == "vllm" else ""))
        if run.decode_backend != req.decode_backend:
            add("decode.backend", req.decode_backend, run.decode_backend,
                "decoding on transformers instead of vLLM (vLLM 0.32 loads no bitsandbytes 4-bit base; slower)", decode)
        if run.quantization != req.quantization:
            add("decode.quantization", req.quantization, run.quantization,
                "a 4-bit (bitsandbytes NF4) base model instead of its 16-bit weights", decode)
        if run.max_loras != req.max_loras and run.decode_backend == "vllm":
            add("decode.max_loras", req.max_loras, run.max_loras,
                f"{run.max_loras} LoRA slot(s) in the decoder instead of {req.max_loras}", decode)
        if run.max_model_len != req.max_model_len:
            add("decode.max_model_len", req.max_model_len, run.max_model_len,
                f"a {run.max_model_len}-token decoding context instead of {req.max_model_len}", decode)
        if req.poe_scoring and not run.poe_scoring:
            scorer = score_memory(self.shape, run) if self.shape is not None else stage["score"]
            add("poe_scoring", True, False, "voting alone instead of product-of-experts scoring",
                f"the scorer with {'16-bit' if run.score_quantization == 'none' else '4-bit'} weights {scorer.need()}")
        if run.adapters_alive != req.adapters_alive and run.run_ttt:
            whole = disk_plan(self.shape, req) if self.shape is not None else self.disk
            add("max_adapters", req.adapters_alive, run.adapters_alive,
                f"TTT adapters for {run.adapters_alive} of {run.tasks} tasks (the cheapest; the others decode with "
                f"the base model)",
                f"{whole.adapters_alive} adapters of {whole.adapter_bytes / 1e6:.0f} MB need "
                f"{whole.peak_bytes / 1e9:.1f} GB of the {whole.capacity_bytes / 1e9:.1f} GB disk at once")
        return out

    def lines(self) -> list[str]:
        out = [f"memory: {self.verdict}" + (f" ({'; '.join(self.changes)})" if self.changes else "")]
        if self.verdict == NOT_PLANNED:
            return out + [self.disk.line()]
        if self.changes:
            out.append("as configured:")
            out += ["  " + s.line() for s in self.requested_stages]
            out.append("chosen:")
        out += ["  " + s.line() for s in self.stages]
        out.append("  " + self.disk.line())
        return out

    def to_dict(self) -> dict:
        def stage(s: StageMemory) -> dict:
            return {"stage": s.stage, "total_gib": s.total / GIB, "capacity_gib": s.capacity / GIB, "fits": s.fits,
                    "terms_gib": {k: v / GIB for k, v in s.terms}}
        return {"verdict": self.verdict, "changes": list(self.changes), "settings": self.settings(),
                "stages": [stage(s) for s in self.stages], "requested_stages": [stage(s) for s in self.requested_stages],
                "disk": {"peak_gb": self.disk.peak_bytes / 1e9, "capacity_gb": self.disk.capacity_bytes / 1e9,
                         "adapter_mb": self.disk.adapter_bytes / 1e6, "adapters_alive": self.disk.adapters_alive,
                         "max_adapters_alive": self.disk.max_adapters_alive, "fits": self.disk.fits},
                "run": asdict(self.run), "requested": asdict(self.requested), "downgrades": self.downgrades()}


def _halvings(start: int) -> list[int]:
    out = [start]
    while out[-1] // 2 >= MIN_SEQ_LEN:
        out.append(out[-1] // 2)
    return out


def plan_memory(shape: ModelShape, run: MemoryRun, allow_bitsandbytes: bool = True) -> MemoryPlan:
    """Check each stage at ``run``'s settings; where one does not fit, walk its ladder (module docstring)."""
    def stages(r: MemoryRun) -> tuple[StageMemory, ...]:  # the stages that run under r
        return tuple(([train_memory(shape, r)] if r.run_ttt else []) + [decode_memory(shape, r)]
                     + ([score_memory(shape, r)] if r.poe_scoring else []))

    requested = stages(run)
    if run.gpu_memory_gib == 0:
        return MemoryPlan(NOT_PLANNED, run, run, (), (), disk_plan(shape, run), (), shape)
    changes: list[str] = []
    chosen = run
    if run.run_ttt and not train_memory(shape, run).fits:
        fit = next((n for n in _halvings(run.train_max_seq_len)
                    if train_memory(shape, replace(run, train_max_seq_len=n)).fits), None)
        if fit is None:
            chosen = replace(chosen, run_ttt=False)
            changes.append(f"no TTT: training does not fit even at max_seq_len {_halvings(run.train_max_seq_len)[-1]}")
        else:
            chosen = replace(chosen, train_max_seq_len=fit)
            changes.append(f"train.max_seq_len {run.train_max_seq_len} -> {fit}")
    decode_fit = chosen if decode_memory(shape, chosen).fits else None
    if decode_fit is None:
        # The decoder's own knobs first (fewer LoRA slots, then a shorter context), then the 4-bit base, which
        # only the transformers decoder loads (vLLM 0.32 has no bitsandbytes method): slower, so it comes last.
        loras = sorted({run.max_loras, *[n for n in (4, 2, 1) if n < run.max_loras]}, reverse=True)
        rungs = [replace(chosen, max_model_len=length, max_loras=n) for length in _halvings(run.max_model_len)
                 for n in loras]
        if run.quantization == "none" and allow_bitsandbytes:
            rungs += [replace(chosen, max_model_len=length, quantization="bitsandbytes", decode_backend="hf")
                      for length in _halvings(run.max_model_len)]
        decode_fit = next((r for r in rungs if decode_memory(shape, r).fits), None)
        if decode_fit is not None:
            for name, label in (("max_loras", "decode.max_loras"), ("decode_backend", "decode.backend"),
                                ("quantization", "decode.quantization"), ("max_model_len", "decode.max_model_len")):
                if getattr(decode_fit, name) != getattr(run, name):
                    changes.append(f"{label} {getattr(run, name)} -> {getattr(decode_fit, name)}")
    if decode_fit is None:
        changes.append("decoding does not fit at any setting of the ladder")
        final = stages(chosen)
        return MemoryPlan(NO_FIT, chosen, run, tuple(changes), final, disk_plan(shape, chosen), requested, shape)
    chosen = decode_fit
    if chosen.poe_scoring and not score_memory(shape, chosen).fits:
        chosen = replace(chosen, poe_scoring=False)
        bits = "16-bit" if chosen.score_quantization == "none" else "4-bit"
        changes.append(f"no PoE scoring: the scorer ({bits} weights) does not fit")
    disk = disk_plan(shape, chosen)
    if not disk.fits:
        if disk.max_adapters_alive < 1:
            changes.append(f"not one adapter fits on the disk ({disk.capacity_bytes / 1e9:.1f} GB)")
            return MemoryPlan(NO_FIT, chosen, run, tuple(changes), stages(chosen), disk, requested, shape)
        chosen = replace(chosen, adapters_alive=disk.max_adapters_alive)
        changes.append(f"at most {disk.max_adapters_alive} adapters on disk at once (of {disk.adapters_alive}): "
                       f"TTT for the {disk.max_adapters_alive} cheapest tasks, the others decode with the base model")
        disk = disk_plan(shape, chosen)
    return MemoryPlan(DEGRADED if changes else FITS, chosen, run, tuple(changes), stages(chosen), disk, requested,
                      shape)
