"""The kit's command line: dry run of the notebook, scoring, validation, planning, program expert, bundle.

    .venv/bin/python build_submission.py dry-run --budget-seconds 600                # the main job
    .venv/bin/python build_submission.py dry-run --inject-fault worker-crash --out out/fault-crash
    .venv/bin/python build_submission.py score out/dry-run/submission.json arcttt_kaggle/sample_data/arc-agi_test_solutions.json
    .venv/bin/python build_submission.py validate out/dry-run/submission.json arcttt_kaggle/sample_data/arc-agi_test_challenges.json
    .venv/bin/python build_submission.py plan --preset t4x2 --challenges ../shared/data/arc-agi-1/arc-agi_evaluation_challenges.json
    .venv/bin/python build_submission.py plan --preset t4x2 --model /kaggle/input/arc-base-model      # memory + disk
    .venv/bin/python build_submission.py programs --challenges F --solutions F --seconds-per-task 10 --out out/programs.json
    .venv/bin/python build_submission.py bundle --out out/bundle --python 3.12 --cuda 13 --accelerator l4x4 [--no-wheels]
    .venv/bin/python build_submission.py pretrain --data ../shared/data/arc-agi-1/arc-agi_training_challenges.json \
        --exclude ../shared/data/arc-agi-1/arc-agi_evaluation_challenges.json --out out/arc-model --minutes 10
    .venv/bin/torchrun --nproc-per-node 2 build_submission.py pretrain ...            # data parallel, any world size

A thin caller: every subcommand is a few lines over functions of ``arcttt_kaggle``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "arcttt_kaggle" / "sample_data"
STARTER = Path(__file__).resolve().parent / "models" / "arc-starter"  # the model the kit trained (its MODEL_CARD.md)


def cmd_dry_run(a) -> int:
    from arcttt_kaggle.kaggle.dryrun import MODEL_SETTINGS, dry_run, model_settings
    from arcttt_kaggle.run.report import format_summary
    from arcttt_kaggle.arc.submission import validate_submission_file

    challenges = Path(a.challenges or SAMPLE / "arc-agi_test_challenges.json")
    solutions = Path(a.solutions) if a.solutions else (SAMPLE / "arc-agi_test_solutions.json" if not a.challenges else None)
    out = Path(a.out)
    overrides = json.loads(a.overrides) if a.overrides else {}
    model = None if a.model == "tiny" else Path(a.model)
    if model is not None and not (model / "config.json").exists():
        print(f"dry-run: {model} is not a model folder (no config.json); --model tiny runs the random tiny model",
              file=sys.stderr)
        return 2
    throughput = a.throughput_file
    if throughput is None and model is not None and (model / "measured_throughput.json").exists():
        throughput = model / "measured_throughput.json"  # the model's own measured speed on this machine: the priors
    print(f"dry-run: model {model or 'tiny (random weights)'}; throughput priors {throughput or 'the preset'}",
          flush=True)
    settings = model_settings(model, overrides)
    if settings != overrides:
        print(f"dry-run: settings from {model / MODEL_SETTINGS} (under --overrides): "
              f"{json.dumps({k: v for k, v in settings.items() if k not in overrides})}", flush=True)
    overrides = settings
    report = dry_run(preset=a.preset, challenges=challenges, solutions=solutions, budget_seconds=a.budget_seconds,
                     out_dir=out, fault=a.inject_fault or "", overrides=overrides, throughput_file=throughput,
                     model=model)
    print(format_summary(report))
    # Against the file the run read (the bad-task fault runs on a copy with a malformed task added).
    problems = validate_submission_file(out / "submission.json", Path(report["dry_run"]["challenges"]))
    print(f"validate: {'OK' if not problems else problems}")
    print(f"wrote {out / 'submission.json'}, {out / 'report.json'}, {out / 'report.html'}, {out / 'timeline.png'}")
    if report["dry_run"]["failed"]:
        print(f"the notebook failed, as the Kaggle save run would: {report['dry_run']['failed']}")
    return 1 if problems or report["dry_run"]["failed"] else 0


def cmd_score(a) -> int:
    from arcttt_kaggle.arc.scoring import score_submission_files

    rep = score_submission_files(a.submission, a.solutions)
    print(rep.format_table())
    return 0


def cmd_validate(a) -> int:
    from arcttt_kaggle.arc.submission import validate_submission_file

    problems = validate_submission_file(a.submission, a.challenges)
    for p in problems:
        print(f"invalid: {p}", file=sys.stderr)
    if not problems:
        print(f"{a.submission}: valid for {a.challenges}")
    return 1 if problems else 0


def cmd_plan(a) -> int:
    from arcttt_kaggle.run.budget import Throughput
    from arcttt_kaggle.run.config import budget_overrides, preset
    from arcttt_kaggle.run.pipeline import plan_only, plan_profile

    if not a.challenges and not a.model:
        print("plan: give --challenges FILE (time plan) and/or --model PATH (memory and disk plan)", file=sys.stderr)
        return 2
    cfg = replace(preset(a.preset), challenges=a.challenges or "")
    tasks = None
    if a.challenges:
        if a.throughput_file:
            cfg = replace(cfg, throughput=Throughput.from_file(a.throughput_file))
        if a.budget_seconds:
            cfg = budget_overrides(cfg, a.budget_seconds)
        profile = plan_profile(cfg, a.model)
        plan, tasks, rejected = plan_only(cfg, profile)
        print(f"preset {cfg.preset}: {len(tasks)} tasks ({len(rejected)} rejected), {cfg.workers} worker(s), "
              f"budget {cfg.budget.limit_seconds:.0f}s - margin {cfg.budget.safety_margin_seconds:.0f}s; format "
              f"profile {profile}; decode {cfg.decode.method}")
        print(plan.format_table())
    if a.model:
        from arcttt_kaggle.engines.memory import ModelShape, plan_memory, run_from_config

        shape = ModelShape.from_dir(a.model)
        n = len(tasks) if tasks is not None else a.tasks
        print(f"model {a.model}: {shape.params / 1e9:.2f}B params ({shape.layers} layers, hidden {shape.hidden}, "
              f"vocab {shape.vocab}); preset {cfg.preset}: per GPU ({cfg.workers} GPU(s) of {cfg.gpu_memory_gib} GiB), "
              f"{n} tasks")
        mem = plan_memory(shape, run_from_config(cfg, tasks=n))
        print("\n".join(mem.lines()))
    return 0


def cmd_programs(a) -> int:
    from arcttt_kaggle.arc.data import load_challenges
    from arcttt_kaggle.programs.expert import ProgramsConfig, run_expert
    from arcttt_kaggle.arc.scoring import expert_accuracy
    from arcttt_kaggle.arc.submission import build_submission, write_submission

    loaded = load_challenges(a.challenges, strict=False, solutions=a.solutions)
    tasks = list(loaded.tasks.values())
    cfg = ProgramsConfig(seconds_per_task=a.seconds_per_task, workers=a.workers)
    cands, stats = run_expert(tasks, cfg, out_path=Path(a.out), progress=True)
    print(f"candidate file: {a.out}  ({stats})")
    if a.submission_out:
        answers = {tid: [tuple(c.grid for c in per_test[:2]) + (None,) * (2 - len(per_test[:2])) for per_test in tests]
                   for tid, tests in cands.items()}
        write_submission(a.submission_out, build_submission(loaded.tasks, answers))
        print(f"expert-only submission: {a.submission_out}")
    if a.solutions:
        acc = expert_accuracy(loaded.tasks, cands)
        print(f"tasks {acc['tasks']}  solved {acc['solved']} ({acc['solved_pct']:.1f}%)  with a verified program "
              f"{acc['verified']}  verified but wrong {acc['verified_wrong']} ({acc['verified_wrong_pct']:.1f}%)")
    return 0


def cmd_bundle(a) -> int:
    from arcttt_kaggle.kaggle.bundle import BundleConfig, build_bundle, relock

    if a.relock:
        print(f"wrote {relock(a.python, a.cuda)}")
        return 0
    cfg = BundleConfig(out_dir=Path(a.out), python=a.python, cuda=a.cuda, accelerator=a.accelerator,
                       user=a.kaggle_user, model_dataset=a.model_dataset, competition=a.competition,
                       docker_pinning=a.docker_pinning, docker_image=a.docker_image, with_wheels=not a.no_wheels)
    res = build_bundle(cfg)
    print(json.dumps({k: v if k != "wheels" else f"{len(v)} files" for k, v in res.items()}, indent=1))
    print("upload:\n  " + "\n  ".join(res["upload"]))
    return 0


def cmd_pretrain(a) -> int:
    from arcttt_kaggle.pretrain.corpus import CorpusConfig
    from arcttt_kaggle.pretrain.distributed import env_rank
    from arcttt_kaggle.pretrain.loop import PretrainConfig, pretrain

    if a.init and (a.shape or a.profile):
        raise SystemExit(f"pretrain: --init {a.init} is a model folder with its own shape and profile: drop "
                         f"{' and '.join(f for f, v in (('--shape', a.shape), ('--profile', a.profile)) if v)}")
    main_rank = env_rank() == 0  # under torchrun every rank runs this; rank 0 alone speaks
    if not a.exclude and main_rank:
        print("pretrain: WARNING: no --exclude: nothing is held out, so no ARC task may be used to evaluate this "
              "model (benchmarks/ablation.py refuses tasks it was trained on)", file=sys.stderr)
    corpus = CorpusConfig(views_per_task=a.views_per_task, examples_per_task=a.examples_per_task,
                          tokens_per_batch=a.tokens_per_batch, seed=a.seed,
                          synthetic_tasks=a.synthetic_tasks)
    cfg = PretrainConfig(shape=a.shape or "arc-tiny", profile=a.profile or "kit", max_seq_len=a.max_seq_len,
                         minutes=a.minutes,
                         tokens=a.tokens, lr=a.lr, checkpoint_minutes=a.checkpoint_minutes, seed=a.seed, corpus=corpus)
    rec = pretrain(a.data, a.out, cfg, exclude=a.exclude or (), init=a.init, resume=a.resume, fsdp=a.fsdp,
                   gradient_checkpointing=a.gradient_checkpointing)
    if not main_rank:
        return 0
    d = rec["data"]
    print(f"data: {d['tasks_read']} tasks read, {d['excluded_by_id']} excluded by id, {d['excluded_by_content']} "
          f"by content, {d['tasks_kept']} kept ({d['pairs_kept']} pairs)")
    print(f"trained {rec['parameters'] / 1e6:.2f}M params on {rec['device']} ({rec['dtype']}): {rec['steps']} steps, "
          f"{rec['tokens_seen']:,} tokens in {rec['train_seconds']:.0f} s ({rec['tokens_per_second']:.0f} tok/s), "
          f"final loss {rec['final_loss']:.4f}")
    if rec["world_size"] > 1:
        dd = rec["distributed"]
        print(f"data parallel: {rec['world_size']} ranks ({dd['backend']}{', FSDP2' if dd['fsdp'] else ', DDP'}), "
              f"{dd['tokens_per_second_per_rank']:.0f} tok/s per rank; global batch {dd['global_batch']['rows']:.1f} "
              f"rows, {dd['global_batch']['tokens']:.0f} tokens")
    print(f"wrote the model folder {a.out} (pretrain.json, loss.png; checkpoint/ for --resume)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from arcttt_kaggle.engines.format import PROFILES
    from arcttt_kaggle.pretrain.shapes import SHAPES
    from arcttt_kaggle.pretrain.synthetic import FAMILIES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dry-run", help="execute the notebook locally on the sample with the starter model")
    d.add_argument("--preset", default="cpu-tiny")
    d.add_argument("--model", default=str(STARTER), help="model folder (default: the starter model the kit trained, "
                   "models/arc-starter); 'tiny' for the random-weight tiny model")
    d.add_argument("--challenges")
    d.add_argument("--solutions")
    d.add_argument("--budget-seconds", type=float, default=600.0)
    d.add_argument("--out", default="out/dry-run")
    d.add_argument("--inject-fault", help="comma-separated faults to inject, NAME or NAME@MOMENT (see run/faults.py), e.g. worker-crash or worker-crash@3")
    d.add_argument("--overrides", help="JSON object of dotted config keys, e.g. '{\"train.steps\": 8}'")
    d.add_argument("--throughput-file", help="measured_throughput.json of an earlier run on this machine: the plan's priors")
    d.set_defaults(fn=cmd_dry_run)
    s = sub.add_parser("score", help="score a submission against solutions")
    s.add_argument("submission")
    s.add_argument("solutions")
    s.set_defaults(fn=cmd_score)
    v = sub.add_parser("validate", help="check a submission against a challenges file")
    v.add_argument("submission")
    v.add_argument("challenges")
    v.set_defaults(fn=cmd_validate)
    pl = sub.add_parser("plan", help="predicted time per phase and per GPU, and the settings that fit")
    pl.add_argument("--preset", default="t4x2")
    pl.add_argument("--challenges", help="challenges file: the time plan per phase and per GPU")
    pl.add_argument("--model", help="model folder: the memory plan per GPU (train, decode, score) and the disk plan")
    pl.add_argument("--tasks", type=int, default=120, help="tasks for the disk plan when no --challenges is given")
    pl.add_argument("--throughput-file")
    pl.add_argument("--budget-seconds", type=float)
    pl.set_defaults(fn=cmd_plan)
    pr = sub.add_parser("programs", help="run the CPU program expert alone")
    pr.add_argument("--challenges", required=True)
    pr.add_argument("--solutions")
    pr.add_argument("--seconds-per-task", type=float, default=10.0)
    pr.add_argument("--workers", type=int, default=1)
    pr.add_argument("--out", default="out/programs.json")
    pr.add_argument("--submission-out")
    pr.set_defaults(fn=cmd_programs)
    b = sub.add_parser("bundle", help="build the Kaggle upload folder (dataset: kit + wheelhouse; notebook)")
    b.add_argument("--out", default="out/bundle")
    b.add_argument("--python", choices=["3.12", "3.11"], default="3.12",
                   help="the kernel's Python (Kaggle's image: 3.12 since 2025-12-12)")
    b.add_argument("--cuda", type=int, choices=[12, 13], default=13,
                   help="13: vLLM 0.32.0 + torch 2.13.0 (driver >= 580; the engines CI tests); 12: vLLM 0.19.1 + "
                        "torch 2.10.0 (driver >= 525, what Kaggle's own cu128 torch runs on; not tested by CI)")
    b.add_argument("--accelerator", choices=["t4x2", "l4x4"], default="l4x4",
                   help="kernel-metadata machine_shape: t4x2 -> NvidiaTeslaT4, l4x4 -> NvidiaL4")
    b.add_argument("--no-wheels", action="store_true", help="skip the wheelhouse download (tests)")
    b.add_argument("--kaggle-user", default="your-kaggle-username")
    b.add_argument("--model-dataset", default="your-kaggle-username/arc-base-model")
    b.add_argument("--competition", default="arc-prize-2026-arc-agi-2")
    b.add_argument("--docker-pinning", choices=["original", "latest"], default="",
                   help="kernel-metadata docker_image_pinning_type (original: keep the first run's image)")
    b.add_argument("--docker-image", default="", help="kernel-metadata docker_image (an image URI)")
    b.add_argument("--relock", action="store_true",
                   help="re-resolve locks/kaggle-pyPY-cuCU.txt from requirements.txt with uv, then exit")
    b.set_defaults(fn=cmd_bundle)
    pt = sub.add_parser("pretrain", help="train an ARC model (from scratch or a model folder) on Kaggle-format tasks")
    pt.add_argument("--data", nargs="+", required=True,
                    help="*_challenges.json files; a *_solutions.json beside one adds its test pairs")
    pt.add_argument("--exclude", nargs="*", help="challenges files whose tasks are held out: any training task "
                    "sharing an id or an (input, output) pair (up to rotations, flips and colours) with them is "
                    "dropped; without it nothing is held out (a warning says so)")
    pt.add_argument("--out", required=True, help="the model folder to write")
    pt.add_argument("--shape", choices=sorted(SHAPES), help="model shape from scratch (default arc-tiny: this CPU; "
                    "arc-small or larger: a GPU); refused with --init")
    pt.add_argument("--profile", choices=list(PROFILES), help="prompt layout of a new model (default kit); refused "
                    "with --init (the model folder has its own)")
    pt.add_argument("--init", help="continue from this model folder instead of a new model")
    pt.add_argument("--resume", action="store_true", help="continue OUT/checkpoint with the same arguments (the data "
                    "files' SHA-256, exclusions and init are checked; a mismatch is refused by name)")
    pt.add_argument("--minutes", type=float, default=0.0, help="training time budget in minutes (0: none)")
    pt.add_argument("--tokens", type=int, default=0, help="token budget (0: none; set this or --minutes)")
    pt.add_argument("--max-seq-len", type=int, default=2048, help="longest training sequence in tokens; longer "
                    "examples lose demonstrations, then are dropped")
    pt.add_argument("--tokens-per-batch", type=int, default=8192, help="padded tokens per batch (memory grows "
                    "linearly with it)")
    pt.add_argument("--views-per-task", type=int, default=256, help="each task's pool of distinct views (dihedral x "
                    "colour permutation, identity first); every example draws one uniformly (1: no augmentation)")
    pt.add_argument("--examples-per-task", type=int, default=8, help="sequences per task per epoch, each with its "
                    "own view, query and demonstration order")
    pt.add_argument("--synthetic-tasks", type=int, default=0,
                    help="fresh synthetic tasks per epoch beside the real ones, from the families "
                         f"{', '.join(FAMILIES)} (arcttt_kaggle/pretrain/synthetic.py)")
    pt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warmup, then cosine to 0.1x)")
    pt.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between atomic checkpoints")
    pt.add_argument("--seed", type=int, default=0, help="weight and data seed")
    pt.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights, gradients and AdamW state "
                    "across the ranks (FSDP2) instead of replicating them (DDP), for a model one device cannot hold")
    pt.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward "
                    "(less memory, ~30%% more compute)")
    pt.set_defaults(fn=cmd_pretrain)
    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
