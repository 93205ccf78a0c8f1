"""Which test-time training settings lower the held-out NLL: the joint stage's epochs x TTT steps x learning
rate, on the validation set.

    .venv/bin/python benchmarks/ttt_sweep.py --model models/arc-starter                   # TTT steps x rate
    .venv/bin/python benchmarks/ttt_sweep.py --model models/arc-starter --joint-epochs 0,4,12 --steps 0,96 --lrs 3e-3

The tasks are the validation set of ``arc.heldout.held_out_sets`` (the ablation's ``task_sets``): disjoint by
content from the reporting set ``benchmarks/ablation.py`` reports on and from the dry run's sample, so settings
chosen here are not tuned on reported tasks. They are checked held out from the model's training data by id and
content (up to rotations, flips and colours), as in the ablation.

For every joint-stage length (``--joint-epochs``; 0: no joint stage, the base model) it trains the run's joint
stage on the tasks' demonstrations (``run.joint.train_joint``), then for every (steps, learning rate) pair one
LoRA adapter per task from those weights (``engines.train.Trainer``, PEFT, fp32, the model's ``run_settings.json``
rank, augmentations and example cap; 0 steps: no adapter), and scores each true test output under the identity
view. It prints, per setting, the mean NLL per token of the true outputs, its ratio to the base model's (the
ablation's R), how many tasks' NLL fell, the mean final TTT loss, and the seconds per task (joint stage and
adapters); the last line is ``ttt sweep best: ...`` (the lowest ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import (check_held_out, evaluation_files, mean_nll, settings, task_sets,  # noqa: E402
                      train_adapters, train_joint_model, true_output_nll)

from arcttt_kaggle.arc.candidates import atomic_write_text  # noqa: E402
from arcttt_kaggle.arc.data import load_challenges  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/arc-starter", help="the model folder (its pretrain.json is checked)")
    ap.add_argument("--count", type=int, default=0, help="only the first N validation tasks (0: all 24)")
    ap.add_argument("--joint-epochs", default="0", help="comma-separated joint-stage epochs (0: no joint stage)")
    ap.add_argument("--joint-lr", type=float, default=None, help="the joint stage's learning rate (default: the "
                    "model's run_settings.json, else JointConfig's)")
    ap.add_argument("--joint-batch", type=int, default=None, help="the joint stage's padded tokens per batch, at "
                    "least 2048 (default: the model's run_settings.json, else JointConfig's)")
    ap.add_argument("--steps", default="24,48,96", help="comma-separated TTT step counts (0: no adapter)")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="comma-separated TTT learning rates")
    ap.add_argument("--out", default="out/ttt_sweep", help="adapters, joint models and ttt_sweep.json")
    a = ap.parse_args()

    import numpy as np

    from arcttt_kaggle.engines.score_candidates import Scorer

    files = evaluation_files()
    if files is None:
        print("ttt sweep: skipped: ../shared/data is absent (ARC-AGI-1 evaluation is read from there)")
        return 0
    ch, so = files
    all_tasks = load_challenges(ch, solutions=so).tasks
    ids = list(task_sets(all_tasks).validation)
    ids = ids[: a.count] if a.count else ids
    tasks = {t: all_tasks[t] for t in ids}
    model = Path(a.model).resolve()
    held = check_held_out(model, list(tasks.values()))
    base = settings(model, argparse.Namespace(ttt_steps=None, ttt_lr=None, rank=None, joint_epochs=None,
                                              joint_lr=a.joint_lr, joint_batch=a.joint_batch))
    grid = [(int(s), float(lr)) for s in a.steps.split(",") for lr in (a.lrs.split(",") if int(s) else ["0"])]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"ttt sweep: {len(tasks)} validation tasks, model {model} ({held}); rank {base['rank']}, "
          f"{base['augmentations']} augmentations, <= {base['max_examples']} examples ({base['source']}); the "
          f"model's own setting: {base['steps']} steps at lr {base['lr']}, joint {base['joint_epochs']} epochs; "
          f"joint lr {base['joint_lr']}, {base['joint_batch']} tokens a batch",
          flush=True)

    results = []
    with Scorer(model, dtype="float32", device="cpu") as scorer:
        base_nll = true_output_nll(scorer, tasks, {})
    base_mean = mean_nll(base_nll)
    for epochs in (int(e) for e in a.joint_epochs.split(",")):
        t0 = time.time()
        start = model if not epochs else train_joint_model(model, tasks, {**base, "joint_epochs": epochs},
                                                           out / f"joint-{epochs}")[0]
        joint_secs = (time.time() - t0) / len(tasks)
        with Scorer(start, dtype="float32", device="cpu") as scorer:
            for steps, lr in grid:
                t0 = time.time()
                trained = {} if not steps else train_adapters(
                    start, tasks, {**base, "steps": steps, "lr": lr}, out / "adapters" / f"{epochs}-{steps}-{lr:g}",
                    desc=f"joint {epochs}, {steps} steps, lr {lr:g}")
                secs = joint_secs + (time.time() - t0) / len(tasks)
                adapters = {tid: r.adapter_dir for tid, r in trained.items() if r.finite}
                final_loss = [float(np.mean(r.losses[-8:])) for r in trained.values() if r.finite]
                ttt_nll = true_output_nll(scorer, tasks, adapters)
                mean = mean_nll(ttt_nll)
                fell = sum(ttt_nll[t][0] < base_nll[t][0] for t in tasks)
                results.append({"joint_epochs": epochs, "steps": steps, "lr": lr, "nll": mean,
                                "ratio": mean / base_mean, "fell": fell, "adapters": len(adapters),
                                "final_train_loss": float(np.mean(final_loss)) if final_loss else float("nan"),
                                "seconds_per_task": secs})
                print(f"  joint {epochs}, {steps} steps, lr {lr:g}: NLL {mean:.4f} (ratio {mean / base_mean:.3f}), "
                      f"{secs:.1f} s/task", flush=True)

    print(f"\n| joint epochs | TTT steps | learning rate | NLL/token of the true outputs | ratio to base ({base_mean:.4f}) | "
          f"tasks whose NLL fell (of {len(tasks)}) | final train loss | seconds per task |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['joint_epochs']} | {r['steps']} | {r['lr']:g} | {r['nll']:.4f} | {r['ratio']:.3f} | {r['fell']} | "
              f"{r['final_train_loss']:.3f} | {r['seconds_per_task']:.1f} |")
    atomic_write_text(out / "ttt_sweep.json", json.dumps({"tasks": ids, "held_out": held, "base_nll": base_mean,
                                                          "settings": base, "results": results}, indent=1))
    best = min(results, key=lambda r: r["ratio"])
    print(f"ttt sweep best: joint {best['joint_epochs']} epochs, {best['steps']} steps, lr {best['lr']:g}, ratio {best['ratio']:.3f} "
          f"(base NLL {base_mean:.4f}, {len(tasks)} validation tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
