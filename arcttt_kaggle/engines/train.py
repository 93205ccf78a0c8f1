"""Per-task test-time training (TTT): one LoRA adapter per task on a frozen (4-bit) base, saved for vLLM.

One ``Trainer`` loads the base model ONCE; each ``train_task`` re-initializes the LoRA weights in place from a
seed (``reset_adapter``), trains, and saves a PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) that vLLM's ``LoRARequest`` serves next to the base. Reloading an 8B base per
task would cost ~30-60 s of disk and quantization each time; resetting ~0.1-1% of the parameters costs
milliseconds, and a fresh Trainer with the same seed gives the same adapter (tested).

Two backends run the SAME loop (tokenized ``Encoded`` examples -> padded batches -> loss on the labels ->
AdamW with linear warmup/decay -> gradient accumulation -> clipping); only loading and the loss call differ
(``Trainer._loss``):

- ``"unsloth"``: ``FastLanguageModel.from_pretrained`` + ``get_peft_model`` (fast kernels and offloaded
  gradient checkpointing on GPU; on a CPU-only host Unsloth falls back to stock transformers + PEFT with its own
  dtype choice, bfloat16 where the CPU has it). Unsloth patches transformers and PEFT when it is imported, so
  it must be imported before them: ``_load_unsloth`` imports it first thing, nothing in this package imports
  transformers at import time, and a worker process that trains should build its ``Trainer`` before touching
  transformers (a warning says when that order was broken).
- ``"peft"``: plain transformers + bitsandbytes + PEFT, the fallback where Unsloth is absent.

The backend is chosen by the config, never by swallowing an import error. LoRA goes on the attention and MLP
projections by default; ``embed_tokens`` / ``lm_head`` may be added (NVARC trains them) where transformers
decodes and scores: vLLM cannot serve LoRA on them, so ``RunConfig`` refuses that pair with ``decode.backend=
"vllm"`` and the vLLM decoder refuses such an adapter by name.

Cost of the knobs (an 8B Llama at 8192 tokens on a 24 GB GPU as the yardstick):

- ``load_in_4bit``: base weights at ~0.56 byte/param (NF4 + double-quantized scales) instead of 2 (16-bit):
  8B -> ~5 GB instead of 16 GB; every matmul dequantizes, ~10-30% slower per step than 16-bit.
- ``lora_rank`` r: trainable params = r * sum(d_in + d_out) over the target matrices, ~2.6M * r for an 8B
  Llama (r=32: 84M); fp32 weights + grads + two AdamW moments = 16 bytes each (r=32: ~1.3 GB). Compute is a
  few % of the base matmuls at any sensible r.
- ``batch_size``: activation memory grows linearly with batch * sequence length; ``grad_accum`` multiplies
  the effective batch at no memory cost, time linear in it.
- ``max_seq_len``: activations linear in length with SDPA/flash attention; examples longer are skipped. Full
  logits would be seq * vocab floats (8192 * 152k * 4 bytes = 5 GB for Qwen2.5): Unsloth's chunked loss avoids
  them, and the peft backend's ``label_row_loss`` runs the head only on label rows, 1024 at a time.
- ``gradient_checkpointing``: keeps one activation per layer and recomputes the rest in backward, ~30% more
  time for ~5-10x less activation memory (Unsloth's mode also offloads them to host RAM on GPU).

Failures: a non-finite step is skipped and counted; a non-finite loss or saved weight means no adapter (decode
with the base); an exception in a step is re-raised after ``recover()``. Adapters are saved in the compute dtype
(16-bit on GPU: half of fp32's bytes) into a temporary folder renamed into place: never a partial adapter.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from .format import IGNORE_INDEX, ArcFormat, Encoded

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ADAPTER = "default"  # the PEFT adapter name: one adapter, re-initialized per task
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterSaveError(RuntimeError):
    """Writing a task's adapter failed (e.g. ENOSPC); the partial folder was removed, nothing was kept."""


@dataclass(frozen=True)
class TrainConfig:
    """How to load the base and train one LoRA adapter per task (or one shared adapter)."""

    backend: Literal["unsloth", "peft"] = field(default="unsloth", metadata={
        "help": "unsloth: Unsloth FastLanguageModel (fast on GPU); peft: plain transformers + PEFT fallback."})
    load_in_4bit: bool = field(default=True, metadata={
        "help": "NF4 4-bit base via bitsandbytes: ~3.5x less base memory, ~10-30% slower matmuls."})
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = field(default="auto", metadata={
        "help": "compute dtype (adapters are saved in it); auto = decode.resolve_dtype's rule on GPU (bf16 from "
                "compute capability 8, fp16 on T4); on CPU fp32 for peft, Unsloth's own choice for unsloth."})
    lora_rank: int = field(default=32, metadata={
        "help": "LoRA rank r: trainable params and optimizer memory linear in r."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA scale numerator: the update is alpha/r * B A."})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "dropout on the LoRA input; 0 lets Unsloth use its fused kernels."})
    target_modules: tuple[str, ...] = field(default=TARGET_MODULES, metadata={
        "help": "modules that get LoRA: the projections, plus embed_tokens/lm_head if wanted (r * (vocab + "
                "hidden) more params each; transformers decoding only: vLLM cannot serve them)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate."})
    steps: int = field(default=64, metadata={
        "help": "optimizer steps per task (each sees batch_size * grad_accum examples); time linear in it."})
    batch_size: int = field(default=1, metadata={
        "help": "examples per forward pass: activation memory linear in it."})
    grad_accum: int = field(default=1, metadata={
        "help": "forward passes per optimizer step: effective batch at no memory cost, time linear."})
    warmup_steps: int = field(default=4, metadata={
        "help": "linear warmup steps, then linear decay to 0 at the last step."})
    max_seq_len: int = field(default=8192, metadata={
        "help": "longest training example in tokens (longer ones are skipped): activation memory linear in it."})
    loss_on: Literal["all_outputs", "query_output"] = field(default="all_outputs", metadata={
        "help": "train on every output grid of an example, or on the query output only."})
    shared_adapter: bool = field(default=False, metadata={
        "help": "train_all: one adapter on all tasks' examples, saved once, instead of one per task."})
    seed: int = field(default=0, metadata={"help": "seed of the LoRA init, data order and dropout."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm."})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "recompute activations in backward: ~30% more time, far less activation memory."})

    def __post_init__(self):
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for f in fields(self):
            v, want = getattr(self, f.name), type(f.default)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) if want is float else type(v) is want
            if not ok:
                raise TypeError(f"TrainConfig.{f.name} must be {want.__name__}, got {type(v).__name__} {v!r}")
        choices = {"backend": ("unsloth", "peft"), "dtype": ("auto", "float16", "bfloat16", "float32"),
                   "loss_on": ("all_outputs", "query_output")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, low in (("lora_rank", 1), ("lora_alpha", 1), ("steps", 0), ("batch_size", 1),
                          ("grad_accum", 1), ("warmup_steps", 0), ("max_seq_len", 16), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"TrainConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"TrainConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not (self.learning_rate > 0 and self.max_grad_norm > 0):
            raise ValueError("TrainConfig.learning_rate and max_grad_norm must be > 0")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"TrainConfig.target_modules must be non-empty names, got {self.target_modules!r}")

    @staticmethod
    def help() -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(TrainConfig)}


@dataclass(frozen=True)
class TrainResult:
    """What one ``train_task`` did. ``losses``: the token-weighted mean loss of each optimizer step. ``finite=False``:
    a loss or saved weight was not finite (``reason``), no adapter was written (``adapter_dir=None``): use the base."""

    task_id: str
    adapter_dir: Path | None
    steps_done: int
    losses: list[float]
    seconds: float
    tokens_seen: int
    stopped_early: bool
    examples_used: int = 0
    examples_skipped: int = 0  # longer than max_seq_len
    skipped_steps: int = 0  # optimizer steps not applied: non-finite loss or gradient (fp16: GradScaler skips)
    finite: bool = True
    reason: str = ""  # why the adapter is not usable; "" when finite
    adapter_bytes: int = 0  # size of the saved weights file


class Trainer:
    """Loads the base once; trains, resets and saves one LoRA adapter per task (see the module docstring)."""

    def __init__(self, model_path: str | Path, config: TrainConfig = TrainConfig()):
        import torch

        self.config = config
        self.model_path = Path(model_path).resolve()
        load = _load_unsloth if config.backend == "unsloth" else _load_peft
        self.model, tokenizer, self.backend = load(self.model_path, config)
        self.fmt = ArcFormat.for_model(tokenizer, self.model_path)  # the folder's profile (model_prep)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.fmt.eos_id
        # vLLM resolves the base of a LoRARequest from this path; make it absolute, not the caller's spelling.
        self.model.peft_config[_ADAPTER].base_model_name_or_path = str(self.model_path)
        for m in self.model.modules():
            # bitsandbytes (CPU) repacks a 4-bit weight in place on the first no-grad eval forward and never
            # unpacks it, after which backward is wrong: an nll() call would silently stall training.
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
        self._lora = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self._lora or not all(".lora_" in n for n, _ in self._lora):
            raise RuntimeError(f"expected only LoRA weights to be trainable, got {[n for n, _ in self._lora][:5]}")
        for _, p in self._lora:
            if p.dtype != torch.float32:  # fp32 master weights: AdamW and the fp16 grad scaler need them
                p.data = p.data.float()
        self.device = self._lora[0][1].device
        self._label_rows = config.backend == "peft" and _plain_head(self.model)
        self.compute_dtype = _compute_dtype(self.model)
        # Saved in the dtype the base computes in: fp16/bf16 on GPU halves the file; fp32 on CPU stays exact.
        self.save_dtype = self.compute_dtype if self.compute_dtype in (torch.float16, torch.bfloat16) else torch.float32
        self._torch = torch

    # -- adapter state --------------------------------------------------------------------------------------
    def reset_adapter(self, seed: int) -> None:
        """Re-run PEFT's LoRA init on every lora_A/lora_B in place (A Kaiming-uniform, B zero), seeded, so an
        adapter never inherits the previous task's weights and equals a fresh Trainer's for the same seed."""
        from peft.tuners.lora import LoraLayer

        self._torch.manual_seed(seed)
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters(_ADAPTER, True)

    def lora_state(self) -> dict[str, Any]:
        """A CPU copy of the LoRA weights by parameter name (for tests and checks)."""
        return {n: p.detach().float().cpu().clone() for n, p in self._lora}

    def adapter_state(self) -> dict[str, Any]:
        """The LoRA weights as saved: PEFT's key names (what vLLM reads), in ``save_dtype``, on the CPU."""
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.model, adapter_name=_ADAPTER, save_embedding_layers=False)
        return {k: v.detach().to(device="cpu", dtype=self.save_dtype).contiguous() for k, v in state.items()}

    def recover(self, seed: int | None = None) -> None:
        """After an exception in a training step (an OOM; ``train_task`` calls it before re-raising): drop every
        gradient (backward accumulates into ``.grad``: a stale one would leak into the next task's first step),
        re-initialize the adapter, and on CUDA hand the failed step's cached blocks back to the driver."""
        self.model.zero_grad(set_to_none=True)
        self.reset_adapter(self.config.seed if seed is None else seed)
        gc.collect()
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    # -- training -------------------------------------------------------------------------------------------
    def encode(self, examples: Sequence) -> tuple[list[Encoded], int]:
        """Examples (anything with ``.demos`` and ``.query``, or ``Encoded``) to token ids; returns the ones
        that fit ``max_seq_len`` and how many did not."""
        enc = [e if isinstance(e, Encoded) else self.fmt.encode_example(e.demos, e.query, self.config.loss_on)
               for e in examples]
        kept = [e for e in enc if len(e.input_ids) <= self.config.max_seq_len]
        return kept, len(enc) - len(kept)

    def train_task(self, task_id: str, examples: Sequence, out_dir: Path, *, steps: int | None = None,
                   seed: int | None = None, deadline: float | None = None, progress: bool = False,
                   step_hook: Callable | None = None, save_hook: Callable | None = None) -> TrainResult:
        """Reset the adapter, train ``steps`` optimizer steps on ``examples``, save to ``out_dir``.

        ``deadline`` (a ``time.time()`` value) is checked before every step; when it has passed the loop stops
        and the adapter trained so far is still saved (``stopped_early``). A non-finite loss or weight saves
        nothing (``finite=False``); an exception in a step is re-raised after ``recover()``. Fault injection:
        ``step_hook(step, loss) -> loss`` gets every micro-batch's loss before its backward and may raise (as an
        OOM would) or return another loss; ``save_hook(tmp_dir)`` runs mid-write (see ``save_adapter``)."""
        cfg = self.config
        t0 = time.time()
        steps = cfg.steps if steps is None else steps
        seed = cfg.seed if seed is None else seed
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        encoded, skipped = self.encode(examples)
        if not encoded:
            raise ValueError(f"task {task_id}: no training example fits max_seq_len={cfg.max_seq_len} "
                             f"({skipped} given)")
        self.reset_adapter(seed)
        self.model.zero_grad(set_to_none=True)
        try:
            losses, tokens, stopped, skipped_steps = self._run_steps(task_id, encoded, steps, seed, deadline,
                                                                     progress, step_hook)
        except BaseException as e:
            # The traceback keeps the failed step's frames (its activations) alive: clear them so memory is freed.
            traceback.clear_frames(e.__traceback__)
            self.recover(seed)
            raise
        state = self.adapter_state()
        reason = _nonfinite_reason(losses, state, self.save_dtype)
        adapter_dir, nbytes = None, 0
        if not reason:
            adapter_dir = self.save_adapter(Path(out_dir), state=state, task_id=task_id, save_hook=save_hook)
            nbytes = (adapter_dir / WEIGHTS_FILE).stat().st_size
        return TrainResult(task_id, adapter_dir, len(losses), losses, time.time() - t0, tokens, stopped,
                           len(encoded), skipped, skipped_steps, not reason, reason, nbytes)

    def _run_steps(self, task_id: str, encoded: list[Encoded], steps: int, seed: int, deadline: float | None,
                   progress: bool, step_hook: Callable | None) -> tuple[list[float], int, bool, int]:
        """The optimizer loop: (losses, tokens seen, stopped early, skipped steps)."""
        from tqdm.auto import tqdm

        torch, cfg = self._torch, self.config
        params = [p for _, p in self._lora]
        # Fresh optimizer per task: AdamW moments are optimizer state, never carried across tasks. The fused
        # kernel is far faster than the per-tensor loop over LoRA's many small matrices.
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0,
                                fused=self.device.type in ("cuda", "cpu"))
        warmup = min(cfg.warmup_steps, steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, steps))
        fp16 = self.device.type == "cuda" and self.compute_dtype == torch.float16
        scaler = torch.amp.GradScaler("cuda") if fp16 else None  # fp16 gradients underflow without scaling
        rng = np.random.default_rng(seed)
        order: list[int] = []
        losses: list[float] = []
        tokens = skipped = 0
        stopped = False
        bar = tqdm(total=steps, desc=f"TTT {task_id}", leave=False) if progress else None
        self.model.train()
        try:
            for step in range(steps):
                if deadline is not None and time.time() >= deadline:
                    stopped = True
                    break
                picks = []
                for _ in range(cfg.grad_accum * cfg.batch_size):
                    if not order:  # epochs of shuffled examples, so every example is seen once per epoch
                        order = rng.permutation(len(encoded)).tolist()
                    picks.append(encoded[order.pop()])
                micro = [picks[i:i + cfg.batch_size] for i in range(0, len(picks), cfg.batch_size)]
                window = sum(_loss_tokens(e) for b in micro for e in b)  # token-weighted mean over the window
                step_loss = 0.0
                for batch in micro:
                    ids, mask, labels = self._collate(batch)
                    with self._autocast():
                        loss = self._loss(ids, mask, labels)
                    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
                    loss = loss * (n / window)
                    if step_hook is not None:
                        loss = step_hook(step, loss)
                    (scaler.scale(loss) if scaler else loss).backward()
                    step_loss += float(loss.detach())
                    tokens += int(mask.sum())
                skipped += self._optimizer_step(opt, scaler, params, step_loss)
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(step_loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.3f}")
        finally:
            if bar is not None:
                bar.close()
        return losses, tokens, stopped, skipped

    def _optimizer_step(self, opt, scaler, params, loss: float) -> bool:
        """Clip and step; True when skipped. fp16: ``scaler.step`` skips on inf/NaN gradients and ``update`` then
        lowers the scale (a drop = a skip); else a non-finite loss or gradient norm skips it (AdamW would write NaN)."""
        torch = self._torch
        if scaler is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            return scaler.get_scale() < scale
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if not (math.isfinite(loss) and bool(torch.isfinite(norm))):
            return True
        opt.step()
        return False

    def train_all(self, examples_by_task: Mapping[str, Sequence], out_root: Path, *, progress: bool = False,
                  deadline: float | None = None) -> dict[str, TrainResult]:
        """Per-task adapters under ``out_root/<task_id>``; with ``shared_adapter`` one adapter trained
        ``steps`` steps on every task's examples, saved once under ``out_root/shared`` (all tasks map to it)."""
        out_root = Path(out_root)
        if self.config.shared_adapter:
            pooled = [e for exs in examples_by_task.values() for e in exs]
            r = self.train_task("shared", pooled, out_root / "shared", deadline=deadline, progress=progress)
            return {task_id: r for task_id in examples_by_task}
        return {task_id: self.train_task(task_id, exs, out_root / task_id, deadline=deadline, progress=progress)
                for task_id, exs in examples_by_task.items()}

    def save_adapter(self, out_dir: Path, *, state: Mapping[str, Any] | None = None, task_id: str = "",
                     save_hook: Callable | None = None) -> Path:
        """PEFT format (adapter_config.json + adapter_model.safetensors), LoRA weights only, in ``save_dtype``:
        what vLLM loads. Written into a temporary folder next to ``out_dir``, renamed into place (replacing an
        older adapter); on an error the partial folder is removed and ``AdapterSaveError`` names the task.
        ``save_hook(tmp_dir)`` runs between config and weights (fault injection: an ENOSPC mid-save)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        state = self.adapter_state() if state is None else state
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the adapter folder is an ordinary one
            peft_cfg = copy.copy(self.model.peft_config[_ADAPTER])
            peft_cfg.inference_mode = True  # as PEFT's save_pretrained writes it
            peft_cfg.save_pretrained(str(tmp))
            if save_hook is not None:
                save_hook(tmp)
            save_file(dict(state), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            for f in tmp.iterdir():
                _fsync(f)
            old = tmp.with_name(tmp.name + ".old")
            if out_dir.exists():
                os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, Exception):
                # The cause first: a status line cut at its length limit still says what went wrong.
                raise AdapterSaveError(f"task {task_id or out_dir.name}: writing its adapter failed: "
                                       f"{type(e).__name__}: {e} (partial folder removed: {out_dir})") from e
            raise
        return out_dir

    # -- evaluation -----------------------------------------------------------------------------------------
    def nll(self, examples: Sequence, adapter_dir: Path | None = None, *, current_adapter: bool = False) -> float:
        """Mean per-token negative log-likelihood (nats) of the loss tokens of ``examples``. ``adapter_dir=None``:
        the base model (LoRA disabled); a path: that saved adapter (swapped in, then the in-memory adapter is
        restored); ``current_adapter=True``: the adapter in memory now."""
        torch = self._torch
        encoded, _ = self.encode(examples)
        if not encoded:
            raise ValueError("no example fits max_seq_len")
        if current_adapter and adapter_dir is not None:
            raise ValueError("give adapter_dir or current_adapter, not both")
        saved = None
        if adapter_dir is not None:
            saved = self.lora_state()
            self._load_adapter_weights(Path(adapter_dir))
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                ctx = self.model.disable_adapter() if (adapter_dir is None and not current_adapter) else nullcontext()
                with ctx:
                    for i in range(0, len(encoded), self.config.batch_size):
                        ids, mask, labels = self._collate(encoded[i:i + self.config.batch_size])
                        with self._autocast():
                            loss = self._loss(ids, mask, labels)
                        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
                        total += float(loss) * n
                        count += n
        finally:
            if saved is not None:
                with torch.no_grad():
                    for name, p in self._lora:
                        p.copy_(saved[name].to(p.device, p.dtype))
            self.model.train(was_training)
        return total / count

    def _load_adapter_weights(self, adapter_dir: Path) -> None:
        import json

        from peft.utils import load_peft_weights, set_peft_model_state_dict

        saved_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        ours = self.model.peft_config[_ADAPTER]
        if (saved_cfg.get("r"), saved_cfg.get("lora_alpha")) != (ours.r, ours.lora_alpha):
            raise ValueError(f"{adapter_dir}: r/alpha {saved_cfg.get('r')}/{saved_cfg.get('lora_alpha')} differ "
                             f"from this Trainer's {ours.r}/{ours.lora_alpha}")
        state = load_peft_weights(str(adapter_dir), device=str(self.device))
        if len(state) != len(self._lora):
            raise ValueError(f"{adapter_dir}: {len(state)} tensors, this model has {len(self._lora)} LoRA weights")
        set_peft_model_state_dict(self.model, state, adapter_name=_ADAPTER)

    # -- helpers --------------------------------------------------------------------------------------------
    def _loss(self, ids, mask, labels):
        """The batch's mean loss (fp32) over its set labels: ``label_row_loss`` on the peft backend (and on a head
        it cannot reproduce, the full forward); on the unsloth backend ``model(..., labels=...).loss`` as before,
        left to Unsloth's patched forward and its own chunked cross-entropy."""
        if self._label_rows:
            return label_row_loss(self.model, ids, mask, labels)
        return self.model(input_ids=ids, attention_mask=mask, labels=labels).loss.float()

    def _collate(self, batch: Sequence[Encoded]):
        """Right-pad to the longest example; padding is masked out of attention and loss."""
        torch = self._torch
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            mask[i, :n] = 1
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def _autocast(self):
        """Mixed precision on CUDA (fp16 on T4, bf16 on L4); on CPU the loaded dtype runs as is."""
        torch = self._torch
        if self.device.type == "cuda" and self.compute_dtype in (torch.float16, torch.bfloat16):
            return torch.autocast("cuda", dtype=self.compute_dtype)
        return nullcontext()

    def close(self) -> None:
        """Free the model (and CUDA cache): call between Trainers in one process."""
        torch = getattr(self, "_torch", None)
        self.model = None
        self._lora = []
        gc.collect()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the loss -------------------------------------------------------------------------------------------------
LOSS_CHUNK_ROWS = 1024  # label rows per lm_head + cross-entropy call: Qwen's 152k vocabulary -> 0.6 GB of fp32 logits


def label_row_loss(model, input_ids, attention_mask, labels, chunk_rows: int = LOSS_CHUNK_ROWS):
    """Mean cross-entropy (fp32) of a causal LM over the positions whose shifted label is set: what
    ``model(input_ids, attention_mask, labels=labels).loss`` computes, but the LM head runs only on those rows.

    The decoder body gives the hidden states; the rows at positions ``t`` with ``labels[:, t + 1]`` set are
    gathered, and ``get_output_embeddings()`` + cross-entropy run on at most ``chunk_rows`` of them at a time,
    summed, divided by their count. With gradients on, each chunk is checkpointed: backward recomputes its
    logits instead of keeping them, so no chunk's logits outlive its own forward or backward. A PEFT model runs
    its base (LoRA layers in place). Zero set labels: NaN, as the full forward's mean over nothing.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    rows, y = hidden[:, :-1][keep], target[keep]
    head = base.get_output_embeddings()
    if not rows.shape[0]:
        return hidden.float().sum() * float("nan")  # attached to the graph, so a backward still runs (NaN: skipped)

    def chunk_sum(h, t):
        return torch.nn.functional.cross_entropy(head(h).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, rows.shape[0], chunk_rows):
        h, t = rows[i:i + chunk_rows], y[i:i + chunk_rows]
        total = total + (checkpoint(chunk_sum, h, t, use_reentrant=False) if torch.is_grad_enabled()
                         else chunk_sum(h, t))
    return total / rows.shape[0]


def _plain_head(model) -> bool:
    """True when the model's logits are just ``get_output_embeddings()(hidden)``: no final soft-capping (Gemma 2)
    or logit scale (Cohere) that ``label_row_loss`` would leave out."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    return getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) in (None, 1, 1.0)


# -- backends -------------------------------------------------------------------------------------------------
def _load_unsloth(model_path: Path, cfg: TrainConfig):
    """Unsloth's loader; imported here first so it can patch transformers/PEFT (see the module docstring)."""
    import torch

    if "transformers" in sys.modules and "unsloth" not in sys.modules and torch.cuda.is_available():
        # On a CPU-only host Unsloth runs stock transformers + PEFT, so the order only matters on GPU.
        warnings.warn("transformers was imported before unsloth in this process; Unsloth's GPU patches may be "
                      "incomplete. Build the Trainer (or `import unsloth`) before importing transformers.")
    try:
        import unsloth
        from unsloth import FastLanguageModel
    except ImportError as e:
        raise ImportError(f"TrainConfig(backend='unsloth') but unsloth cannot be imported ({e}). Install it "
                          f"(`pip install unsloth`) or use TrainConfig(backend='peft').") from e
    dtype = _load_dtype(cfg.dtype, "unsloth")  # None (auto on CPU): Unsloth picks, bf16 where the CPU has it
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(model_path), max_seq_length=cfg.max_seq_len, dtype=dtype, load_in_4bit=cfg.load_in_4bit)
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), bias="none", random_state=cfg.seed,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        max_seq_length=cfg.max_seq_len)
    return model, tokenizer, f"unsloth {unsloth.__version__} ({_describe(model)})"


def _load_peft(model_path: Path, cfg: TrainConfig):
    """Plain transformers (+ bitsandbytes 4-bit) + PEFT: what Unsloth does, without its kernels."""
    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _load_dtype(cfg.dtype, "peft")
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": 0} if torch.cuda.is_available() else "cpu"}
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=["lm_head"])
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs)
    model.requires_grad_(False)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(cfg.seed)
    lora = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)
    return model, tokenizer, f"peft {peft.__version__} + transformers {transformers.__version__} ({_describe(model)})"


def _load_dtype(name: str, backend: str):
    """The base's dtype. ``auto``: ``decode.resolve_dtype`` (bf16 only from compute capability 8: a T4's
    ``is_bf16_supported()`` says True, by emulation; fp32 on CPU), but None for Unsloth on CPU (it picks)."""
    import torch

    from .decode import resolve_dtype

    if name == "auto" and backend == "unsloth" and not torch.cuda.is_available():
        return None
    return getattr(torch, resolve_dtype(name))


def _nonfinite_reason(losses: Sequence[float], state: Mapping[str, Any], dtype) -> str:
    """Why an adapter must not be used, "" if it may: a non-finite loss, or weight as saved (fp16 max: 65504)."""
    bad_steps = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad_steps:
        return f"non-finite loss at step(s) {bad_steps[:5]}{' ...' if len(bad_steps) > 5 else ''}"
    bad = [k for k, v in state.items() if not bool(v.isfinite().all())]
    if bad:
        return f"{len(bad)} of {len(state)} LoRA tensors not finite in {str(dtype).replace('torch.', '')} ({bad[0]})"
    return ""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compute_dtype(model):
    """The dtype activations run in: the 4-bit compute dtype, else the floating dtype of the frozen weights."""
    import torch

    for m in model.modules():
        if type(m).__name__ == "Linear4bit" and getattr(m, "compute_dtype", None) is not None:
            return m.compute_dtype
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            return p.dtype
    return torch.float32


def _describe(model) -> str:
    quant = any(type(m).__name__ == "Linear4bit" for m in model.modules())
    dtype = str(_compute_dtype(model)).replace("torch.", "")
    device = next(model.parameters()).device.type
    return f"{'4-bit nf4, ' if quant else ''}{dtype}, {device}"


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay towards 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _loss_tokens(e: Encoded) -> int:
    """Loss tokens after the causal shift (the first position is never predicted)."""
    return sum(1 for v in e.labels[1:] if v != IGNORE_INDEX)

