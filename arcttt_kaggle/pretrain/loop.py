"""Full-parameter pretraining of an ARC model: AdamW, warmup + cosine, a time or token budget, atomic
checkpoints, resume, and a record of the run (``pretrain.json``, ``loss.png``).

    from arcttt_kaggle.pretrain.loop import PretrainConfig, pretrain
    pretrain(["../shared/data/arc-agi-1/arc-agi_training_challenges.json"], "out/arc-model",
             PretrainConfig(minutes=1), exclude=["../shared/data/arc-agi-1/arc-agi_evaluation_challenges.json"])

The learning rate follows the run's progress, ``max(tokens seen / token budget, time spent / time budget)``: a
time-budgeted run still warms up, decays and ends at ``min_lr`` exactly when its minutes end, whatever the
machine's speed. The output folder is a model folder (config, weights, tokenizer, ``arc_format.json``) that every
engine of the kit loads; ``checkpoint/`` inside it holds what ``resume`` needs (weights, optimizer moments, the
data position), replaced atomically every ``checkpoint_minutes``.

Precision: fp32 on CPU; on a GPU, bf16 autocast over fp32 weights and optimizer state (no loss scaling needed).

Under ``torchrun`` the same loop trains data parallel (``distributed``: DDP, or FSDP2 with ``fsdp``), the same run
at any world size: the global batches, their order and the loss normalisation (by the global count of labelled
tokens) do not depend on it; rank 0 alone writes, every rank reads a checkpoint on resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from arcttt_kaggle.arc.candidates import atomic_write_text
from arcttt_kaggle.engines.format import IGNORE_INDEX, PROFILE_FILE, PROFILES, ArcFormat

from arcttt_kaggle.arc.data import Task

from .corpus import (Batch, CorpusConfig, EpochViews, Exclusion, apply_exclusion, batch_stream, load_task_files,
                     pairs_too_long)
from .distributed import (Dist, Faults, full_model_state, full_optimizer_state, labelled_tokens,
                          load_full_optimizer_state, rank_batch, setup, wrap)
from .shapes import SHAPES, build_arc_model

CHECKPOINT = "checkpoint"
RECORD = "pretrain.json"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", PROFILE_FILE, "arc_model.json")


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. Memory: weights + grads + two AdamW moments = 16 bytes/param (arc-tiny: 50 MB),
    plus activations linear in ``corpus.tokens_per_batch``; time: ~6 x params FLOPs per token plus attention."""

    shape: str = field(default="arc-tiny", metadata={"help": f"model shape from scratch, one of {sorted(SHAPES)}"})
    profile: str = field(default="kit", metadata={"help": f"format profile of a new model, one of {PROFILES}"})
    max_seq_len: int = field(default=2048, metadata={"help": "longest training sequence (tokens); longer "
                             "examples lose demonstrations, then are dropped. Attention cost grows with it"})
    minutes: float = field(default=0.0, metadata={"help": "training time budget (0: none); checkpoints and the "
                           "final save are outside it"})
    tokens: int = field(default=0, metadata={"help": "token budget (0: none); at least one budget must be set"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final learning rate / peak"})
    warmup: float = field(default=0.03, metadata={"help": "share of the budget spent warming up linearly"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW decay on matrices (not norms or biases)"})
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip"})
    checkpoint_minutes: float = field(default=5.0, metadata={"help": "minutes between atomic checkpoints"})
    log_every: int = field(default=10, metadata={"help": "steps between loss-curve points"})
    seed: int = field(default=0, metadata={"help": "weight and data seed"})
    lora_rank: int = field(default=0, metadata={"help": "0: full parameters (16 bytes/param with AdamW); > 0: one "
                           "LoRA of this rank on every linear layer, the base frozen (bf16 on a GPU), merged into the "
                           "weights whenever the folder is saved (for models too large to train whole)"})
    corpus: CorpusConfig = field(default_factory=CorpusConfig, metadata={"help": "how sequences are drawn"})

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"pretrain: unknown shape {self.shape!r}; choose one of {sorted(SHAPES)}")
        if self.profile not in PROFILES:
            raise ValueError(f"pretrain: unknown profile {self.profile!r}; choose one of {PROFILES}")
        if self.minutes < 0 or self.tokens < 0 or (self.minutes == 0 and self.tokens == 0):
            raise ValueError("pretrain: set a budget, --minutes N or --tokens N (both >= 0, not both 0)")
        if not 64 <= self.max_seq_len <= 32768:
            raise ValueError(f"pretrain: max_seq_len {self.max_seq_len} outside 64..32768")
        if self.corpus.tokens_per_batch < self.max_seq_len:
            raise ValueError(f"pretrain: tokens_per_batch {self.corpus.tokens_per_batch} < max_seq_len "
                             f"{self.max_seq_len}: the longest sequence would not fit a batch")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and 0 <= self.warmup < 1 and self.grad_clip > 0):
            raise ValueError("pretrain: lr > 0, 0 <= min_lr_ratio <= 1, 0 <= warmup < 1, grad_clip > 0")
        if self.checkpoint_minutes <= 0 or self.log_every < 1:
            raise ValueError("pretrain: checkpoint_minutes > 0 and log_every >= 1")
        if self.lora_rank < 0:
            raise ValueError(f"pretrain: lora_rank must be >= 0 (0: full parameters), got {self.lora_rank}")

    def progress(self, tokens: int, seconds: float) -> float:
        """How far through its budget the run is, 0..1 (the larger of the token and the time share)."""
        p = 0.0
        if self.tokens:
            p = max(p, tokens / self.tokens)
        if self.minutes:
            p = max(p, seconds / (60.0 * self.minutes))
        return min(1.0, p)

    def lr_at(self, progress: float) -> float:
        """Linear warmup over ``warmup``, then cosine from ``lr`` to ``lr * min_lr_ratio`` at progress 1."""
        if self.warmup and progress < self.warmup:
            return self.lr * max(progress / self.warmup, 1e-3)
        t = (progress - self.warmup) / max(1e-9, 1 - self.warmup)
        low = self.lr * self.min_lr_ratio
        return low + (self.lr - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class Pretrainer:
    """The model, its optimizer and one training step; ``pretrain`` drives it over the corpus. ``dist``: this
    process's rank in a torchrun job (the model wrapped in DDP, or sharded with FSDP2 when ``fsdp``); ``device``
    is then ``dist.device``."""

    def __init__(self, model_dir: Path, cfg: PretrainConfig, device: str | None = None, *, dist: Dist | None = None,
                 fsdp: bool = False, gradient_checkpointing: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.dist = dist or Dist(device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = self.dist.device
        self.on_cuda = torch.device(self.device).type == "cuda"
        self.fsdp = fsdp and self.dist.active
        self.gradient_checkpointing = gradient_checkpointing
        if self.fsdp and cfg.lora_rank:
            raise ValueError("pretrain: --fsdp shards full-parameter training; a LoRA run (lora_rank > 0) uses DDP")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.fmt = ArcFormat.for_model(self.tokenizer, model_dir)
        base_dtype = torch.bfloat16 if cfg.lora_rank and self.on_cuda else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=base_dtype)
        if not self.fsdp:  # FSDP2 moves each shard to the device itself: no rank holds the whole model there
            self.model = self.model.to(self.device)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora_rank:
            from peft import LoraConfig, get_peft_model

            self.model = get_peft_model(self.model, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank,
                                                               lora_dropout=0.0, target_modules="all-linear"))
        self.model.train()
        self.engine = wrap(self.model, self.dist, self.fsdp)  # what the step runs: the model, DDP or FSDP2
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [(n, p) for n, p in params if p.ndim >= 2]
        other = [(n, p) for n, p in params if p.ndim < 2]
        self.param_names = [n for n, _ in decay + other]  # the optimizer's parameter order (its state's indices)
        self.opt = torch.optim.AdamW([{"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
                                      {"params": [p for _, p in other], "weight_decay": 0.0}], lr=cfg.lr,
                                     betas=cfg.betas, fused=self.on_cuda and not self.fsdp)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.on_cuda
                         else torch.autocast("cpu", enabled=False))
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.poison = False  # the fault hook nan-at-step-S: this rank's loss of the next step is NaN
        self.last_local: Batch | None = None  # this rank's slice of the last step's batch

    @property
    def dtype(self) -> str:
        if self.cfg.lora_rank:
            return f"LoRA rank {self.cfg.lora_rank} over {'bf16' if self.on_cuda else 'fp32'} weights"
        return "bf16 autocast, fp32 weights" if self.on_cuda else "fp32"

    def step(self, batch: Batch, lr: float) -> float:
        """One optimizer step on the global ``batch`` (this rank trains on its rows ``rank::world``); returns the
        mean loss per labelled token of the whole batch, the same on every rank (NaN steps are skipped by all).
        Each rank's loss is its summed token losses over the GLOBAL labelled-token count, times the world size,
        which the gradient average divides out: the single-process gradient of the whole batch."""
        import torch
        import torch.nn.functional as F

        n = labelled_tokens(batch)
        local = self.last_local = rank_batch(batch, self.dist.rank, self.dist.world, self.pad_id)
        ids = torch.from_numpy(local.input_ids).to(self.device)
        labels = torch.from_numpy(local.labels).to(self.device)
        mask = torch.from_numpy(local.attention_mask).to(self.device)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with self.autocast:
            logits = self.engine(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum") / max(n, 1)
        if self.poison:
            loss = loss * float("nan")
        total = self.dist.all_sum(loss.detach().clone())  # the whole batch's mean loss, on every rank
        if n == 0 or not torch.isfinite(total):
            self.opt.zero_grad(set_to_none=True)
            return float("nan")
        (loss * self.dist.world).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(total)

    def save_model(self, out_dir: Path, src_dir: Path) -> None:
        """Weights and tokenizer into ``out_dir``, with the folder's profile/shape records copied from ``src_dir``.
        Every rank calls it (FSDP gathers the shards, a LoRA merges on every rank); rank 0 alone writes."""
        main = self.dist.is_main
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.lora_rank:
            self._save_merged(out_dir)
        else:
            state = full_model_state(self.model) if self.fsdp else None
            if main:
                self.model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        if not main:
            return
        self.tokenizer.save_pretrained(out_dir)
        for name in (PROFILE_FILE, "arc_model.json"):
            if (src_dir / name).exists() and src_dir.resolve() != out_dir.resolve():
                shutil.copyfile(src_dir / name, out_dir / name)

    def optimizer_state(self) -> dict | None:
        """The optimizer's state as one process's ``state_dict()`` (FSDP: gathered, a collective); None on the
        ranks that do not write."""
        if self.fsdp:
            return full_optimizer_state(self.model, self.opt, self.param_names) or None
        return self.opt.state_dict() if self.dist.is_main else None

    def load_optimizer(self, path: Path) -> None:
        """Every rank loads the checkpoint's optimizer state (written at any world size)."""
        import torch

        state = torch.load(path, map_location="cpu" if self.fsdp else self.device)
        if self.fsdp:
            load_full_optimizer_state(self.model, self.opt, state, self.param_names)
        else:
            self.opt.load_state_dict(state)

    def _save_merged(self, out_dir: Path) -> None:
        """The base model with the LoRA merged into its weights (a plain model folder every engine loads); the
        adapter is unmerged afterwards, so training goes on. Every rank merges and unmerges (the same rounding
        everywhere keeps the frozen base identical across ranks); rank 0 writes."""
        import torch

        self.model.merge_adapter()
        try:
            if self.dist.is_main:
                base = self.model.get_base_model()
                state = {k.replace(".base_layer.", "."): v.detach().to(v.dtype if self.on_cuda else torch.float32)
                         for k, v in base.state_dict().items() if ".lora_" not in k}
                base.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        finally:
            self.model.unmerge_adapter()


@dataclass
class RunState:
    """Where a run stands: what ``resume`` restores."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training time spent (checkpoint writes excluded)
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already trained on
    curve: list = field(default_factory=list)  # [step, tokens, seconds, mean loss since the last point, lr]


def _write_checkpoint(trainer: Pretrainer, out: Path, src: Path, state: RunState, cfg: PretrainConfig,
                      sources: dict) -> None:
    """Replace ``out/checkpoint`` atomically: written beside it, then renamed over it. Every rank calls it (FSDP
    gathers); rank 0 alone writes, full weights and a plain optimizer state whatever the world size."""
    import torch

    tmp = out / f".{CHECKPOINT}.tmp"
    if trainer.dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(tmp, src)
    opt_state = trainer.optimizer_state()
    if not trainer.dist.is_main:
        return
    torch.save(opt_state, tmp / "optimizer.pt")
    atomic_write_text(tmp / "state.json", json.dumps({"state": asdict(state), "config": _config_doc(cfg),
                                                       "sources": sources}))
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out / CHECKPOINT).exists():
        os.replace(out / CHECKPOINT, old)
    os.replace(tmp, out / CHECKPOINT)
    shutil.rmtree(old, ignore_errors=True)


def _recover_checkpoint(out: Path) -> None:
    """A process killed between the two renames of ``_write_checkpoint`` leaves no ``checkpoint/``: the complete
    new one (``.checkpoint.tmp`` with its state.json, written last) or else the previous one takes its place."""
    ck, tmp, old = out / CHECKPOINT, out / f".{CHECKPOINT}.tmp", out / f".{CHECKPOINT}.old"
    if ck.exists():
        return
    for cand in (tmp, old):
        if (cand / "state.json").exists():
            os.replace(cand, ck)
            return


def _config_doc(cfg: PretrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def file_digest(path: str | Path) -> dict:
    """A data file as a resume checks it: its path and the SHA-256 of its bytes."""
    return {"path": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def _check_sources(saved: dict, sources: dict) -> None:
    """Refuse a resume whose data, exclusions or init differ from the checkpoint's, naming what differs."""
    for key in sorted(set(saved) | set(sources)):
        was, now = saved.get(key), sources.get(key)
        if was != now:
            raise ValueError(f"pretrain --resume: {key} differs from the checkpoint's: it was trained with {was}, "
                             f"this run gives {now}; resume with the same arguments or start a new --out")


def pretrain(data: Sequence[str | Path], out_dir: str | Path, cfg: PretrainConfig, *,
             exclude: Sequence[str | Path] = (), init: str | Path | None = None, resume: bool = False,
             progress: bool = True, device: str | None = None, fsdp: bool = False,
             gradient_checkpointing: bool = False) -> dict:
    """Train on the tasks of ``data`` (Kaggle ``*_challenges.json``, solutions read from beside them) minus
    ``exclude``, from a new ``cfg.shape`` model, from the model folder ``init``, or from ``out_dir/checkpoint``
    (``resume``: the same data files (by SHA-256), exclusions, init, config and budget, continued where the
    checkpoint left off; anything else is refused by name). Writes the model folder ``out_dir`` with
    ``pretrain.json`` and ``loss.png``; returns the record. Under torchrun every rank calls it (see ``train_tasks``)."""
    exclusion = Exclusion.from_files(exclude)
    tasks, stats = apply_exclusion(load_task_files(data), exclusion, data)
    if not tasks:
        raise ValueError(f"pretrain: no task left to train on ({stats.as_dict()})")
    sources = {"data": [file_digest(f) for f in data], "exclude": [file_digest(f) for f in exclude],
               "init": str(init) if init is not None else None}
    record = {"data": stats.as_dict(), "exclude": [str(e) for e in exclude]}
    lineage = init_lineage(init)
    if lineage is not None:
        record["init_record"] = lineage
    return train_tasks(tasks, out_dir, cfg, sources=sources, init=init, resume=resume, progress=progress,
                       device=device, excluded_pairs=exclusion.pairs, fsdp=fsdp,
                       gradient_checkpointing=gradient_checkpointing, record=record)


LINEAGE_KEYS = ("init", "data", "exclude", "sources", "epoch", "tokens_seen", "init_record")


def init_lineage(init: str | Path | None) -> dict | None:
    """What the ``init`` model folder was trained on (its ``pretrain.json``: data files, exclusions, corpus config,
    epochs, and its own ``init_record``), so a continued model's record names everything it has seen, even after
    the init folder is gone: ``benchmarks/ablation.py``'s held-out check walks the chain. None for a new model or
    an init without a record."""
    path = Path(init) / RECORD if init is not None else None
    if path is None or not path.exists():
        return None
    rec = json.loads(path.read_text())
    doc = {k: rec[k] for k in LINEAGE_KEYS if k in rec}
    doc["config"] = {"corpus": rec.get("config", {}).get("corpus", {})}
    return doc


def train_tasks(tasks: Sequence[Task], out_dir: str | Path, cfg: PretrainConfig, *, sources: dict,
                init: str | Path | None = None, resume: bool = False, progress: bool = True,
                device: str | None = None, excluded_pairs: frozenset = frozenset(), record: dict | None = None,
                stop: Callable[[], bool] | None = None, desc: str = "pretrain", fsdp: bool = False,
                gradient_checkpointing: bool = False) -> dict:
    """The training loop of ``pretrain`` over tasks already loaded (the joint test-time stage calls it on the test
    tasks' demonstrations). ``sources``: what the checkpoint must match on resume; ``record``: extra keys of
    ``pretrain.json``; ``stop()``: checked between steps, True ends the run early (its progress so far kept).

    Under torchrun (``WORLD_SIZE`` in the environment) it joins the process group (``distributed.setup``: NCCL
    on ``cuda:LOCAL_RANK``, Gloo on CPU), trains data parallel (``fsdp``: FSDP2-sharded) and leaves the group
    on return; rank 0 alone writes; the time budget, ``stop()`` and checkpoint times are rank 0's, broadcast."""
    d = setup(device)
    try:
        rec = _train(d, tasks, Path(out_dir), cfg, sources=sources, init=init, resume=resume, progress=progress,
                     excluded_pairs=excluded_pairs, record=record, stop=stop, desc=desc, fsdp=fsdp,
                     gradient_checkpointing=gradient_checkpointing)
    except Exception as e:
        # The group is left as it is (destroying it while a peer is gone can hang): this process is ending.
        if d.active:  # the agent names the rank that died first; this names the survivor and what is left
            print(f"pretrain: rank {d.rank} of {d.world} stops: {type(e).__name__}: {str(e)[:300]} (the last "
                  f"checkpoint, {Path(out_dir) / CHECKPOINT}, resumes with --resume at any world size)",
                  file=sys.stderr, flush=True)
        raise
    d.close()
    return rec


def _train(d: Dist, tasks: Sequence[Task], out: Path, cfg: PretrainConfig, *, sources: dict, init, resume: bool,
           progress: bool, excluded_pairs: frozenset, record: dict | None, stop, desc: str, fsdp: bool,
           gradient_checkpointing: bool) -> dict:
    import torch
    from tqdm import tqdm

    faults = Faults.from_env()
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    state = RunState()
    if resume:
        ck = out / CHECKPOINT
        if d.is_main:
            _recover_checkpoint(out)
        d.barrier()
        if not (ck / "state.json").exists():
            raise FileNotFoundError(f"pretrain --resume: no checkpoint in {ck}")
        saved = json.loads((ck / "state.json").read_text())
        if saved["config"] != _config_doc(cfg):
            raise ValueError(f"pretrain --resume: the checkpoint was made with another config: {saved['config']}")
        _check_sources(saved.get("sources", {}), sources)
        if cfg.lora_rank:
            raise ValueError("pretrain --resume: a LoRA run's checkpoint holds merged weights, not its adapter; "
                             "resume is for full-parameter runs")
        state = RunState(**saved["state"])
        src = ck
    elif init is not None:
        src = Path(init)
        if not (src / "config.json").exists():
            raise FileNotFoundError(f"pretrain --init: {src} is not a model folder (no config.json)")
    else:
        src = out / ".init"
        if d.is_main:
            torch.manual_seed(cfg.seed)
            build_arc_model(src, cfg.shape, cfg.profile, cfg.seed)
        d.barrier()
    torch.manual_seed(cfg.seed + state.step)
    trainer = Pretrainer(src, cfg, d.device, dist=d, fsdp=fsdp, gradient_checkpointing=gradient_checkpointing)
    if resume:
        trainer.load_optimizer(src / "optimizer.pt")
    d.barrier()  # every rank has read its start before rank 0 may replace a checkpoint
    views = EpochViews()
    stream = batch_stream(tasks, trainer.fmt, cfg.max_seq_len, trainer.pad_id, cfg.corpus, state.epoch,
                          state.batch_in_epoch, excluded_pairs, views)
    bar = tqdm(total=cfg.tokens or None, initial=state.tokens, unit="tok", unit_scale=True,
               disable=not (progress and d.is_main), desc=desc, dynamic_ncols=True, mininterval=2.0)
    last_ck, last_ck_step = time.monotonic(), state.step
    window: list[float] = []
    skipped = 0  # steps whose loss was not finite (skipped by every rank)
    sizes = np.zeros(5)  # this process: steps, global rows, global real tokens, this rank's rows, its real tokens
    t_start = time.monotonic() - state.seconds
    while True:
        # Rank 0's clock and stop() decide for every rank (one broadcast per step): the same lr, the same end.
        now = time.monotonic()
        seconds, ck_due, halt = d.broadcast([now - t_start, now - last_ck > 60 * cfg.checkpoint_minutes,
                                             bool(stop is not None and stop())])
        state.seconds = seconds
        if halt or cfg.progress(state.tokens, state.seconds) >= 1.0:
            break
        if ck_due and state.step > last_ck_step:
            paused = time.monotonic()
            _write_checkpoint(trainer, out, src, state, cfg, sources)
            last_ck, last_ck_step = time.monotonic(), state.step
            t_start += last_ck - paused  # checkpoint time is not training time
        epoch, j, batch = next(stream)
        lr = cfg.lr_at(cfg.progress(state.tokens, state.seconds))
        trainer.poison = faults.nan_now(d, state.step + 1)
        loss = trainer.step(batch, lr)
        local = trainer.last_local
        sizes += (1, len(batch.input_ids), batch.tokens, len(local.input_ids) if local.tokens else 0, local.tokens)
        state.step += 1
        state.tokens += batch.tokens
        state.epoch, state.batch_in_epoch = epoch, j + 1
        state.seconds = time.monotonic() - t_start
        if math.isfinite(loss):
            window.append(loss)
        else:
            skipped += 1
        if state.step % cfg.log_every == 0 and window:
            state.curve.append([state.step, state.tokens, round(state.seconds, 2), sum(window) / len(window), lr])
            window = []
        bar.update(batch.tokens)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{state.tokens / max(state.seconds, 1e-9):.0f}", epoch=epoch,
                        refresh=False)
        faults.after_step(d, state.step)
    bar.close()
    per_rank = d.gather([sizes[3], sizes[4]])
    if window:
        state.curve.append([state.step, state.tokens, round(state.seconds, 2), sum(window) / len(window),
                            cfg.lr_at(1.0)])
    _write_checkpoint(trainer, out, src, state, cfg, sources)
    trainer.save_model(out, src)
    tail = [c[3] for c in state.curve[-5:]]
    extra = dict(record or {})
    data_doc = extra.pop("data", {})
    tok_s = state.tokens / max(state.seconds, 1e-9)
    n_here = max(1.0, sizes[0])
    rec = {
        "config": _config_doc(cfg), "device": trainer.device, "dtype": trainer.dtype,
        "profile": trainer.fmt.profile, "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "init": str(init) if init else ("resume" if resume else f"new {cfg.shape}"),
        "data": {**data_doc, "pairs_too_long": pairs_too_long(tasks, trainer.fmt, cfg.max_seq_len)},
        **extra, "sources": sources,
        # Counted over the epochs this process built (a resumed run: from its resume on).
        "views": {"views_per_task": cfg.corpus.views_per_task, **views.as_dict()},
        "steps": state.step, "tokens_seen": state.tokens, "epoch": state.epoch,
        "train_seconds": round(state.seconds, 1), "tokens_per_second": round(tok_s, 1),
        "skipped_steps": skipped,  # non-finite losses, in this process (a resumed run: from its resume on)
        "world_size": d.world,
        "distributed": {
            **d.as_dict(), "fsdp": trainer.fsdp, "gradient_checkpointing": trainer.gradient_checkpointing,
            "tokens_per_second": round(tok_s, 1), "tokens_per_second_per_rank": round(tok_s / d.world, 1),
            # Means over this process's steps (a resumed run: from its resume on); real (unpadded) tokens.
            "global_batch": {"padded_tokens_at_most": cfg.corpus.tokens_per_batch,
                             "rows": round(sizes[1] / n_here, 2), "tokens": round(sizes[2] / n_here, 1)},
            "per_rank_batch": [{"rank": r, "rows": round(rows / n_here, 2), "tokens": round(tok / n_here, 1)}
                               for r, (rows, tok) in enumerate(per_rank)],
        },
        "final_loss": sum(tail) / len(tail) if tail else None, "curve": state.curve,
    }
    if d.is_main:
        shutil.rmtree(out / ".init", ignore_errors=True)
        atomic_write_text(out / RECORD, json.dumps(rec, indent=1))
        plot_loss(state.curve, out / "loss.png", f"{rec['init']}, {rec['parameters'] / 1e6:.1f}M params")
    d.barrier()  # the folder is complete when any rank returns
    return rec


def plot_loss(curve: list, path: Path, title: str) -> None:
    """Loss per labelled token against tokens seen (written atomically)."""
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c[1] / 1e6 for c in curve], [c[3] for c in curve])
    ax.set_xlabel("tokens seen (M)")
    ax.set_ylabel("loss per output token (nats)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)

