"""Which TTT settings lower the held-out NLL: a steps x learning-rate sweep on validation tasks.

    .venv/bin/python benchmarks/ttt_sweep.py --model models/arc-starter                  # 16 validation tasks
    .venv/bin/python benchmarks/ttt_sweep.py --model models/arc-starter --steps 24,48 --lrs 3e-3 --count 8

The validation tasks are the ARC-AGI-1 evaluation tasks that come right after the ablation's default list (the
same fit rule, the next ``--count`` by id): disjoint from the 60 tasks ``benchmarks/ablation.py`` reports on, so
settings chosen here are not tuned on the ablation's own tasks. They are checked held out from the model's
training data by id and content, as in the ablation.

For every (steps, learning rate) pair it trains one LoRA adapter per task (``engines.train.Trainer``, the PEFT
backend, fp32, the model's ``run_settings.json`` rank, augmentations and example cap) and scores each true test
output under the identity view (``engines.score_candidates.Scorer``). It prints, per setting, the mean NLL per
token of the true outputs, its ratio to the base model's (the ablation's R), how many tasks' NLL fell, the mean
final training loss, and the seconds per task; the last line is ``ttt sweep best: ...`` (the lowest ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import (DEFAULT_TASKS, check_held_out, default_tasks, evaluation_files,  # noqa: E402
                      mean_nll, train_adapters, true_output_nll, ttt_settings)

from arcttt_kaggle.arc.candidates import atomic_write_text  # noqa: E402
from arcttt_kaggle.arc.data import load_challenges  # noqa: E402


def validation_ids(challenges: Path, solutions: Path, count: int) -> list[str]:
    """The ``count`` fitting tasks that follow the ablation's default list, by id: none of them is in it."""
    ids = default_tasks(challenges, solutions, count=len(DEFAULT_TASKS) + count)
    reported = set(DEFAULT_TASKS)
    return [t for t in ids if t not in reported][:count]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/arc-starter")
    ap.add_argument("--count", type=int, default=16, help="validation tasks (after the ablation's 60)")
    ap.add_argument("--steps", default="24,48,96", help="comma-separated TTT step counts")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="comma-separated learning rates")
    ap.add_argument("--out", default="out/ttt_sweep")
    a = ap.parse_args()

    import numpy as np

    from arcttt_kaggle.engines.score_candidates import Scorer

    files = evaluation_files()
    if files is None:
        print("ttt sweep: skipped: ../shared/data is absent (ARC-AGI-1 evaluation is read from there)")
        return 0
    ch, so = files
    ids = validation_ids(ch, so, a.count)
    all_tasks = load_challenges(ch, solutions=so).tasks
    tasks = {t: all_tasks[t] for t in ids}
    model = Path(a.model).resolve()
    held = check_held_out(model, list(tasks.values()))
    base = ttt_settings(model, argparse.Namespace(ttt_steps=None, ttt_lr=None, rank=None))
    grid = [(int(s), float(lr)) for s in a.steps.split(",") for lr in a.lrs.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"ttt sweep: {len(tasks)} validation tasks ({ids[0]} .. {ids[-1]}), model {model} ({held}); rank "
          f"{base['rank']}, {base['augmentations']} augmentations, <= {base['max_examples']} examples "
          f"({base['source']}); the model's own setting: {base['steps']} steps at lr {base['lr']}", flush=True)

    results = []
    with Scorer(model, dtype="float32", device="cpu") as scorer:  # one scorer for the base and every setting
        base_nll = true_output_nll(scorer, tasks, {})
        base_mean = mean_nll(base_nll)
        for steps, lr in grid:
            t0 = time.time()
            trained = train_adapters(model, tasks, {**base, "steps": steps, "lr": lr},
                                     out / "adapters" / f"{steps}-{lr:g}", desc=f"{steps} steps, lr {lr:g}")
            secs = (time.time() - t0) / len(tasks)
            adapters = {tid: r.adapter_dir for tid, r in trained.items() if r.finite}
            final_loss = [float(np.mean(r.losses[-8:])) for r in trained.values() if r.finite]
            ttt_nll = true_output_nll(scorer, tasks, adapters)
            mean = mean_nll(ttt_nll)
            fell = sum(ttt_nll[t][0] < base_nll[t][0] for t in tasks)
            results.append({"steps": steps, "lr": lr, "nll": mean, "ratio": mean / base_mean, "fell": fell,
                            "adapters": len(adapters), "final_train_loss": float(np.mean(final_loss)) if final_loss
                            else float("nan"), "seconds_per_task": secs})
            print(f"  {steps} steps, lr {lr:g}: NLL {mean:.4f} (ratio {mean / base_mean:.3f}), {secs:.1f} s/task",
                  flush=True)

    print(f"\n| TTT steps | learning rate | NLL/token of the true outputs | ratio to base ({base_mean:.4f}) | "
          f"tasks whose NLL fell (of {len(tasks)}) | final train loss | seconds per task |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['steps']} | {r['lr']:g} | {r['nll']:.4f} | {r['ratio']:.3f} | {r['fell']} | "
              f"{r['final_train_loss']:.3f} | {r['seconds_per_task']:.1f} |")
    atomic_write_text(out / "ttt_sweep.json", json.dumps({"tasks": ids, "held_out": held, "base_nll": base_mean,
                                                          "settings": base, "results": results}, indent=1))
    best = min(results, key=lambda r: r["ratio"])
    print(f"ttt sweep best: {best['steps']} steps, lr {best['lr']:g}, ratio {best['ratio']:.3f} "
          f"(base NLL {base_mean:.4f}, {len(tasks)} validation tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
