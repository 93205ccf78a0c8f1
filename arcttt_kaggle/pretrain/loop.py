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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from arcttt_kaggle.arc.candidates import atomic_write_text
from arcttt_kaggle.engines.format import PROFILE_FILE, PROFILES, ArcFormat

from arcttt_kaggle.arc.data import Task

from .corpus import (Batch, CorpusConfig, EpochViews, Exclusion, apply_exclusion, batch_stream, load_task_files,
                     pairs_too_long)
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
    """The model, its optimizer and one training step; ``pretrain`` drives it over the corpus."""

    def __init__(self, model_dir: Path, cfg: PretrainConfig, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.fmt = ArcFormat.for_model(self.tokenizer, model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(self.device)
        self.model.train()
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        other = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas,
                                     fused=self.device == "cuda")
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device == "cuda"
                         else torch.autocast("cpu", enabled=False))
        self.pad_id = int(self.tokenizer.pad_token_id)

    @property
    def dtype(self) -> str:
        return "bf16 autocast, fp32 weights" if self.device == "cuda" else "fp32"

    def step(self, batch: Batch, lr: float) -> float:
        """One optimizer step on ``batch``; returns the mean loss per labelled token (NaN steps are skipped)."""
        import torch

        ids = torch.from_numpy(batch.input_ids).to(self.device)
        labels = torch.from_numpy(batch.labels).to(self.device)
        mask = torch.from_numpy(batch.attention_mask).to(self.device)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with self.autocast:
            loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if not torch.isfinite(loss):
            self.opt.zero_grad(set_to_none=True)
            return float("nan")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def save_model(self, out_dir: Path, src_dir: Path) -> None:
        """Weights and tokenizer into ``out_dir``, with the folder's profile/shape records copied from ``src_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        for name in (PROFILE_FILE, "arc_model.json"):
            if (src_dir / name).exists() and src_dir.resolve() != out_dir.resolve():
                shutil.copyfile(src_dir / name, out_dir / name)


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
    """Replace ``out/checkpoint`` atomically: written beside it, then renamed over it."""
    import torch

    tmp = out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(tmp, src)
    torch.save(trainer.opt.state_dict(), tmp / "optimizer.pt")
    atomic_write_text(tmp / "state.json", json.dumps({"state": asdict(state), "config": _config_doc(cfg),
                                                       "sources": sources}))
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out / CHECKPOINT).exists():
        os.replace(out / CHECKPOINT, old)
    os.replace(tmp, out / CHECKPOINT)
    shutil.rmtree(old, ignore_errors=True)


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
             progress: bool = True, device: str | None = None) -> dict:
    """Train on the tasks of ``data`` (Kaggle ``*_challenges.json``, solutions read from beside them) minus
    ``exclude``, from a new ``cfg.shape`` model, from the model folder ``init``, or from ``out_dir/checkpoint``
    (``resume``: the same data files (by SHA-256), exclusions, init, config and budget, continued where the
    checkpoint left off; anything else is refused by name). Writes the model folder ``out_dir`` with
    ``pretrain.json`` and ``loss.png``; returns the record."""
    exclusion = Exclusion.from_files(exclude)
    tasks, stats = apply_exclusion(load_task_files(data), exclusion, data)
    if not tasks:
        raise ValueError(f"pretrain: no task left to train on ({stats.as_dict()})")
    sources = {"data": [file_digest(f) for f in data], "exclude": [file_digest(f) for f in exclude],
               "init": str(init) if init is not None else None}
    return train_tasks(tasks, out_dir, cfg, sources=sources, init=init, resume=resume, progress=progress,
                       device=device, excluded_pairs=exclusion.pairs,
                       record={"data": stats.as_dict(), "exclude": [str(e) for e in exclude]})


def train_tasks(tasks: Sequence[Task], out_dir: str | Path, cfg: PretrainConfig, *, sources: dict,
                init: str | Path | None = None, resume: bool = False, progress: bool = True,
                device: str | None = None, excluded_pairs: frozenset = frozenset(), record: dict | None = None,
                stop: Callable[[], bool] | None = None, desc: str = "pretrain") -> dict:
    """The training loop of ``pretrain`` over tasks already loaded (the joint test-time stage calls it on the test
    tasks' demonstrations). ``sources``: what the checkpoint must match on resume; ``record``: extra keys of
    ``pretrain.json``; ``stop()``: checked between steps, True ends the run early (its progress so far kept)."""
    import torch
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = RunState()
    if resume:
        ck = out / CHECKPOINT
        if not (ck / "state.json").exists():
            raise FileNotFoundError(f"pretrain --resume: no checkpoint in {ck}")
        saved = json.loads((ck / "state.json").read_text())
        if saved["config"] != _config_doc(cfg):
            raise ValueError(f"pretrain --resume: the checkpoint was made with another config: {saved['config']}")
        _check_sources(saved.get("sources", {}), sources)
        state = RunState(**saved["state"])
        src = ck
    elif init is not None:
        src = Path(init)
        if not (src / "config.json").exists():
            raise FileNotFoundError(f"pretrain --init: {src} is not a model folder (no config.json)")
    else:
        torch.manual_seed(cfg.seed)
        src = build_arc_model(out / ".init", cfg.shape, cfg.profile, cfg.seed)
    torch.manual_seed(cfg.seed + state.step)
    trainer = Pretrainer(src, cfg, device)
    if resume:
        trainer.opt.load_state_dict(torch.load(src / "optimizer.pt", map_location=trainer.device))
    views = EpochViews()
    stream = batch_stream(tasks, trainer.fmt, cfg.max_seq_len, trainer.pad_id, cfg.corpus, state.epoch,
                          state.batch_in_epoch, excluded_pairs, views)
    bar = tqdm(total=cfg.tokens or None, initial=state.tokens, unit="tok", unit_scale=True, disable=not progress,
               desc=desc, dynamic_ncols=True, mininterval=2.0)
    last_ck = time.monotonic()
    window: list[float] = []
    t_start = time.monotonic() - state.seconds
    while cfg.progress(state.tokens, state.seconds) < 1.0 and not (stop is not None and stop()):
        epoch, j, batch = next(stream)
        lr = cfg.lr_at(cfg.progress(state.tokens, state.seconds))
        loss = trainer.step(batch, lr)
        state.step += 1
        state.tokens += batch.tokens
        state.epoch, state.batch_in_epoch = epoch, j + 1
        state.seconds = time.monotonic() - t_start
        if math.isfinite(loss):
            window.append(loss)
        if state.step % cfg.log_every == 0 and window:
            state.curve.append([state.step, state.tokens, round(state.seconds, 2), sum(window) / len(window), lr])
            window = []
        bar.update(batch.tokens)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{state.tokens / max(state.seconds, 1e-9):.0f}", epoch=epoch,
                        refresh=False)
        if time.monotonic() - last_ck > 60 * cfg.checkpoint_minutes:
            paused = time.monotonic()
            _write_checkpoint(trainer, out, src, state, cfg, sources)
            last_ck = time.monotonic()
            t_start += last_ck - paused  # checkpoint time is not training time
    bar.close()
    if window:
        state.curve.append([state.step, state.tokens, round(state.seconds, 2), sum(window) / len(window),
                            cfg.lr_at(1.0)])
    _write_checkpoint(trainer, out, src, state, cfg, sources)
    trainer.save_model(out, src)
    shutil.rmtree(out / ".init", ignore_errors=True)
    tail = [c[3] for c in state.curve[-5:]]
    extra = dict(record or {})
    data_doc = extra.pop("data", {})
    rec = {
        "config": _config_doc(cfg), "device": trainer.device, "dtype": trainer.dtype,
        "profile": trainer.fmt.profile, "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "init": str(init) if init else ("resume" if resume else f"new {cfg.shape}"),
        "data": {**data_doc, "pairs_too_long": pairs_too_long(tasks, trainer.fmt, cfg.max_seq_len)},
        **extra, "sources": sources,
        # Counted over the epochs this process built (a resumed run: from its resume on).
        "views": {"views_per_task": cfg.corpus.views_per_task, **views.as_dict()},
        "steps": state.step, "tokens_seen": state.tokens, "epoch": state.epoch,
        "train_seconds": round(state.seconds, 1), "tokens_per_second": round(state.tokens / max(state.seconds, 1e-9), 1),
        "final_loss": sum(tail) / len(tail) if tail else None, "curve": state.curve,
    }
    atomic_write_text(out / RECORD, json.dumps(rec, indent=1))
    plot_loss(state.curve, out / "loss.png", f"{rec['init']}, {rec['parameters'] / 1e6:.1f}M params")
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

