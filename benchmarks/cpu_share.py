""".venv/bin/python benchmarks/cpu_share.py [--budget-seconds 600] [--out out/cpu-share]

The CPU budget (issue: the program expert and the workers share the box's few cores): the dry run's phases
with the program expert running beside the worker and without it, side by side in one invocation, on this
2-core machine. Every process of a run gets an explicit thread budget (``pipeline.thread_budget``: the worker's
torch/OpenMP threads, one thread per expert process, passive OpenMP waiting); before it, oversubscribed
OpenMP threads spinning on each other made a loaded run's train and decode phases ~15x their plan.

Prints per phase the seconds without the expert, with it, and the ratio; the last line is
``with expert / without (total phases): X``. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.run.budget import PHASES  # noqa: E402
from arcttt_kaggle.arc.data import package_sample_dir  # noqa: E402
from arcttt_kaggle.kaggle.dryrun import dry_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--budget-seconds", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=Path("out/cpu-share"))
    args = ap.parse_args()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    sample = package_sample_dir()
    kw = dict(challenges=sample / "arc-agi_test_challenges.json", solutions=sample / "arc-agi_test_solutions.json",
              budget_seconds=args.budget_seconds)
    alone = dry_run(out_dir=out / "without-expert", overrides={"run_programs": False}, **kw)
    beside = dry_run(out_dir=out / "with-expert", **kw)
    print(f"\nthreads: {beside['threads']} (cores {len(__import__('os').sched_getaffinity(0))})")
    print(f"{'phase':<8} {'without':>8} {'with':>8} {'ratio':>6}")
    for p in PHASES:
        a, b = alone["phases"][p]["measured_s"], beside["phases"][p]["measured_s"]
        print(f"{p:<8} {a:>8.1f} {b:>8.1f} {b / a if a else float('nan'):>6.2f}")
    ta, tb = alone["phases_total"]["measured_s"], beside["phases_total"]["measured_s"]
    print(f"{'total':<8} {ta:>8.1f} {tb:>8.1f} {tb / ta:>6.2f}")
    print(f"wall: without {alone['budget']['wall_s']:.1f}s, with {beside['budget']['wall_s']:.1f}s; program expert "
          f"decided {beside['programs']['tasks_decided']} task(s)")
    print(f"with expert / without (total phases): {tb / ta:.2f}")


if __name__ == "__main__":
    main()
