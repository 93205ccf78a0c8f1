""".venv/bin/python benchmarks/foundation.py

Times the CPU foundation of a Kaggle run on all 400 ARC-AGI-1 evaluation tasks: loading (challenges and
solutions), TTT-data generation with default ``TTTDataConfig``, the all-fallback submission (build, atomic
write, validate) and scoring it. These run before and after the GPU phases inside the Kaggle time limit, so
they must stay a rounding error (target: under 30 s on a 2-core machine). Prints one row per phase
(phase, seconds, items, items/s) and ends with ``total seconds: X``. Skips, exiting 0, when ``../shared/data``
is absent.

Options: ``--split training`` to time ARC-AGI-1 training instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.arc.data import load_challenges, shared_data_dir  # noqa: E402
from arcttt_kaggle.arc.scoring import score_submission  # noqa: E402
from arcttt_kaggle.arc.submission import build_submission, validate_submission_file, write_submission  # noqa: E402
from arcttt_kaggle.engines.ttt_data import TTTDataConfig, build_ttt_dataset, ttt_token_count  # noqa: E402


@dataclass(frozen=True)
class Row:
    phase: str
    seconds: float
    items: int
    unit: str

    def line(self) -> str:
        rate = self.items / self.seconds if self.seconds > 0 else float("inf")
        return f"{self.phase:<26} {self.seconds:>9.3f} {self.items:>8} {self.unit:<9} {rate:>12.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="evaluation", choices=["evaluation", "training"])
    args = parser.parse_args(argv)

    data = shared_data_dir()
    if data is None:
        print("SKIPPED: ../shared/data is absent (the ARC-AGI-1 corpus is not shipped in the repository)")
        return 0
    d = data / "arc-agi-1"
    challenges = d / f"arc-agi_{args.split}_challenges.json"
    solutions = d / f"arc-agi_{args.split}_solutions.json"
    rows: list[Row] = []

    t = time.perf_counter()
    loaded = load_challenges(challenges, solutions=solutions)
    tasks = loaded.tasks
    rows.append(Row("load (+solutions)", time.perf_counter() - t, len(tasks), "tasks"))

    t = time.perf_counter()
    dataset = build_ttt_dataset(tasks, TTTDataConfig())
    rows.append(Row("ttt data (defaults)", time.perf_counter() - t, len(dataset), "tasks"))
    summary = ttt_token_count(ex for exs in dataset.values() for ex in exs)

    t = time.perf_counter()
    submission = build_submission(tasks, {})
    n_tests = sum(len(v) for v in submission.values())
    rows.append(Row("fallback submission build", time.perf_counter() - t, n_tests, "tests"))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "submission.json"
        t = time.perf_counter()
        write_submission(path, submission)
        rows.append(Row("atomic write", time.perf_counter() - t, path.stat().st_size // 1024, "KiB"))

        t = time.perf_counter()
        errors = validate_submission_file(path, challenges)
        rows.append(Row("validate (file)", time.perf_counter() - t, n_tests, "tests"))

    t = time.perf_counter()
    report = score_submission(submission, {tid: task.test_outputs for tid, task in tasks.items()})
    rows.append(Row("score", time.perf_counter() - t, report.total, "tests"))

    if errors:
        print("\n".join(["INVALID submission:"] + errors[:20]))
        return 1
    print(f"ARC-AGI-1 {args.split}: {len(tasks)} tasks, {n_tests} test inputs; TTT data: {summary.examples} "
          f"examples, {summary.tokens:,} tokens (mean {summary.mean_tokens:.0f}, max {summary.max_tokens}); "
          f"fallback scores {report.correct}/{report.total}")
    print(f"{'phase':<26} {'seconds':>9} {'items':>8} {'':<9} {'items/s':>12}")
    print("\n".join(r.line() for r in rows))
    print(f"total seconds: {sum(r.seconds for r in rows):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
