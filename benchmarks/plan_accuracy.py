""".venv/bin/python benchmarks/plan_accuracy.py [--budget-seconds 600] [--out out/plan-accuracy]

How well the budget plan predicts the dry run on THIS machine, per phase (startup, train, decode, score), and
whether a run whose priors are badly wrong still ends in time with every phase reached (the in-run re-plan):

1. run A: the dry run (the notebook, executed) with the preset's built-in priors (``config.CPU_TINY_THROUGHPUT``,
   fitted on the 2-core development machine with nothing else running). Its report holds the plan's prediction
   and the measured phases;
2. ``plan`` (``pipeline.plan_only``, what ``build_submission.py plan --throughput-file`` prints) with the
   throughputs run A measured (``A/measured_throughput.json``): the prediction for the next run;
3. run B: the same dry run again, measured; the plan of step 2 is compared with it;
4. run C: priors 3x too fast (every rate x3, every fixed cost /3) under a budget that run A's measured phases
   would overrun (``--tight``, default 80% of run A's total measured phase time plus its plan's start delay):
   the first plan believes the full settings fit, so only the in-run re-plan (after the first trained tasks,
   from the run's own events) keeps it inside the deadline.

Prints the table (predicted, measured, ratio per phase), the re-plans of run C, and ends with
``overruns: N``: the runs that finished after their deadline or never reached a phase (train, decode, score).
Each invocation writes into a new folder under ``--out`` (and a run clears its own folder first), so a second
invocation never reads the first one's events. Timings are of a shared 2-core box: run it with nothing else
running (a parallel test suite or benchmark slows every phase and shows up as ratios > 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arcttt_kaggle.run.budget import PHASES, Throughput  # noqa: E402
from arcttt_kaggle.run.config import budget_overrides, preset  # noqa: E402
from arcttt_kaggle.arc.data import package_sample_dir  # noqa: E402
from arcttt_kaggle.kaggle.dryrun import dry_run  # noqa: E402
from arcttt_kaggle.run.pipeline import plan_only  # noqa: E402
from arcttt_kaggle.run.report import predicted_phase_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    ap.add_argument("--budget-seconds", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=Path("out/plan-accuracy"))
    ap.add_argument("--tight", type=float, default=0.0, help="run C's budget in seconds (0: derived from run A)")
    args = ap.parse_args()
    args.out = args.out / time.strftime("%Y%m%d-%H%M%S")
    sample = package_sample_dir()
    challenges, solutions = sample / "arc-agi_test_challenges.json", sample / "arc-agi_test_solutions.json"

    run_a = dry_run(challenges=challenges, solutions=solutions, budget_seconds=args.budget_seconds,
                    out_dir=args.out / "run-a")
    fitted = args.out / "run-a" / "measured_throughput.json"
    cfg = replace(budget_overrides(preset("cpu-tiny"), args.budget_seconds), challenges=str(challenges),
                  throughput=Throughput.from_file(fitted))
    plan, _, _ = plan_only(cfg)
    predicted_b = predicted_phase_seconds(plan)
    run_b = dry_run(challenges=challenges, solutions=solutions, budget_seconds=args.budget_seconds,
                    out_dir=args.out / "run-b", throughput_file=fitted)

    print(f"\nplan rung (from run A): {plan.settings.rung}; runs A and B wall {run_a['budget']['wall_s']:.1f}s, "
          f"{run_b['budget']['wall_s']:.1f}s of {args.budget_seconds:.0f}s")
    print(f"{'phase':<8} {'prior plan':>10} {'run A':>8} {'ratio':>6}   {'plan(A)':>8} {'run B':>8} {'ratio':>6}")
    errors_prior, errors_fit = [], []
    for p in PHASES:
        pa, ma = run_a["phases"][p]["predicted_s"], run_a["phases"][p]["measured_s"]
        pb, mb = predicted_b[p], run_b["phases"][p]["measured_s"]
        ra, rb = (ma / pa if pa else float("nan")), (mb / pb if pb else float("nan"))
        errors_prior.append(abs(ra - 1))
        errors_fit.append(abs(rb - 1))
        print(f"{p:<8} {pa:>10.1f} {ma:>8.1f} {ra:>6.2f}   {pb:>8.1f} {mb:>8.1f} {rb:>6.2f}")
    ta, tb = run_a["phases_total"], run_b["phases_total"]
    print(f"{'total':<8} {ta['predicted_s']:>10.1f} {ta['measured_s']:>8.1f} {ta['measured_s'] / ta['predicted_s']:>6.2f}"
          f"   {sum(predicted_b.values()):>8.1f} {tb['measured_s']:>8.1f} {tb['measured_s'] / sum(predicted_b.values()):>6.2f}")
    print(f"max phase error (priors): {100 * max(errors_prior):.0f}%")
    print(f"max phase error (plan from run A): {100 * max(errors_fit):.0f}%")
    print(f"every phase within +-25%: priors {'yes' if max(errors_prior) <= 0.25 else 'NO'}, "
          f"plan from run A {'yes' if max(errors_fit) <= 0.25 else 'NO'}")

    # Run C: priors 3x too optimistic under a budget the true costs would overrun at full settings.
    prior = preset("cpu-tiny").throughput
    fast = Throughput(**{k: (v * 3 if k.endswith("per_s") else v if k == "decode_output_fill" else v / 3)
                         for k, v in asdict(prior).items()})
    fast_file = args.out / "priors-3x-fast.json"
    fast_file.write_text(json.dumps(asdict(fast)))
    start_delay = _plan_delay(args.out / "run-a")
    tight = args.tight or round(start_delay + 0.8 * ta["measured_s"] + 10.0)
    run_c = dry_run(challenges=challenges, solutions=solutions, budget_seconds=tight, out_dir=args.out / "run-c",
                    throughput_file=fast_file)
    pc = run_c["phases"]
    print(f"\nrun C: priors 3x too fast, budget {tight:.0f}s (run A measured {ta['measured_s']:.0f}s of phases, "
          f"{start_delay:.0f}s before its plan); first plan rung {run_c['plan']['settings']['rung']}")
    print(f"{'phase':<8} {'plan':>8} {'run C':>8} {'ratio':>6}")
    for p in PHASES:
        ratio = pc[p]["measured_s"] / pc[p]["predicted_s"] if pc[p]["predicted_s"] else float("nan")
        print(f"{p:<8} {pc[p]['predicted_s']:>8.1f} {pc[p]['measured_s']:>8.1f} {ratio:>6.2f}")
    for e in _events(args.out / "run-c"):
        if e["phase"] == "replan":
            print(f"re-plan at {e['start'] - run_c_start(args.out / 'run-c'):.0f}s: {e['before']['rung']} -> "
                  f"{e['after']['rung']} (steps {e['after']['train_steps']}, views {e['after']['views_per_test']}, "
                  f"score views {e['after']['score_views']}), predicted {sum(e['predicted_s'].values()):.0f}s "
                  f"of {e['available_s']:.0f}s left")
    overruns = 0
    for name, rep in (("A", run_a), ("B", run_b), ("C", run_c)):
        missing = [p for p in ("train", "decode", "score") if rep["phases"][p]["measured_s"] <= 0]
        late = not rep["budget"]["finished_before_deadline"]
        overruns += bool(missing or late)
        print(f"run {name}: wall {rep['budget']['wall_s']:.1f}s of {rep['budget']['limit_s']:.0f}s, before deadline "
              f"{'yes' if not late else 'NO'}, phases not reached: {missing or 'none'}, status {rep.get('status')}")
    print(f"overruns: {overruns}")


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def run_c_start(out: Path) -> float:
    return json.loads((out / "report.json").read_text())["budget_start"]


def _plan_delay(out: Path) -> float:
    """Seconds from the run's start to its workers' launch (load, tiny model, imports): not in the phases."""
    rep = json.loads((out / "report.json").read_text())
    starts = [e["start"] for e in _events(out) if e["phase"] == "worker" and e["status"] == "start"]
    return max(0.0, min(starts, default=rep["budget_start"]) - rep["budget_start"])


if __name__ == "__main__":
    main()
