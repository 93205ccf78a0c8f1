"""How often the demonstrations' consistency rules would rule out a true test output, per ARC file.

    .venv/bin/python benchmarks/consistency_rules.py            # every *_challenges.json with solutions under ../shared/data

``selection.consistency`` puts grids that break one of its rules after every other candidate. The rules are claims
about ARC tasks; this counts, per file, the test outputs each rule applies to and the true outputs it breaks (a
wrong demotion). One more rule is counted beside them and is not used: "every demonstration output has one shape,
so the test output has it", which true outputs do break. The files overlap (ARC-AGI-2 training holds most of
ARC-AGI-1 evaluation; see ``../shared/data/README.md``), so each row stands alone; the rules were chosen on the
training files. The last line is ``consistency rules: V wrong of A applications`` over the used rules and files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.arc.data import load_challenges, shared_data_dir  # noqa: E402
from arcttt_kaggle.selection.consistency import RULES, rule_counts  # noqa: E402


def one_output_shape(tasks) -> tuple[int, int]:
    """The unused rule: (applies, true outputs broken) for "all demonstration outputs share a shape"."""
    applies = broken = 0
    for t in tasks:
        shapes = {np.shape(p.output) for p in t.train}
        if len(shapes) == 1:
            for p in t.test:
                applies += 1
                broken += np.shape(p.output) != next(iter(shapes))
    return applies, broken


def main() -> int:
    data = shared_data_dir()
    if data is None:
        print("consistency rules: skipped: ../shared/data is absent")
        return 0
    rows, total = [], [0, 0]
    for ch in sorted(data.glob("*/*_challenges.json")):
        sol = ch.with_name(ch.name.replace("_challenges", "_solutions"))
        if not sol.exists():
            continue
        tasks = list(load_challenges(ch, solutions=sol).tasks.values())
        counts = rule_counts(tasks)
        for a, v in counts.values():
            total[0] += a
            total[1] += v
        rows.append((f"{ch.parent.name}/{ch.name}", sum(len(t.test) for t in tasks), counts, one_output_shape(tasks)))
    print("| file | test outputs | " + " | ".join(f"{r}: wrong/applies" for r in RULES)
          + " | (unused) one output shape: wrong/applies |")
    print("|---|---|" + "---|" * (len(RULES) + 1))
    for name, n, counts, extra in rows:
        print(f"| {name} | {n} | " + " | ".join(f"{counts[r][1]}/{counts[r][0]}" for r in RULES)
              + f" | {extra[1]}/{extra[0]} |")
    print(f"consistency rules: {total[1]} wrong of {total[0]} applications")
    return 0


if __name__ == "__main__":
    sys.exit(main())
