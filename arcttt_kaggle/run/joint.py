"""The joint test-time stage: before any per-task adapter, the model trains on every test task's demonstrations
together, leave-one-out examples under fresh views each epoch, never a test output.

Why: small models trained from scratch get most of their ARC score this way (mdlARC: the same model trained per
task about 18%, on all tasks jointly 44%; TRM and HRM train on the evaluation tasks' demonstrations; NVARC's TRM
component ran 2-4 h of it on Kaggle's 4xL4; the ARChitects' 2024 TTT was one LoRA over the whole set). A task's
demonstrations are in the challenges file, so this is legal in a Kaggle notebook; the test outputs are not.

How: the pretraining loop itself (``pretrain.loop.train_tasks``, the corpus's per-example views), on the tasks with
their test outputs removed, from the run's model. Full parameters for a small model, one LoRA merged into the
weights for a large one (``mode``). It runs in a child process (``python -m arcttt_kaggle.run.joint SPEC``), so a
crash, a hang or an out-of-memory kill costs the stage, never the run: the parent (``run_joint_stage``) waits
until the stage's deadline, and goes on with, in order, the stage's finished model folder, its last checkpoint
(``checkpoint/`` is a whole model folder, written every ``checkpoint_minutes``) or the base model, and says
which in ``JointOutcome`` (the report's ``joint`` phase and, when it is not the finished folder, its status).
Per-task adapters, every decoder and the scorer then load the folder the stage chose. On several GPUs (``nproc``)
the child is ``torchrun`` over the same module: every rank runs ``train_joint``, whose loop (``train_tasks``) joins
the process group from the environment and trains data parallel exactly as ``pretrain`` does; rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, Sequence

from arcttt_kaggle.arc.candidates import atomic_write_text
from arcttt_kaggle.arc.data import Pair, Task
from .faults import FaultPlan

RESULT = "joint.json"
FAULT_RECORD = "fault.json"  # written by the child just before an injected fault kills it


@dataclass(frozen=True)
class JointConfig:
    """The joint test-time stage. Cost: full mode, 16 bytes/param (weights, gradients, AdamW moments) plus
    activations linear in ``tokens_per_batch``; LoRA mode, the bf16 base plus the adapter's state. Time: ``epochs``
    passes over ``examples_per_task`` sequences of every task, cut at ``budget_share`` of the run's work time."""

    enabled: bool = field(default=False, metadata={"help": "train on every test task's demonstrations together "
                          "before the per-task adapters (presets and a model's run_settings.json decide)"})
    epochs: int = field(default=8, metadata={"help": "passes over the tasks; one pass is examples_per_task "
                        "sequences of each task, each under its own view (2, 4, 8 measured on the validation set: "
                        "more is better there, 8 the most this machine's session afforded)"})
    budget_share: float = field(default=0.25, metadata={"help": "at most this share of the run's work time (the "
                                "stage ends at its deadline, its learning rate decayed by then)"})
    max_minutes: float = field(default=0.0, metadata={"help": "a cap in minutes beside budget_share (0: none)"})
    learning_rate: float = field(default=2.5e-4, metadata={"help": "peak learning rate (warmup, then cosine); "
                                 "near the rate the model's pretraining ended at: 2.5e-4 was chosen on the "
                                 "validation set for the starter model, whose pretraining ended at 1e-4 (1.5e-3 "
                                 "helped it least; benchmarks/ttt_sweep.py, docs/results.md)"})
    warmup: float = field(default=0.05, metadata={"help": "share of the stage spent warming up"})
    mode: Literal["auto", "full", "lora"] = field(default="auto", metadata={"help": "full parameters, one LoRA "
                                                  "merged into the weights, or auto: full up to full_max_params "
                                                  "parameters where they fit the GPU, else LoRA"})
    full_max_params: int = field(default=300_000_000, metadata={"help": "auto mode's limit for full-parameter "
                                 "training (AdamW: 16 bytes/param)"})
    lora_rank: int = field(default=32, metadata={"help": "the LoRA's rank in lora mode"})
    views_per_task: int = field(default=256, metadata={"help": "each task's pool of views (dihedral x colour "
                                "permutation); every example draws one"})
    examples_per_task: int = field(default=16, metadata={"help": "sequences per task per epoch"})
    max_seq_len: int = field(default=2048, metadata={"help": "longest sequence; longer examples lose "
                             "demonstrations (attention memory grows with it)"})
    tokens_per_batch: int = field(default=8192, metadata={"help": "padded tokens per batch (memory is linear in it)"})
    checkpoint_minutes: float = field(default=1.0, metadata={"help": "minutes between checkpoints: what a fault "
                                      "in the stage can lose"})
    startup_seconds: float = field(default=10.0, metadata={"help": "the plan's prior for the child's start (imports, "
                                   "model load, the first epoch's sequences)"})

    def __post_init__(self):
        if self.mode not in ("auto", "full", "lora"):
            raise ValueError(f"joint.mode must be auto, full or lora, got {self.mode!r}")
        if not 0 < self.budget_share < 1:
            raise ValueError(f"joint.budget_share must be in (0, 1), got {self.budget_share}")
        for name in ("epochs", "examples_per_task", "views_per_task", "lora_rank", "full_max_params"):
            if getattr(self, name) < 1:
                raise ValueError(f"joint.{name} must be >= 1, got {getattr(self, name)}")
        if self.tokens_per_batch < self.max_seq_len:
            raise ValueError(f"joint.tokens_per_batch {self.tokens_per_batch} < max_seq_len {self.max_seq_len}")
        if self.learning_rate <= 0 or self.max_minutes < 0 or self.checkpoint_minutes <= 0:
            raise ValueError("joint: learning_rate > 0, max_minutes >= 0, checkpoint_minutes > 0")

    @staticmethod
    def help() -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(JointConfig)}

    def seconds(self, available: float) -> float:
        """The stage's training time out of ``available`` seconds of work time."""
        s = self.budget_share * max(0.0, available)
        return min(s, 60.0 * self.max_minutes) if self.max_minutes else s

    def left_after(self, available: float) -> float:
        """The work time the stage leaves to the workers: ``available`` less its training time and start-up."""
        return max(0.0, available - self.seconds(available) - self.startup_seconds)


def demonstrations_only(tasks: Sequence[Task]) -> list[Task]:
    """The tasks with every test output removed: what the stage may learn from."""
    return [Task(t.id, t.train, tuple(Pair(p.input, None) for p in t.test)) for t in tasks]


def choose_mode(cfg: JointConfig, params: int, gpu_memory_gib: float = 0.0) -> str:
    """``full`` or ``lora``: auto trains whole a model of at most ``full_max_params`` parameters whose weights,
    gradients and AdamW moments (16 bytes/param, 1.5x for activations) fit the GPU (no limit on CPU)."""
    if cfg.mode != "auto":
        return cfg.mode
    fits = gpu_memory_gib <= 0 or 16 * params * 1.5 <= gpu_memory_gib * 2**30
    return "full" if params <= cfg.full_max_params and fits else "lora"


def train_joint(tasks: Sequence[Task], model: str | Path, out: str | Path, cfg: JointConfig, seconds: float, *,
                device: str | None = None, gpu_memory_gib: float = 0.0, seed: int = 0, progress: bool = False,
                stop=None) -> dict:
    """Train ``model`` on the demonstrations of ``tasks`` for ``cfg.epochs`` epochs or ``seconds``, whichever ends
    first, into the model folder ``out``; returns the loop's record with the mode, epochs and tokens planned."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    import torch

    from arcttt_kaggle.engines.format import ArcFormat
    from arcttt_kaggle.pretrain.corpus import CorpusConfig, epoch_sequences
    from arcttt_kaggle.pretrain.distributed import env_rank
    from arcttt_kaggle.pretrain.loop import PretrainConfig, train_tasks

    model, out = Path(model), Path(out)
    demos = [t for t in demonstrations_only(tasks) if t.train]
    if not demos:
        raise ValueError("joint stage: no task has a demonstration")
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
    mode = choose_mode(cfg, params, gpu_memory_gib)
    corpus = CorpusConfig(views_per_task=cfg.views_per_task, examples_per_task=cfg.examples_per_task,
                          tokens_per_batch=cfg.tokens_per_batch, seed=seed)
    fmt = ArcFormat.for_model(AutoTokenizer.from_pretrained(model), model)
    per_epoch = sum(len(ids) for ids, _ in epoch_sequences(demos, fmt, cfg.max_seq_len, 0, corpus))
    pcfg = PretrainConfig(max_seq_len=cfg.max_seq_len, minutes=max(seconds, 1.0) / 60.0,
                          tokens=max(1, cfg.epochs * per_epoch), lr=cfg.learning_rate, warmup=cfg.warmup,
                          checkpoint_minutes=cfg.checkpoint_minutes, log_every=5, seed=seed,
                          lora_rank=cfg.lora_rank if mode == "lora" else 0, corpus=corpus)
    tasks_doc = json.dumps({t.id: t.to_dict() for t in demos}, sort_keys=True)
    rec = train_tasks(demos, out, pcfg, sources={"tasks": hashlib.sha256(tasks_doc.encode()).hexdigest()},
                      init=model, device=device, progress=progress, stop=stop, desc="joint",
                      record={"data": {"tasks": len(demos), "tokens_per_epoch": per_epoch}, "mode": mode,
                              "model_parameters": params})
    if env_rank() == 0:
        copy_model_records(model, out)
    return rec


def copy_model_records(src: Path, dst: Path) -> None:
    """The small files of the source folder that a save does not write (the prepared model's records)."""
    for f in Path(src).iterdir():
        if f.is_file() and not (dst / f.name).exists() and f.suffix not in (".safetensors", ".bin", ".pt"):
            shutil.copyfile(f, dst / f.name)


# -- the child process ------------------------------------------------------------------------------------------
def main(spec_path: str) -> int:
    """The stage's process: trains, then writes ``joint.json`` (atomically) into the output folder. The injected
    fault ``joint-crash@C`` kills it with SIGKILL once it has written C checkpoints (default 1), after recording
    that it struck in ``fault.json`` beside the model folder."""
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    tasks = [Task.from_dict(tid, d) for tid, d in spec["tasks"].items()]
    cfg = JointConfig(**spec["config"])
    faults = FaultPlan.parse(spec.get("fault", ""))
    seen: list[float] = []  # the checkpoint's state.json mtimes: one per checkpoint written

    def stop() -> bool:
        state = out / "checkpoint" / "state.json"
        if "joint-crash" in faults and state.exists():
            mtime = state.stat().st_mtime
            if not seen or seen[-1] != mtime:
                seen.append(mtime)
            if len(seen) >= faults.at("joint-crash"):
                atomic_write_text(out.parent / FAULT_RECORD, json.dumps(
                    [{"fault": "joint-crash", "moment": faults.at("joint-crash"), "time": time.time()}]))
                os.kill(os.getpid(), signal.SIGKILL)
        return time.time() >= spec["deadline"]

    t0 = time.time()
    rec = train_joint(tasks, spec["model"], out, cfg, spec["seconds"], device=spec.get("device"),
                      gpu_memory_gib=spec.get("gpu_memory_gib", 0.0), seed=spec.get("seed", 0), stop=stop)
    summary = {k: rec[k] for k in ("mode", "steps", "tokens_seen", "train_seconds", "final_loss", "parameters",
                                   "world_size")}
    summary.update(epochs=rec["tokens_seen"] / max(1, rec["data"]["tokens_per_epoch"]), wall_seconds=time.time() - t0,
                   views=rec["views"])
    from arcttt_kaggle.pretrain.distributed import env_rank

    if env_rank() == 0:  # under torchrun: rank 0 alone writes
        atomic_write_text(out / RESULT, json.dumps(summary, indent=1))
    return 0


# -- the parent's side --------------------------------------------------------------------------------------------
@dataclass
class JointOutcome:
    """What the stage left: ``model`` is the folder the run goes on with; ``source`` says which it is: ``joint``
    (the finished stage), ``checkpoint`` (its last checkpoint, after a fault) or ``base`` (nothing usable)."""

    model: str
    source: Literal["joint", "checkpoint", "base"]
    predicted_s: float
    measured_s: float = 0.0
    reason: str = ""
    summary: dict = field(default_factory=dict)
    injected: list = field(default_factory=list)  # injected faults that struck the child (``fault.json``)

    def to_dict(self) -> dict:
        return asdict(self)


def run_joint_stage(tasks: Sequence[Task], model: Path, out: Path, cfg: JointConfig, seconds: float, *, env: dict,
                    device: str = "cpu", gpu_memory_gib: float = 0.0, seed: int = 0, fault: str = "",
                    log=print, nproc: int = 1) -> JointOutcome:
    """Run the stage in a child process for ``seconds`` of training (plus its startup), and choose what the run
    goes on with (see the module docstring). Never raises for the stage's own failures. ``nproc`` > 1: the child
    is ``torchrun --standalone --nproc-per-node nproc`` (one rank per device of ``env``'s CUDA_VISIBLE_DEVICES,
    or Gloo processes on CPU)."""
    t0 = time.time()
    predicted = seconds + cfg.startup_seconds
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # The child stops itself at ``deadline`` (between steps, then saves); the parent kills it a grace later.
    deadline = t0 + predicted
    spec = {"tasks": {t.id: t.to_dict() for t in demonstrations_only(tasks)}, "model": str(model), "out": str(out),
            "config": asdict(cfg), "seconds": seconds, "deadline": deadline, "device": device,
            "gpu_memory_gib": gpu_memory_gib, "seed": seed, "fault": fault}
    atomic_write_text(out.parent / "joint_spec.json", json.dumps(spec))
    child = ["-m", "arcttt_kaggle.run.joint", str(out.parent / "joint_spec.json")]
    if nproc > 1:
        child = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *child]
    with open(out.parent / "joint.log", "w") as logf:
        proc = subprocess.Popen([sys.executable, *child], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        grace = max(30.0, 0.25 * predicted)
        try:
            rc = proc.wait(timeout=max(1.0, deadline + grace - time.time()))
            why = f"the joint stage exited with code {rc}" if rc else ""
        except subprocess.TimeoutExpired:
            if nproc > 1:  # torchrun's ranks have sessions of their own: SIGTERM makes it end them first
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            why = f"the joint stage ran {grace:.0f} s past its deadline and was killed"
    measured = time.time() - t0
    record = out.parent / FAULT_RECORD
    injected = json.loads(record.read_text()) if record.exists() else []
    record.unlink(missing_ok=True)
    if not why and (out / RESULT).exists():
        summary = json.loads((out / RESULT).read_text())
        log("joint", f"trained {summary['mode']} on {len(tasks)} tasks: {summary['steps']} steps, "
                     f"{summary['epochs']:.2f} epochs, loss {summary['final_loss']}")
        return JointOutcome(str(out), "joint", predicted, measured, summary=summary, injected=injected)
    why = why or "the joint stage wrote no result"
    tail = [ln for ln in (out.parent / "joint.log").read_text(errors="replace").splitlines()
            if ln.strip("=- ")][-1:] or [""]
    ck = out / "checkpoint"
    if (ck / "state.json").exists() and (ck / "model.safetensors").exists():
        state = json.loads((ck / "state.json").read_text())["state"]
        copy_model_records(model, ck)
        reason = f"{why} ({tail[0][:200]}): the run goes on from its checkpoint at step {state['step']}"
        log("joint", reason)
        return JointOutcome(str(ck), "checkpoint", predicted, measured, reason, {"steps": state["step"]}, injected)
    reason = f"{why} ({tail[0][:200]}) before its first checkpoint: the run goes on from the base model"
    log("joint", reason)
    return JointOutcome(str(model), "base", predicted, measured, reason, injected=injected)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
