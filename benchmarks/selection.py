"""Run: .venv/bin/python benchmarks/selection.py --candidates CANDS.json --solutions SOLS.json [--programs PROGS.json] [--scores SCORES.json] [--challenges CHALS.json]
  or: .venv/bin/python benchmarks/selection.py --synthetic [--challenges CHALS.json --solutions SOLS.json] [--seed N]

Offline evaluation of every selection method on the SAME saved candidate file: flat voting, two-level voting,
and the product of experts (only when scores exist: some candidate carries ``extra["view_logprobs"]`` or a
``--scores`` file is given), each also with the program-expert ensemble when ``--programs`` is given. Prints one
table row per method:

* ``top2``: accuracy, an output counts when attempt_1 or attempt_2 equals the solution exactly; mean over test
  outputs;
* ``kaggle``: the competition's score (per task the fraction of its test outputs solved, mean over tasks);
* ``oracle``: the solution appears anywhere among the candidates the method could choose from (TTT candidates,
  plus verified program answers when the expert is on): the ceiling of any selection rule;
* ``cands``: candidates considered; ``scorings``: (grid, view) log-likelihoods used by PoE; ``prog``: test outputs
  whose attempt_1 the program expert decided.

Inputs are standard candidate files (``arcttt_kaggle.arc.candidates``), e.g. produced on a GPU with a real model; the
candidate file's tasks that also have solutions are evaluated (a task without candidates in the file is not
counted). ``--challenges`` defaults to the solutions path with "solutions" replaced by "challenges"; the tasks are
read for their test-input counts and their demonstrations (the selection's consistency check,
``selection.consistency``, is on as in the kit; ``--consistency both`` adds each method without it, ``off`` runs
only that). No model is run here. ``--scores`` is any candidate file whose
candidates carry ``extra["view_logprobs"] = {view_string: log_likelihood}``; they are matched to the candidates by
exact grid.

``--synthetic`` fabricates candidates with ``arcttt_kaggle.selection.synthetic`` (default: the 10 sample tasks shipped in
the package) and prints a banner: those numbers test the harness's logic only and claim no accuracy. The same
banner appears whenever the candidate file's ``source`` says it is synthetic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

from arcttt_kaggle.arc.candidates import CandidateSet, read_candidate_file, same_grid
from arcttt_kaggle.arc.data import Grid, Task, load_challenges, load_solutions, package_sample_dir
from arcttt_kaggle.selection.select import VIEW_LOGPROBS, SelectConfig, attach_view_logprobs, select_all
from arcttt_kaggle.selection.synthetic import SyntheticConfig, synthetic_candidate_sets, write_synthetic_files

BANNER = ("=" * 100 + "\nSYNTHETIC CANDIDATES: fabricated by arcttt_kaggle.selection.synthetic, not produced by any model.\n"
          "These numbers test the harness's logic only and claim NO accuracy for any method or model.\n" + "=" * 100)
COLUMNS = ("method", "tasks", "outputs", "top2", "kaggle", "oracle", "cands", "scorings", "prog")


def has_view_logprobs(candidate_set: CandidateSet) -> bool:
    return any(VIEW_LOGPROBS in c.extra for tests in candidate_set.values() for per in tests for c in per)


def evaluate(tasks: Mapping[str, Task], solutions: Mapping[str, Sequence[Grid]], candidate_set: CandidateSet,
             config: SelectConfig, program_set: CandidateSet | None = None, name: str | None = None) -> dict:
    """One table row: ``config`` applied to every test input of ``tasks`` and scored against ``solutions``."""
    progs = program_set if config.use_program_expert else None
    selections = select_all(tasks, candidate_set, config, None, progs)
    outputs = hits = oracle = considered = scorings = decided = 0
    kaggle = 0.0
    for tid, sels in selections.items():
        task_hits = 0
        for i, sel in enumerate(sels):
            truth = solutions[tid][i]
            hit = any(a is not None and same_grid(a, truth) for a in sel.attempts)
            cand_tests = candidate_set.get(tid, [])
            pool = list(cand_tests[i]) if i < len(cand_tests) else []
            if progs and i < len(progs.get(tid, [])):
                pool += [c for c in progs[tid][i] if c.verified]
            outputs += 1
            hits += hit
            task_hits += hit
            oracle += any(same_grid(c.grid, truth) for c in pool)
            considered += len(pool)
            scorings += sel.scored
            decided += sel.decided_by_program
        kaggle += task_hits / len(sels)
    n_tasks = len(selections)
    method = name or (config.method + ("+programs" if progs else "")
                      + ("" if config.demote_inconsistent else " (no consistency check)"))
    return {"method": method, "tasks": n_tasks, "outputs": outputs,
            "top2": hits / outputs if outputs else 0.0, "kaggle": kaggle / n_tasks if n_tasks else 0.0,
            "oracle": oracle / outputs if outputs else 0.0, "cands": considered, "scorings": scorings,
            "prog": decided}


def run_methods(tasks: Mapping[str, Task], solutions: Mapping[str, Sequence[Grid]], candidate_set: CandidateSet,
                program_set: CandidateSet | None = None, seed: int = 0, consistency: str = "on") -> list[dict]:
    """Every applicable method on the same candidates (PoE only when scores are present); ``consistency`` "on"
    (the kit's selection), "off" or "both" (each method with and without the consistency check)."""
    methods = ["flat", "two_level"] + (["poe"] if has_view_logprobs(candidate_set) else [])
    checks = {"on": [True], "off": [False], "both": [True, False]}[consistency]
    rows = []
    for expert in ([False, True] if program_set is not None else [False]):
        for m in methods:
            for check in checks:
                cfg = SelectConfig(method=m, use_program_expert=expert, seed=seed, demote_inconsistent=check)
                rows.append(evaluate(tasks, solutions, candidate_set, cfg, program_set))
    return rows


def format_table(rows: Sequence[dict]) -> str:
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [list(COLUMNS)] + [[cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _default_challenges(solutions: Path) -> Path:
    return solutions.with_name(solutions.name.replace("solutions", "challenges"))


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--candidates", type=Path, help="candidate file (TTT candidates)")
    ap.add_argument("--solutions", type=Path, help="Kaggle *_solutions.json")
    ap.add_argument("--challenges", type=Path, help="Kaggle *_challenges.json (default: next to --solutions)")
    ap.add_argument("--programs", type=Path, help="program-expert candidate file (verified answers)")
    ap.add_argument("--scores", type=Path, help="candidate file carrying extra['view_logprobs'] for PoE")
    ap.add_argument("--synthetic", action="store_true", help="fabricate candidates (tests the harness only)")
    ap.add_argument("--write-synthetic", type=Path, help="with --synthetic: also write the fabricated files here")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic generator and of PoE views")
    ap.add_argument("--consistency", choices=["on", "off", "both"], default="on",
                    help="the selection's consistency check: on (as the kit), off, or both (a row each)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON to this path")
    args = ap.parse_args(argv)

    synthetic = bool(args.synthetic)
    if synthetic:
        sols_path = args.solutions or package_sample_dir() / "arc-agi_test_solutions.json"
    else:
        if args.candidates is None or args.solutions is None:
            ap.error("--candidates and --solutions are required (or use --synthetic)")
        sols_path = args.solutions
    chals_path = args.challenges or _default_challenges(sols_path)
    if not chals_path.is_file():
        ap.error(f"challenges file {chals_path} not found; pass --challenges")
    solutions = load_solutions(sols_path)
    all_tasks = load_challenges(chals_path, strict=False).tasks

    programs: CandidateSet | None = None
    if synthetic:
        solved = {t: all_tasks[t].with_solutions(solutions[t]) for t in all_tasks if t in solutions}
        cfg = SyntheticConfig(seed=args.seed)
        if args.write_synthetic:
            write_synthetic_files(solved, cfg, args.write_synthetic)
        candidates, programs = synthetic_candidate_sets(solved, cfg)
        source = "synthetic"
    else:
        candidates, header = read_candidate_file(args.candidates)
        source = str(header.get("source", ""))
        if args.programs:
            programs, _ = read_candidate_file(args.programs)
        if args.scores:
            scores, _ = read_candidate_file(args.scores)
            candidates = attach_view_logprobs(candidates, scores)
    if "synthetic" in source.lower():
        synthetic = True

    tasks = {t: all_tasks[t] for t in candidates if t in all_tasks and t in solutions}
    missing = sorted(set(candidates) - set(tasks))
    if synthetic:
        print(BANNER)
    print(f"candidates: {'synthetic' if args.synthetic else args.candidates}  tasks evaluated: {len(tasks)}"
          + (f"  (skipped, no challenge/solution: {len(missing)})" if missing else ""))
    rows = run_methods(tasks, solutions, candidates, programs, seed=args.seed, consistency=args.consistency)
    print(format_table(rows))
    if synthetic:
        print("(synthetic: harness logic only, no accuracy claimed)")
    if args.json:
        args.json.write_text(json.dumps({"synthetic": synthetic, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
