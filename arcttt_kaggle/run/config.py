"""One frozen config tree for a run, with named presets derived from a few dials.

Every stage owns its config dataclass (``TTTDataConfig`` in ttt_data, ``TrainConfig`` in train, ``DecodeConfig``
in decode, ``SelectConfig`` in select, ``AllocationConfig`` in allocate, ``ProgramsConfig`` in programs,
``BudgetConfig``/``Throughput`` in budget); ``RunConfig`` composes them. Presets are built from dials
(hardware: workers, device, dtype, memory; effort: TTT steps, views) so coupled knobs cannot drift apart
(the decoder's ``max_lora_rank`` is the trainer's rank; ``max_loras`` follows the tasks per worker).
``with_overrides`` applies dotted-key overrides (``{"train.steps": 8}``) and re-validates everything.
The resolved config is written next to the submission (``to_dict`` → ``config.json``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from arcttt_kaggle.selection.allocate import AllocationConfig
from .budget import BudgetConfig, Throughput
from arcttt_kaggle.engines.decode import DecodeConfig
from arcttt_kaggle.engines.format import FormatConfig
from arcttt_kaggle.programs.expert import ProgramsConfig
from arcttt_kaggle.selection.select import SelectConfig
from arcttt_kaggle.engines.tinymodel import TinyModelConfig
from arcttt_kaggle.engines.train import TrainConfig
from arcttt_kaggle.engines.ttt_data import TTTDataConfig
from .faults import FAULTS, FaultPlan
from .joint import JointConfig

PRESETS = ("t4x2", "l4x4", "cpu-tiny")
DERIVED_PRESET = "gpu-auto"  # built from the detected GPUs by ``gpu_auto_preset``, not by name


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. Paths are strings so the tree serializes to JSON as it is."""

    preset: str = field(default="cpu-tiny", metadata={"help": f"name of the preset this was built from: {PRESETS} "
                        f"or {DERIVED_PRESET!r} (derived from the detected GPUs)"})
    challenges: str = field(default="", metadata={"help": "the Kaggle *_challenges.json to solve"})
    solutions: str = field(default="", metadata={"help": "optional *_solutions.json: the report then scores the run"})
    out_dir: str = field(default="out", metadata={"help": "where submission.json, report.json, config.json go"})
    submission_path: str = field(default="", metadata={"help": "submission file; default OUT_DIR/submission.json"})
    model: str = field(default="tiny", metadata={"help": "base model folder, or 'tiny' to build the tiny ARC model"})
    tiny_model: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"help": "shape of the tiny model"})
    device: Literal["cuda", "cpu"] = field(default="cpu", metadata={"help": "where workers run their engines"})
    workers: int = field(default=1, metadata={"help": "worker processes: one per GPU (CUDA_VISIBLE_DEVICES=i), or CPU processes"})
    gpu_memory_gib: float = field(default=0.0, metadata={"help": "usable memory of one GPU in GiB, what the memory "
                                  "plan (memory.py) checks against; 0 on CPU"})
    max_tasks: int = field(default=0, metadata={"help": "solve only the first N tasks (0 = all); others keep the fallback"})
    run_ttt: bool = field(default=True, metadata={"help": "train per-task adapters (False: decode with the base model)"})
    second_pass_ratio: float = field(default=1.0, metadata={"help": "compute-optimal second pass: extra views "
                                     "(spread over uncertain tasks by the allocation policy) as a fraction of the "
                                     "first pass's views; 0 = no second pass"})
    isolate_training: bool = field(default=False, metadata={"help": "train in a child process of the worker, so "
                                   "every byte of GPU memory (CUDA context, allocator cache, Unsloth's buffers) is "
                                   "returned before vLLM sizes its KV cache; costs one more engine import (~15 s)"})
    run_programs: bool = field(default=True, metadata={"help": "run the CPU program expert beside the workers"})
    fault: str = field(default="", metadata={"help": "inject faults for testing, comma-separated NAME or NAME@MOMENT "
                       f"(faults.MOMENTS says each moment's unit): of {FAULTS}"})
    probe_engines: bool = field(default=False, metadata={"help": "preflight: import and start vLLM and Unsloth on "
                                "the model in child processes before the workers start (GPU presets: ~1-3 min of "
                                "an engine start each, so a broken engine is known before 12 hours are planned); "
                                "off on CPU, where each worker's own engine ladder is the check"})
    keep_adapters: bool = field(default=False, metadata={"help": "keep each task's adapter after it is decoded and "
                                "scored (default: delete it; /kaggle/working holds ~20 GB)"})
    max_adapters: int = field(default=0, metadata={"help": "at most this many tasks of the run get a TTT adapter "
                              "(0 = every task): the memory plan sets it when the disk cannot hold every adapter at "
                              "once (each worker keeps its own until it has decoded and scored); each worker trains "
                              "its share, cheapest tasks first, and the others decode with the base model"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    format: FormatConfig = field(default_factory=FormatConfig, metadata={"help": "prompt layout (profile) and base model preparation: reduced vocabulary, bnb 4-bit (format.py, model_prep.py)"})
    joint: JointConfig = field(default_factory=JointConfig, metadata={"help": "the joint test-time stage: every "
                               "test task's demonstrations, trained together before the per-task adapters"})
    ttt: TTTDataConfig = field(default_factory=TTTDataConfig, metadata={"help": "TTT data"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "LoRA training"})
    decode: DecodeConfig = field(default_factory=DecodeConfig, metadata={"help": "decoding"})
    select: SelectConfig = field(default_factory=SelectConfig, metadata={"help": "selection of the two attempts"})
    allocation: AllocationConfig = field(default_factory=AllocationConfig, metadata={"help": "second-pass compute allocation"})
    programs: ProgramsConfig = field(default_factory=ProgramsConfig, metadata={"help": "CPU program expert"})
    budget: BudgetConfig = field(default_factory=BudgetConfig, metadata={"help": "wall-clock limits"})
    throughput: Throughput = field(default_factory=Throughput, metadata={"help": "cost-model priors per worker"})

    def __post_init__(self):
        if self.preset not in PRESETS + (DERIVED_PRESET,):
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        FaultPlan.parse(self.fault)  # raises naming an unknown fault or a bad moment
        if self.second_pass_ratio < 0:
            raise ValueError("second_pass_ratio must be >= 0")
        if self.max_tasks < 0:
            raise ValueError("max_tasks must be >= 0")
        if self.max_adapters < 0:
            raise ValueError("max_adapters must be >= 0 (0 = every task gets an adapter)")
        if self.decode.max_lora_rank < self.train.lora_rank:
            raise ValueError(f"decode.max_lora_rank {self.decode.max_lora_rank} < train.lora_rank {self.train.lora_rank}: "
                             "vLLM could not load the adapters")
        vocab_lora = sorted({"embed_tokens", "lm_head"} & set(self.train.target_modules))
        if vocab_lora and self.run_ttt and self.decode.backend == "vllm":
            raise ValueError(f"train.target_modules {vocab_lora}: vLLM cannot serve LoRA on the embeddings or the "
                             f"head; set decode.backend='hf' (transformers decodes and scores them) or drop them")
        if self.device == "cpu" and self.train.dtype == "float16":
            raise ValueError("float16 training is a GPU (T4) setting; use 'auto' or 'float32' on CPU")

    @property
    def submission_file(self) -> Path:
        return Path(self.submission_path) if self.submission_path else Path(self.out_dir) / "submission.json"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return _build(cls, d)

    def with_overrides(self, overrides: dict[str, Any]) -> "RunConfig":
        """Return a copy with dotted-key overrides applied (``{"decode.views_per_test": 4}``), re-validated."""
        d = self.to_dict()
        for key, value in overrides.items():
            node = d
            parts = key.split(".")
            for p in parts[:-1]:
                if p not in node or not isinstance(node[p], dict):
                    raise ValueError(f"unknown config section {p!r} in override {key!r}")
                node = node[p]
            if parts[-1] not in node:
                raise ValueError(f"unknown config key {key!r}")
            node[parts[-1]] = value
        return RunConfig.from_dict(d)


def _build(cls, d: dict):
    """Rebuild a (nested) frozen dataclass from a dict, converting lists back to tuples where typed so."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and isinstance(v, dict):
            v = _build(type(default), v)
        elif isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    return cls(**kwargs)


@dataclass(frozen=True)
class Dials:
    """The few numbers a preset is derived from."""

    workers: int
    device: Literal["cuda", "cpu"]
    dtype: Literal["auto", "float16", "bfloat16", "float32"]
    gpu_memory_gib: float  # per worker; 0 on CPU
    train_steps: int
    views: int
    lora_rank: int
    limit_seconds: float
    margin_seconds: float


def preset(name: str, **paths: Any) -> RunConfig:
    """A named preset. ``paths`` sets top-level fields (challenges, out_dir, model, solutions, ...)."""
    dials = {
        # 2×T4: 15 GiB usable each (nvidia-smi reports 15360 MiB), fp16 only (Turing has no bf16). A 4-bit ~1B
        # model + rank-32 LoRA + 8k context trains in ~6 GB with gradient checkpointing; vLLM then takes 90%.
        "t4x2": Dials(2, "cuda", "float16", 15.0, 96, 8, 32, 12 * 3600.0, 20 * 60.0),
        # 4×L4: 22.5 GiB usable each (nvidia-smi reports 23034 MiB), bf16.
        "l4x4": Dials(4, "cuda", "bfloat16", 22.5, 128, 8, 32, 12 * 3600.0, 20 * 60.0),
        # The tiny model on this 2-core CPU: the dry run and CI. One worker (vLLM and training each use both cores).
        # float32: Unsloth's CPU default (bf16) trains the tiny model ~20x slower (0.26 vs 0.014 s/step).
        "cpu-tiny": Dials(1, "cpu", "float32", 0.0, 24, 4, 8, 600.0, 30.0),
    }
    if name not in dials:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    return preset_from_dials(name, dials[name], **paths)


def gpu_auto_dials(gpu_count: int, compute_capability: float, memory_gib: float) -> Dials:
    """Dials for GPUs no named preset describes: one worker per GPU, fp16 below compute capability 8.0 (no
    bf16 before Ampere) else bf16, the card's memory (the smallest card's, for mixed GPUs). The effort dials
    are t4x2's (96 steps, 8 views, rank 32) and the throughput priors the generic ones: run once and pass
    ``measured_throughput.json`` back to plan from this hardware's own numbers."""
    if gpu_count < 1 or memory_gib <= 0:
        raise ValueError(f"a GPU preset needs >= 1 GPU with memory, got {gpu_count} GPU(s) of {memory_gib} GiB")
    dtype = "bfloat16" if compute_capability >= 8.0 else "float16"
    return Dials(gpu_count, "cuda", dtype, float(memory_gib), 96, 8, 32, 12 * 3600.0, 20 * 60.0)


def gpu_auto_preset(gpu_count: int, compute_capability: float, memory_gib: float, **paths: Any) -> RunConfig:
    """The ``gpu-auto`` preset built from a GPU inventory (``gpu_auto_dials``)."""
    return preset_from_dials(DERIVED_PRESET, gpu_auto_dials(gpu_count, compute_capability, memory_gib), **paths)


def preset_from_dials(name: str, dl: Dials, **paths: Any) -> RunConfig:
    """A RunConfig derived from dials (what every preset is); ``name`` is recorded as ``preset``."""
    cpu = dl.device == "cpu"
    cfg = RunConfig(
        preset=name, device=dl.device, workers=dl.workers, gpu_memory_gib=dl.gpu_memory_gib,
        model="tiny" if cpu else "/kaggle/input/arc-base-model",
        ttt=TTTDataConfig(augmentations_per_task=4 if cpu else 8, max_examples_per_task=32 if cpu else 128,
                          max_tokens=2048 if cpu else 8192),
        # Tiny random model: a high LR is needed to move it in tens of steps; real models use 1e-4.
        isolate_training=not cpu, probe_engines=not cpu,
        train=TrainConfig(backend="unsloth", load_in_4bit=True, dtype=dl.dtype,
                          lora_rank=dl.lora_rank, lora_alpha=2 * dl.lora_rank, steps=dl.train_steps,
                          learning_rate=2e-3 if cpu else 1e-4, warmup_steps=2 if cpu else 8,
                          max_seq_len=2048 if cpu else 8192),
        decode=DecodeConfig(backend="vllm", dtype="float32" if cpu else dl.dtype, views_per_test=dl.views,
                            max_lora_rank=dl.lora_rank, max_loras=4 if cpu else 8,
                            max_model_len=2048 if cpu else 8192, cpu_kvcache_gib=1.0,
                            enforce_eager=cpu, gpu_memory_utilization=0.9,
                            # The tiny model has random weights: unconstrained, nearly every sample is
                            # unparsable and voting/PoE/allocation see nothing. Real models keep the plain path.
                            constrain_grid=cpu,
                            # GPUs: DFS at tau = 0.1, the ARChitects' 2024 setting (the right answer among the
                            # candidates 80% vs 75% greedy); NVARC's 0.2 keeps fewer. At most 10 candidates per
                            # view; the token cap (16 greedy decodes of a 30x30 grid per view) bounds a
                            # pathological wide tree and is reported when it cuts. The tiny random model has no
                            # completion above 0.1, so cpu-tiny keeps greedy sampling.
                            method="sample" if cpu else "dfs", dfs_threshold=0.1,
                            dfs_max_tokens=0 if cpu else 16 * dl.views * 931),
        select=SelectConfig(method="poe", poe_top_c=4 if cpu else 8, poe_views=2 if cpu else 8),
        programs=ProgramsConfig(seconds_per_task=2.0 if cpu else 10.0, workers=1 if cpu else 2),
        budget=BudgetConfig(limit_seconds=dl.limit_seconds, safety_margin_seconds=dl.margin_seconds,
                            final_write_seconds=5.0 if cpu else 30.0),
        throughput=CPU_TINY_THROUGHPUT if cpu else Throughput(),
    )
    return replace(cfg, **paths) if paths else cfg


# Fitted (``measured_throughput``) to two dry runs on the 2-core development machine with nothing else running
# (2026-11-25, grid grammar on): 24-step tasks took 0.46-1.2 s (~17,000 tokens/s plus ~0.3 s per task); the
# Unsloth trainer started in 13.5 s and vLLM in 6.3-7.4 s; the two generate calls produced 86% of the output
# bound at ~2,600 tokens/s after prefill and a 1.5 s per-call overhead (the first call also compiles the grammar);
# scoring ran at ~70,000 planned tokens/s (unanimous tasks need no scoring). A loaded machine is slower in every
# phase: measure yours (``measured_throughput.json``) and pass it back with ``--throughput-file``.
CPU_TINY_THROUGHPUT = Throughput(
    train_tokens_per_s=17000.0, train_step_s=0.01, decode_prompt_tokens_per_s=20000.0,
    decode_output_tokens_per_s=2600.0, decode_output_fill=0.86, score_tokens_per_s=70000.0, train_startup_s=13.5,
    decode_startup_s=6.9, score_startup_s=0.02, per_task_overhead_s=0.06, decode_call_overhead_s=1.5,
)


def budget_overrides(config: RunConfig, budget_seconds: float) -> RunConfig:
    """Shrink the wall-clock limit (dry runs, the public placeholder run), keeping a proportional margin."""
    margin = min(config.budget.safety_margin_seconds, max(5.0, 0.05 * budget_seconds))
    return replace(config, budget=replace(config.budget, limit_seconds=budget_seconds, safety_margin_seconds=margin))
