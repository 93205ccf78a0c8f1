"""Benchmark the program-search expert on the public ARC sets.

Run (from the repository root):

    .venv/bin/python benchmarks/programs.py --seconds-per-task 10 --workers 2

Options: ``--sets eval1,train1,train2`` (ARC-AGI-1 evaluation, ARC-AGI-1 training, ARC-AGI-2 training),
``--limit N`` (first N tasks of each set), ``--max-depth``, ``--details`` (list solved and wrong task ids),
``--out-dir DIR`` (keep each set's candidate file).
Sets are read from ``shared_data_dir()``; without it every set is skipped with the reason printed.

Prints one table: set, tasks, tasks with a verified program, tasks solved (for every test input one of the
first two candidates equals the solution), solved %, verified-but-wrong tasks (verified answers exist but
none of the first two is right on some test input) and %, and wall seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.arc.candidates import CandidateSet, same_grid  # noqa: E402
from arcttt_kaggle.arc.data import Task, load_challenges, shared_data_dir  # noqa: E402
from arcttt_kaggle.programs.expert import ProgramsConfig, run_expert  # noqa: E402

SETS = {
    "eval1": ("ARC-AGI-1 evaluation", "arc-agi-1/arc-agi_evaluation"),
    "train1": ("ARC-AGI-1 training", "arc-agi-1/arc-agi_training"),
    "train2": ("ARC-AGI-2 training", "arc-agi-2/arc-agi_training"),
}


def score(tasks: list[Task], cands: CandidateSet) -> tuple[list[str], list[str], list[str]]:
    """(ids with a verified answer, ids solved top-2 on every test input, ids verified but wrong)."""
    verified, solved, wrong = [], [], []
    for t in tasks:
        per_test = cands.get(t.id, [])
        if not any(per_test):
            continue
        verified.append(t.id)
        ok = all(any(same_grid(c.grid, p.output) for c in (per_test[i] if i < len(per_test) else [])[:2])
                 for i, p in enumerate(t.test))
        (solved if ok else wrong).append(t.id)
    return verified, solved, wrong


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="eval1,train1,train2", help="comma-separated subset of " + ",".join(SETS))
    ap.add_argument("--limit", type=int, default=0, help="first N tasks per set (0 = all)")
    ap.add_argument("--seconds-per-task", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-depth", type=int, default=ProgramsConfig.max_depth)
    ap.add_argument("--details", action="store_true", help="print solved and verified-but-wrong task ids")
    ap.add_argument("--progress", action="store_true", help="one line per finished task on stderr")
    ap.add_argument("--out-dir", type=Path, default=None, help="write each set's candidate file here (<set>.json)")
    args = ap.parse_args(argv)
    config = ProgramsConfig(seconds_per_task=args.seconds_per_task, workers=args.workers, max_depth=args.max_depth)
    root = shared_data_dir()
    rows = []
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name not in SETS:
            print(f"unknown set {name!r}; choose from {', '.join(SETS)}")
            return 2
        title, stem = SETS[name]
        if root is None:
            print(f"skipping {title}: shared_data_dir() is None (no ../shared/data next to this checkout)")
            continue
        challenges, solutions = root / f"{stem}_challenges.json", root / f"{stem}_solutions.json"
        if not challenges.is_file() or not solutions.is_file():
            print(f"skipping {title}: {challenges.name} or {solutions.name} missing under {root}")
            continue
        tasks = list(load_challenges(challenges, solutions=solutions).tasks.values())
        if args.limit:
            tasks = tasks[:args.limit]
        t0 = time.time()
        out_path = None if args.out_dir is None else args.out_dir / f"{name}.json"
        cands, stats = run_expert(tasks, config, out_path=out_path, progress=args.progress)
        seconds = time.time() - t0
        verified, solved, wrong = score(tasks, cands)
        rows.append((title, len(tasks), len(verified), len(solved), len(wrong), seconds, stats))
        if args.details:
            print(f"{title} solved: {' '.join(solved)}")
            print(f"{title} verified-but-wrong: {' '.join(wrong)}")
            print(f"{title} timed out: {len(stats['tasks_timed_out'])}, errored: {stats['tasks_errored']}")
    if rows:
        print(f"\nconfig: seconds_per_task={config.seconds_per_task} workers={config.workers} "
              f"max_depth={config.max_depth}")
        head = f"{'set':<22} {'tasks':>5} {'verified':>8} {'solved':>6} {'solved%':>7} {'wrong':>5} {'wrong%':>6} {'seconds':>8}"
        print(head)
        print("-" * len(head))
        for title, n, v, s, w, sec, _ in rows:
            print(f"{title:<22} {n:>5} {v:>8} {s:>6} {100 * s / max(n, 1):>6.1f}% {w:>5} {100 * w / max(n, 1):>5.1f}% "
                  f"{sec:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
