"""The time-budgeted run: ``run(config)`` is the whole product; the notebook and the CLI only call it.

Order of events:
1. the budget starts; the resolved config is written; tasks load leniently (a malformed task is reported and
   gets a placeholder answer); the fallback submission is written at once, so a valid file exists from the
   first second;
2. the preflight's engine ladder and the memory plan change the config where they must (``planned_downgrades``:
   each change is a downgrade the report's status names); the plan predicts per-phase time, walks the
   degradation ladder until it fits, and balances tasks over the workers (longest-processing-time first, see
   ``budget.balance``);
3. the CPU program expert starts in its own process, and one worker process per GPU (``worker.py``) with
   ``CUDA_VISIBLE_DEVICES`` set before it imports any engine;
4. the parent watches: each time a worker writes candidates the current best answers are merged in and the
   submission rewritten atomically; a worker that dies has its unfinished tasks reassigned to a replacement
   worker that skips TTT (if the time left affords it) or left on their fallback, and the report says which;
5. at the work deadline stragglers are terminated; the final selection (voting / product of experts / the
   program-expert rule) is merged with the fallbacks and written, before the deadline, whatever state
   workers are in; the report, the timeline and the run log are written last.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from .budget import Budget, CostModel, make_plan
from arcttt_kaggle.arc.candidates import CandidateSet, atomic_write_text, merge_candidate_sets, read_candidate_file
from .config import RunConfig
from .faults import FaultPlan
from arcttt_kaggle.arc.data import Task, load_challenges
from .planning import TokenModel, adapter_quotas, full_settings, task_works
from .report import ENGINE_NAMES
from arcttt_kaggle.arc.submission import build_submission, count_test_inputs, fallback_attempts, write_submission
from .preflight import memory_overrides
from .worker import WorkerSpec, read_events, training_grace

# What a run writes into its output folder. A new run removes these first (never reads them): a second run into
# the same folder must not merge the first one's candidates, adapters or events into its submission.
RUN_ARTIFACTS = ("work", "events.jsonl", "run.log", "programs.json", "report.json", "report.html",
                 "measured_throughput.json", "timeline.png", "config.json")


class RunLog:
    """Log lines with elapsed and remaining budget, to stdout and ``run.log``."""

    def __init__(self, path: Path, budget: Budget):
        self.path, self.budget = path, budget

    def __call__(self, phase: str, message: str = "") -> None:
        line = self.budget.log_line(phase, message)
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def resolve_model(cfg: RunConfig) -> Path:
    """The base model folder; 'tiny' builds the tiny ARC model into the output folder (well under a second)."""
    if cfg.model != "tiny":
        p = Path(cfg.model)
        if not p.is_dir():
            raise FileNotFoundError(f"base model folder {p} does not exist (attach the model dataset)")
        return p
    from arcttt_kaggle.engines.tinymodel import ensure_tiny_model

    return ensure_tiny_model(Path(cfg.out_dir) / "tiny-model", cfg.tiny_model)


def thread_budget(cores: int, workers: int, expert_processes: int, device: str) -> dict[str, int]:
    """Threads each process may use, so the program expert and the workers never oversubscribe the cores.

    Oversubscribed OpenMP threads spin-wait on each other: with another process busy on this 2-core box a dry
    run's train and decode phases took ~15x their planned time. The expert's processes get one thread each
    (numpy on small grids gains nothing from more). On CPU the workers split all cores (the expert is short and
    its core is shared fairly with passive OpenMP waiting); on GPU they split what the expert leaves, at least one.
    """
    cores, workers = max(1, cores), max(1, workers)
    if device == "cpu":
        return {"worker": max(1, cores // workers), "expert": 1}
    return {"worker": max(1, (cores - expert_processes) // workers), "expert": 1}


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps a process's BLAS/OpenMP threads (set before it imports numpy or torch)."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "NUMEXPR_NUM_THREADS": n,
            # A thread that finds its core taken sleeps instead of spinning (the 15x slowdown above).
            "OMP_WAIT_POLICY": "PASSIVE", "ARCTTT_THREADS": n}


def worker_env(base: Mapping[str, str], threads: int, *, device: str, worker: int, work_dir: Path,
               cpu_kvcache_gib: float) -> dict[str, str]:
    """The environment of worker ``worker`` (its folder ``work_dir``): ``base`` with its thread caps, its GPU
    (``CUDA_VISIBLE_DEVICES``, read before the worker imports Unsloth or vLLM), its own Unsloth compile cache,
    and defaults for vLLM and tokenizers that ``base`` may override."""
    env = {**base, **thread_env(threads)}
    if device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = str(worker)
    # Always the worker's own folder, even over a caller's setting: workers starting together would otherwise
    # write and import one compile cache (Unsloth's default: ./unsloth_compiled_cache) at the same time.
    env["UNSLOTH_COMPILE_LOCATION"] = str(Path(work_dir) / "unsloth_compiled_cache")
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, cpu_kvcache_gib))))
    # vLLM samples with FlashInfer where it is installed; its kernels can be compiled at first use, a step that
    # public Kaggle ARC notebooks switch off. vLLM's PyTorch sampler needs no compiler.
    env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def clear_previous_run(out: Path) -> list[str]:
    """Remove what an earlier run left in ``out`` (``RUN_ARTIFACTS``); returns the names removed."""
    removed = []
    for name in RUN_ARTIFACTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


# The config key a memory-plan setting (``MemoryPlan.settings``) is applied through (``preflight.memory_overrides``).
_APPLIED_AS = {"poe_scoring": "select.method"}


def planned_downgrades(cfg: RunConfig, memory=None, ladder=None, preset_choice=None) -> tuple[dict, list[dict]]:
    """What the preflight and the memory plan change before any worker starts: ``(overrides, downgrades)``.

    ``overrides``: the config keys to set (``preflight.memory_overrides``, then the engine ladder's rungs: vLLM ->
    transformers decoding, Unsloth -> PEFT training, no training rung -> no TTT). ``downgrades``: one record per
    change, ``{"source": "memory plan" | "preflight", "setting", "was", "now", "what", "why"}``: ``what`` runs
    instead of what, and ``why`` (``report.run_status`` names each one: the run is degraded). ``memory``: a
    ``memory.MemoryPlan`` (None: not planned); ``ladder``: a ``preflight.EngineLadder`` (None: not probed);
    ``preset_choice``: the preflight's ``PresetChoice`` (a refused ARCTTT_PRESET is one more downgrade)."""
    overrides = memory_overrides(memory, cfg) if memory is not None else {}
    downs: list[dict] = []

    def record(source: str, setting: str, was, now, what: str, why: str) -> dict:
        return {"source": source, "setting": setting, "was": was, "now": now, "what": what, "why": why}

    if preset_choice is not None and getattr(preset_choice, "refused", ""):
        downs.append(record("preflight", "preset", preset_choice.requested, preset_choice.name,
                            f"preset {preset_choice.name} instead of {preset_choice.requested}", preset_choice.refused))
    for d in memory.downgrades() if overrides else []:
        key = _APPLIED_AS.get(d["setting"], d["setting"])
        if key not in overrides:
            continue
        downs.append(record("memory plan", key, d["was"], overrides[key], d["what"], d["why"]))
    if ladder is not None:
        for stage, verb in (("train", "training"), ("decode", "decoding")):
            rung, err = getattr(ladder, stage)
            configured = getattr(cfg, stage).backend
            if rung is not None and rung != configured:
                overrides[f"{stage}.backend"] = rung
            if rung is not None and rung != configured and err:  # a rung above failed (not a configured lower one)
                downs.append(record("preflight", f"{stage}.backend", configured, rung,
                                    f"{verb} on {ENGINE_NAMES.get(rung, rung)} instead of "
                                    f"{ENGINE_NAMES.get(configured, configured)}", err))
        if ladder.train[0] is None and ladder.train[1] != "not probed":
            overrides["run_ttt"] = False  # no training rung works: decode with the base model
            if cfg.run_ttt:
                downs.append(record("preflight", "run_ttt", True, False, "no TTT: the base model decodes every task "
                                    "instead of per-task adapters", f"no training engine works: {ladder.train[1]}"))
        downs += _replan_for_rungs(cfg, memory, overrides)
    return overrides, downs


def _replan_for_rungs(cfg: RunConfig, memory, overrides: dict) -> list[dict]:
    """The memory plan was made for the configured engines; when the ladder picked others (transformers decoding
    instead of vLLM, PEFT training instead of Unsloth), plan again for the engines that will run and apply what
    that plan lowers (``overrides`` is updated). One downgrade record per lowered setting, its reason naming the
    rung it was planned for."""
    from arcttt_kaggle.engines.memory import NO_FIT, NOT_PLANNED, plan_memory

    if memory is None or memory.shape is None or memory.verdict == NOT_PLANNED:
        return []
    rungs = {"train_backend": overrides.get("train.backend", memory.run.train_backend),
             "decode_backend": overrides.get("decode.backend", memory.run.decode_backend)}
    if all(getattr(memory.run, k) == v for k, v in rungs.items()):
        return []
    again = plan_memory(memory.shape, replace(memory.run, **rungs))
    engines = f"{ENGINE_NAMES.get(rungs['train_backend'], rungs['train_backend'])} training and " \
              f"{ENGINE_NAMES.get(rungs['decode_backend'], rungs['decode_backend'])} decoding"
    applied = memory_overrides(again, cfg)
    downs = []
    for d in again.downgrades():
        key = _APPLIED_AS.get(d["setting"], d["setting"])
        if key in applied and overrides.get(key) != applied[key]:
            overrides[key] = applied[key]
            downs.append({"source": "memory plan", "setting": key, "was": d["was"], "now": applied[key],
                          "what": d["what"], "why": f"re-planned for {engines}: {d['why']}"})
    if again.verdict == NO_FIT:
        downs.append({"source": "memory plan", "setting": "memory", "was": memory.verdict, "now": again.verdict,
                      "what": f"{engines} do not fit the card at any setting the plan tries",
                      "why": "; ".join(again.changes)})
    return downs


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a worker's whole process group (it leads its own session): its training child goes with it."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _programs_main(task_dicts: dict, programs_cfg, deadline: float, out_path: str) -> None:
    """Entry of the program-expert process (spawned: nothing of the parent's engines is inherited)."""
    from arcttt_kaggle.programs.expert import run_expert

    tasks = [Task.from_dict(tid, d) for tid, d in task_dicts.items()]
    run_expert(tasks, programs_cfg, deadline=deadline, out_path=Path(out_path))


def _gc_paused():
    """A context manager: Python's cyclic garbage collector off inside it, back on after it (an exception too)
    only if it was on before. ``Run.finish`` builds a few hundred thousand objects (every candidate, twice) and
    frees almost none, so collections there are pure cost."""
    import gc
    from contextlib import contextmanager

    @contextmanager
    def paused():
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()

    return paused()


class Run:
    """State of one run; ``execute`` drives it. Split out of ``run`` so each step reads on its own."""

    def __init__(self, cfg: RunConfig, start: float | None = None):
        self.cfg = cfg
        self.faults = FaultPlan.parse(cfg.fault)  # injected faults (tests, the soak); parsed once
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.budget = Budget(cfg.budget, start=start)
        self.cleared = clear_previous_run(self.out)
        self.log = RunLog(self.out / "run.log", self.budget)
        self.workers: list[dict] = []
        self.reasons: dict[str, list[str]] = {}
        self.parent_events: list[dict] = []
        self.programs_proc = None
        self.preflight = None
        self.downgrades: list[dict] = []  # decided before the workers start (``planned_downgrades``)
        self.joint_seconds, self.joint_outcome = 0.0, None  # the joint stage's share (``plan``) and result (``joint``)
        self.threads = thread_budget(len(os.sched_getaffinity(0)), cfg.workers,
                                     cfg.programs.workers if cfg.run_programs else 0, cfg.device)

    def event(self, phase: str, status: str, start: float, **info) -> None:
        self.parent_events.append({"worker": -1, "phase": phase, "status": status, "task": info.pop("task", ""),
                                   "start": start, "end": time.time(), **info})

    def reason(self, task_id: str, why: str) -> None:
        self.reasons.setdefault(task_id, []).append(why)

    # -- 1. load and fallback ------------------------------------------------------------------------------
    def load(self) -> None:
        t0 = time.time()
        cfg = self.cfg
        atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=1, default=str))
        raw = json.loads(Path(cfg.challenges).read_text(encoding="utf-8"))
        loaded = load_challenges(cfg.challenges, strict=False)
        self.all_tasks = loaded.tasks
        self.rejected = loaded.rejected
        counts = count_test_inputs(raw) if isinstance(raw, dict) else {}
        self.placeholders = {r.task_id: counts.get(r.task_id, 1) for r in self.rejected}
        for r in self.rejected:
            self.reason(r.task_id, f"rejected at load: {r.reason}")
            self.log("load", f"task {r.task_id} rejected: {r.reason}")
        ids = list(self.all_tasks)
        chosen = ids[:cfg.max_tasks] if cfg.max_tasks else ids
        self.tasks = {tid: self.all_tasks[tid] for tid in chosen}
        for tid in ids[len(chosen):]:
            self.reason(tid, f"not attempted: max_tasks={cfg.max_tasks} (short mode)")
        self.write_submission({})
        self.event("load", "ok", t0, tasks=len(self.all_tasks), rejected=len(self.rejected))
        self.log("load", f"{len(self.all_tasks)} tasks ({len(self.rejected)} rejected); fallback submission written")

    def write_submission(self, answers: dict) -> None:
        sub = build_submission(self.all_tasks, answers, placeholders=self.placeholders)
        write_submission(self.cfg.submission_file, sub)

    # -- 2. preflight (model, memory, engines) and plan ----------------------------------------------------------
    def check_model_and_engines(self) -> None:
        """The preflight's second half, while the program expert runs: the model folder, its tokenizer through
        ``ArcFormat``, the memory plan, and (``probe_engines``) each engine rung in a child process; then
        ``apply_checks``."""
        from .preflight import check_model, probe_engines

        t0, cfg, pre = time.time(), self.cfg, self.preflight
        model = str(resolve_model(cfg)) if cfg.model == "tiny" else cfg.model
        gpu_mem = min((g.memory_gib for g in pre.gpus), default=0.0) if cfg.device == "cuda" else None
        check = check_model(model, cfg, gpu_mem, tasks=len(self.tasks))
        # The vLLM probe starts with the decode settings the run will have: the memory plan's, applied.
        planned = cfg.with_overrides(memory_overrides(check.memory, cfg)) if check.ok and check.memory else cfg
        ladder = probe_engines(model if check.ok else None, check.ok, dtype=cfg.decode.dtype, decode=planned.decode) \
            if cfg.probe_engines and check.ok else None
        self.apply_checks(check, ladder, t0)

    def apply_checks(self, check, ladder, t0: float | None = None) -> None:
        """Complete the preflight result with the model check (``preflight.ModelCheck``, its memory plan) and the
        engine ladder (``preflight.EngineLadder`` or None), and apply what they decide before any worker starts
        (``planned_downgrades``): a memory plan that degrades lowers the settings it names, a rung that fails
        moves the run to the next one (vLLM -> transformers, Unsloth -> PEFT). Each change is kept in
        ``downgrades`` (the report's status names it) and logged."""
        from dataclasses import fields as dc_fields

        from .preflight import PreflightResult

        t0, cfg, pre = time.time() if t0 is None else t0, self.cfg, self.preflight
        keep = {f.name: getattr(pre, f.name) for f in dc_fields(pre) if f.name not in ("fatal", "warnings")}
        self.preflight = PreflightResult.build(**{**keep, "model": check, "engines": ladder,
                                                  "seconds": pre.seconds + time.time() - t0})
        overrides, self.downgrades = planned_downgrades(cfg, check.memory if check.ok else None, ladder, pre.preset)
        if overrides:
            self.cfg = cfg.with_overrides(overrides)
            # config.json is the config the workers run (report.html re-selects with its selection config).
            atomic_write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=1, default=str))
            self.log("preflight", f"memory plan and engine ladder: {overrides}")
        for d in self.downgrades:
            self.log("preflight", f"downgrade: {d['source']}: {d['what']} ({d['why']})")
        for line in self.preflight.lines():
            self.log("preflight", line)
        self.event("preflight", "error" if self.preflight.fatal else "ok", t0, fatal=list(self.preflight.fatal))

    def _sixteen_bit_fits(self) -> bool | None:
        """The memory planner's answer for a 4-bit checkpoint: does its 16-bit (dequantized) copy fit vLLM and the
        scorer? None when there is no plan (CPU presets, no preflight): the checkpoint then stays 4-bit."""
        from arcttt_kaggle.engines.memory import NOT_PLANNED

        mem = getattr(getattr(self.preflight, "model", None), "memory", None)
        if mem is None or mem.verdict == NOT_PLANNED:
            return None
        return self.cfg.decode.quantization == "none"  # the plan's choice, applied by check_model_and_engines

    # -- 2. plan ---------------------------------------------------------------------------------------------
    def plan(self) -> None:
        cfg = self.cfg
        from arcttt_kaggle.engines.model_prep import prepare_model

        t_prep = time.time()  # once per run, cached in OUT_DIR/prepared-model; its time is spent before the plan
        self.prepared = prepare_model(resolve_model(cfg), cfg.format, Path(cfg.out_dir) / "prepared-model",
                                      dequantized_fits=self._sixteen_bit_fits(),
                                      dtype="float16" if cfg.train.dtype == "float16" else "bfloat16")
        self.model_path = Path(self.prepared.path)
        self.event("prepare_model", "ok", t_prep, **self.prepared.card())
        self.cost = CostModel(cfg.throughput)
        available = max(0.0, self.budget.work_deadline() - time.time())
        # The joint stage comes first and takes its share; the workers are planned on what it leaves.
        self.joint_seconds = cfg.joint.seconds(available) if cfg.joint.enabled and self.tasks else 0.0
        if self.joint_seconds:
            available = cfg.joint.left_after(available)
        batch = cfg.train.batch_size * cfg.train.grad_accum
        self.tokens = TokenModel.of(cfg, self.prepared.profile)  # the prepared model's layout; DFS or sampling
        self.the_plan = make_plan(lambda s: task_works(self.tasks, cfg.ttt, batch, s, tokens=self.tokens),
                                  full_settings(cfg), self.cost,
                                  cfg.workers, available, scores=cfg.select.method == "poe")
        self.log("plan", f"rung {self.the_plan.settings.rung}: predicted makespan {self.the_plan.makespan:.0f}s "
                         f"of {available:.0f}s available ({'fits' if self.the_plan.fits else 'does not fit'})")

    # -- 2b. the joint test-time stage ------------------------------------------------------------------------
    def joint(self) -> None:
        """Train on every task's demonstrations together (``joint.run_joint_stage``, a child process); the workers
        then start from the folder it chose: the stage's, its last checkpoint, or the base model."""
        if not self.joint_seconds:
            return
        from .joint import run_joint_stage

        t0, cfg = time.time(), self.cfg
        env = {**os.environ, **thread_env(self.threads["worker"] * cfg.workers if cfg.device == "cpu" else 1)}
        if cfg.device == "cuda":  # every GPU of the run: one data-parallel rank each (torchrun)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(cfg.workers))
        self.log("joint", f"joint stage on {len(self.tasks)} tasks for {self.joint_seconds:.0f} s")
        outcome = run_joint_stage(list(self.tasks.values()), self.model_path, self.out / "work" / "joint" / "model",
                                  cfg.joint, self.joint_seconds, env=env, device=cfg.device,
                                  gpu_memory_gib=cfg.gpu_memory_gib, seed=cfg.seed, fault=cfg.fault,
                                  log=self.log, nproc=cfg.workers if cfg.device == "cuda" else 1)
        self.joint_outcome = outcome
        self.model_path = Path(outcome.model)
        for f in outcome.injected:  # the child recorded the fault before it struck
            self.event("fault", "injected", float(f.pop("time", t0)), **f)
        self.event("joint", "ok" if outcome.source == "joint" else "error", t0, source=outcome.source,
                   predicted_s=round(outcome.predicted_s, 2), **({"reason": outcome.reason} if outcome.reason else {}))

    # -- 3. launch -------------------------------------------------------------------------------------------
    def start_programs(self) -> None:
        self.programs_proc = None
        if not self.cfg.run_programs or not self.tasks:
            return
        ctx = mp.get_context("spawn")
        task_dicts = {tid: t.to_dict() for tid, t in self.tasks.items()}
        self.programs_path = self.out / "programs.json"
        self.programs_start = time.time()
        self.programs_proc = ctx.Process(target=_programs_main, daemon=False,
                                         args=(task_dicts, self.cfg.programs, self.budget.work_deadline(),
                                               str(self.programs_path)))
        # Spawned children inherit os.environ at start: cap the expert's threads for its start only.
        saved = {k: os.environ.get(k) for k in thread_env(1)}
        os.environ.update(thread_env(self.threads["expert"]))
        try:
            self.programs_proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.log("programs", f"program expert started (pid {self.programs_proc.pid})")

    def launch(self, worker: int, task_ids: list[str], train_steps: int, views: int, attempt: int = 0,
               fault: str | None = None) -> None:
        """Start a worker process on ``task_ids``; ``fault``: the injected faults it carries (default: the run's)."""
        cfg, now = self.cfg, time.time()
        work_deadline = self.budget.work_deadline()
        w = self.the_plan.workers[worker] if worker < len(self.the_plan.workers) else None
        secs = w.seconds if w else {"startup": 1.0, "train": 0.0, "decode": 1.0, "score": 0.0}
        total = max(1e-6, sum(secs.values()))
        span = max(0.0, work_deadline - now)
        # Phases get their predicted share of the time left: slack is spread, a shortfall squeezes all.
        train_share = min(cfg.budget.max_train_share, (secs["startup"] * 0.5 + secs["train"]) / total) if train_steps else 0
        decode_share = train_share + (secs["startup"] * 0.5 + secs["decode"]) / total
        score_share = secs["score"] / total
        decode_share = min(1.0 - score_share * 0.5, max(decode_share, train_share))
        wdir = self.out / "work" / f"worker{worker}-{attempt}"
        wdir.mkdir(parents=True, exist_ok=True)
        spec = WorkerSpec(worker=worker, task_ids=task_ids, config=cfg.to_dict(), model_path=str(self.model_path),
                          work_dir=str(wdir), train_steps=train_steps, views_per_test=views,
                          train_deadline=now + span * train_share, decode_deadline=now + span * decode_share,
                          deadline=work_deadline, fault=cfg.fault if fault is None else fault, attempt=attempt,
                          profile=self.prepared.profile,
                          extra_view_units=cfg.second_pass_ratio * views * sum(len(self.tasks[t].test) for t in task_ids),
                          max_adapters=adapter_quotas(cfg.max_adapters, [len(x.task_ids) for x in self.the_plan.workers]
                                                      )[worker] if cfg.max_adapters and w else 0)
        spec.write(wdir / "spec.json")
        env = worker_env(os.environ, self.threads["worker"], device=cfg.device, worker=worker, work_dir=wdir,
                         cpu_kvcache_gib=cfg.decode.cpu_kvcache_gib)
        logf = open(wdir / "worker.log", "w")
        # Its own session (process group): the parent can kill the worker with every process it started.
        proc = subprocess.Popen([sys.executable, "-m", "arcttt_kaggle.run.worker", str(wdir / "spec.json")],
                                env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=os.getcwd(),
                                start_new_session=True)
        self.workers.append({"worker": worker, "attempt": attempt, "proc": proc, "dir": wdir, "tasks": task_ids,
                             "log": logf, "train_steps": train_steps, "views": views, "seen_mtime": 0.0,
                             "returncode": None, "reason": "", "train_deadline": spec.train_deadline,
                             "decode_deadline": spec.decode_deadline, "training": train_steps > 0, "last_check": 0.0,
                             "train_s_per_task": secs["train"] / max(1, len(task_ids))})
        self.log("launch", f"worker {worker} attempt {attempt}: {len(task_ids)} tasks, steps {train_steps}, "
                           f"views {views}, pid {proc.pid}")

    # -- 4. watch ---------------------------------------------------------------------------------------------
    def watch(self) -> None:
        deadline = self.budget.work_deadline()
        while time.time() < deadline:
            self._inject_programs_kill()
            running = False
            for w in list(self.workers):
                if w["returncode"] is not None:
                    continue
                rc = w["proc"].poll()
                self._merge_if_new(w)
                if rc is None:
                    self._training_watchdog(w)
                    running = True
                    continue
                w["returncode"] = rc
                _kill_group(w["proc"])  # a child it left (training) must not keep holding the GPU
                done = any(e["phase"] == "worker" and e["status"] == "done" for e in _events(w["dir"]))
                if rc != 0 or not done:
                    self._on_death(w, rc)
                    running = running or any(x["returncode"] is None for x in self.workers)
            if not running:
                break
            time.sleep(0.5)
        self._stop_stragglers()

    def _training_watchdog(self, w: dict) -> None:
        """Kill a worker whose training hangs (a step that never returns, in the worker's own process, as the CPU
        preset trains): ``watch`` then sees it dead and ``_on_death`` gives its unfinished tasks to a replacement
        without TTT. Hung: no event for ten times the plan's training seconds per task (at least 60 s) once the
        trainer started, when training runs in the worker; or, either way, still training 30 s past the grace the
        worker gives an isolated training child (``worker.training_grace``) after the training deadline, the
        latest the worker's own re-plans set."""
        now = time.time()
        if not w["training"] or now < w["last_check"] + 5.0:
            return
        w["last_check"] = now
        events = _events(w["dir"])
        if any(e["phase"] == "worker" and e["status"] == "decoding" for e in events):
            w["training"] = False
            return
        replans = [e for e in events if e["phase"] == "replan" and e["status"] == "ok"]
        train_deadline = max([w["train_deadline"]] + [float(e["train_deadline"]) for e in replans])
        decode_deadline = max([w["decode_deadline"]] + [float(e["decode_deadline"]) for e in replans])
        grace = training_grace(train_deadline, decode_deadline) + 30.0
        silent = now - max((e["end"] for e in events), default=now)
        stall = max(60.0, 10.0 * w["train_s_per_task"])
        why = ""
        if not self.cfg.isolate_training and any(e["phase"] == "startup_train" for e in events) and silent > stall:
            why = f"worker {w['worker']} silent for {silent:.0f}s while training (hung): killed"
        elif now >= train_deadline + grace:
            why = f"worker {w['worker']} still training {grace:.0f}s after its training deadline: killed"
        if why:
            w["training"], w["killed_because"] = False, why
            self.log("worker", why)
            _kill_group(w["proc"])

    def _inject_programs_kill(self, wait: bool = False) -> None:
        """Injected fault 'programs-killed@S': SIGKILL the program expert S seconds (default 1) after it started
        (``wait``: sleep until then when S is at most a second, so the kill lands before the expert could finish
        the fault matrix's few tasks; a later moment is met by the watch loop)."""
        p, faults = self.programs_proc, self.faults
        if "programs-killed" not in faults or p is None or not p.is_alive():
            return
        at = self.programs_start + float(faults.at("programs-killed"))
        if wait and at - time.time() <= 1.0:
            time.sleep(max(0.0, at - time.time()))
        if time.time() >= at:
            self.event("fault", "injected", time.time(), fault="programs-killed", moment=faults.at("programs-killed"))
            p.kill()
            self.log("fault", "injected fault: program expert killed (SIGKILL)")

    def _merge_if_new(self, w: dict) -> None:
        path = w["dir"] / "candidates.json"
        if path.exists() and path.stat().st_mtime > w["seen_mtime"]:
            w["seen_mtime"] = path.stat().st_mtime
            self.write_submission(self.answers(final=False))
            self.log("merge", f"worker {w['worker']} wrote candidates: submission updated")

    def _on_death(self, w: dict, rc: int) -> None:
        have = set(_read_candidates(w["dir"] / "candidates.json"))
        lost = [t for t in w["tasks"] if t not in have]
        w["reason"] = w.get("killed_because") or f"worker {w['worker']} exited with code {rc} before finishing"
        self.log("worker", f"{w['reason']}; {len(lost)} tasks unfinished")
        if not lost:
            return
        left = self.budget.work_deadline() - time.time()
        batch = self.cfg.train.batch_size * self.cfg.train.grad_accum
        need = self.cost.startup_seconds(False, False) + sum(
            sum(self.cost.task_seconds(x).values()) for x in task_works(
                {t: self.tasks[t] for t in lost}, self.cfg.ttt, batch, replace(self.the_plan.settings, train_steps=0),
                tokens=self.tokens))
        if w["attempt"] == 0 and left > need:
            for t in lost:
                self.reason(t, f"{w['reason']}; reassigned to a replacement worker without TTT")
            self.event("worker", "replaced", time.time(), reason=w["reason"], replaced_worker=w["worker"], tasks=len(lost))
            # A fault that has not struck yet may still strike the replacement (one that struck does not repeat).
            self.launch(w["worker"], lost, 0, self.the_plan.settings.views_per_test, attempt=1,
                        fault=self.faults.spec_without(_struck(_events(w["dir"]))))
        else:
            for t in lost:
                self.reason(t, f"{w['reason']}; no time to reassign ({left:.0f}s left, {need:.0f}s needed): fallback")

    def _stop_stragglers(self) -> None:
        for w in self.workers:
            if w["proc"].poll() is None:
                _kill_group(w["proc"], signal.SIGTERM)
        t_end = time.time() + 3
        for w in self.workers:
            if w["proc"].poll() is None:
                try:
                    w["proc"].wait(timeout=max(0.1, t_end - time.time()))
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(w["proc"])  # whatever of the group is left (a hung training child), SIGKILL
            try:
                w["proc"].wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.log("worker", f"worker {w['worker']} (pid {w['proc'].pid}) did not exit 5 s after SIGKILL")
            if w["returncode"] is None:
                w["returncode"] = w["proc"].returncode
                w["reason"] = "terminated at the work deadline"
                for t in w["tasks"]:
                    if t not in _read_candidates(w["dir"] / "candidates.json"):
                        self.reason(t, f"worker {w['worker']} terminated at the deadline before decoding it: fallback")
            w["log"].close()
        if self.programs_proc is not None:
            self.programs_proc.join(timeout=max(0.0, self.budget.work_deadline() - time.time()))
            if self.programs_proc.is_alive():
                self.programs_proc.terminate()
                self.programs_proc.join(2)
            done = self.programs_path.exists()
            code = self.programs_proc.exitcode
            self.event("programs", "ok" if done else "error", self.programs_start,
                       **({} if done else {"reason": f"program expert exited with code {code} before writing "
                                                     "its answers: no program answers this run"}))
            if done:  # the bar ends when the expert wrote its file, not when the parent joined it
                self.parent_events[-1]["end"] = self.programs_path.stat().st_mtime

    # -- 5. select and write ----------------------------------------------------------------------------------
    def candidate_sets(self) -> tuple[CandidateSet, CandidateSet, CandidateSet]:
        ttt: CandidateSet = {}
        scores: CandidateSet = {}
        for w in self.workers:
            ttt = merge_candidate_sets(ttt, _read_candidates(w["dir"] / "candidates.json"))
            scores = merge_candidate_sets(scores, _read_candidates(w["dir"] / "scores.json"))
        progs = _read_candidates(self.out / "programs.json") if self.cfg.run_programs else {}
        return ttt, scores, progs

    def answers(self, final: bool) -> dict:
        from arcttt_kaggle.selection.select import attach_view_logprobs, attempts_or_fallback, select_all

        ttt, scores, progs = self.candidate_sets()
        cands = attach_view_logprobs(ttt, scores) if scores else ttt
        sels = select_all(self.tasks, cands, self.cfg.select, score_fn=None, program_set=progs)
        if final:
            self.selections = sels
            self.final_candidates = (ttt, progs)
        return {tid: [attempts_or_fallback(s, fb) for s, fb in zip(sel, fallback_attempts(self.tasks[tid]))]
                for tid, sel in sels.items()}

    def finish(self) -> dict:
        with _gc_paused():  # it frees almost nothing, and the collector took a third of its time
            from .report import build_report, write_timeline
            from .report_html import write_report_html

            t0 = time.time()
            self.write_submission(self.answers(final=True))
            self.event("final_write", "ok", t0)
            self.log("final", f"submission written to {self.cfg.submission_file}")
            events = self.parent_events + [e for w in self.workers for e in _events(w["dir"])]
            atomic_write_text(self.out / "events.jsonl", "".join(json.dumps(e, default=str) + "\n" for e in events))
            report = build_report(self, events)
            from .budget import measured_throughput

            fitted = measured_throughput(events, self.cfg.throughput)
            report["measured_throughput"] = fitted.__dict__
            report["threads"] = self.threads
            report["budget_start"] = self.budget.start
            report["replans"] = [{k: v for k, v in e.items() if k not in ("phase", "status", "end")}
                                 for e in events if e["phase"] == "replan"]
            report["cleared_previous_run"] = self.cleared
            from .budget import throughput_document

            atomic_write_text(self.out / "measured_throughput.json",
                              json.dumps(throughput_document(events, self.cfg.throughput), indent=1))
            atomic_write_text(self.out / "report.json", json.dumps(report, indent=1, default=str))
            write_timeline(events, self.budget, self.out / "timeline.png")
            try:  # last: it embeds timeline.png and reads report.json
                write_report_html(self.out)
            except Exception as e:  # noqa: BLE001 - the page a person reads must never sink a run whose files are written
                self.log("report", f"report.html NOT written: {type(e).__name__}: {e}")
            self.log("report", f"report.json and timeline.png written; wall {time.time() - self.budget.start:.1f}s")
            return report


def _struck(events: list[dict]) -> set[str]:
    """The injected faults that ``("fault", "injected")`` events in ``events`` record as struck."""
    return {e.get("fault") for e in events if e["phase"] == "fault" and e["status"] == "injected"}


def _events(wdir: Path) -> list[dict]:
    return read_events(Path(wdir) / "events.jsonl")


def _read_candidates(path: Path) -> CandidateSet:
    if not path.exists():
        return {}
    try:
        return read_candidate_file(path)[0]
    except ValueError:
        return {}


class RunFailed(RuntimeError):
    """Raised by ``run`` AFTER the submission and the report are written, when the run could only fall back and
    this is not the competition rerun: the notebook version fails, so nobody submits a dud that looked fine."""


def run(config: RunConfig, start: float | None = None, preflight=None) -> dict:
    """Run the whole pipeline under ``config``; always leaves a valid submission. Returns the report.

    ``start``: when the budget's clock started (the kernel's start on Kaggle: installs count); default now.
    ``preflight``: the ``preflight.PreflightResult`` the notebook computed; its fatal findings decide the policy.
    """
    r = Run(config, start=start)
    r.preflight = preflight
    r.log("start", f"preset {config.preset}, {config.workers} worker(s) on {config.device}, fault={config.fault or '-'}"
                   + (f"; removed the previous run's {', '.join(r.cleared)}" if r.cleared else ""))
    r.load()
    # The program expert first: it needs no model and no GPU, so it still answers when the model is missing.
    r.start_programs()
    r._inject_programs_kill(wait=True)
    try:
        if preflight is not None:
            r.check_model_and_engines()
        if r.preflight is not None and r.preflight.fatal:
            raise RuntimeError("preflight: " + "; ".join(r.preflight.fatal))
        r.plan()
        r.joint()
        for w in r.the_plan.workers:
            if w.task_ids:
                r.launch(w.worker, w.task_ids, r.the_plan.settings.train_steps, r.the_plan.settings.views_per_test)
        faults = r.faults
        if "deadline" in faults:
            # The budget runs out early, after the workers were launched believing they had the full time: by
            # default mid-training; deadline@F at F of the plan's predicted work time.
            w, share = r.the_plan.workers[0].seconds, faults.at("deadline")
            work = sum(w.values()) * share if share else w["startup"] * 0.6 + w["train"] * 0.3
            r.budget.deadline = min(r.budget.deadline, time.time() + config.budget.final_write_seconds + work)
            r.event("fault", "injected", time.time(), fault="deadline", moment=share)
            r.log("fault", f"injected fault: deadline moved to {r.budget.remaining():.0f}s from now")
        r.watch()
    except Exception as e:  # noqa: BLE001 - the run edge: keep the fallback submission and report why
        r.log("error", f"run failed: {type(e).__name__}: {e}; writing what exists")
        r.event("run", "error", time.time(), reason=f"{type(e).__name__}: {e}")
        for tid in r.tasks:
            r.reason(tid, f"run failed: {type(e).__name__}: {e}")
        r._stop_stragglers()
    report = r.finish()
    from .preflight import is_competition_rerun

    if report.get("status") == "fallback-only" and not is_competition_rerun():
        raise RunFailed(f"status fallback-only: {'; '.join(report.get('status_reasons', [])) or 'no answers'}. "
                        f"The submission ({config.submission_file}) holds only fallback and program answers; fix the "
                        "above and run again (the competition rerun would not raise, it degrades)")
    return report


def plan_profile(config: RunConfig, model_dir: str | Path | None = None) -> str:
    """The format profile a run of ``config`` would speak, as ``model_prep`` resolves it: the configured one, else
    the model folder's (its ``arc_format.json`` or its vocabulary), else ``kit``."""
    if config.format.profile != "auto":
        return config.format.profile
    if model_dir is None or not Path(model_dir).is_dir():
        return "kit"
    from transformers import AutoTokenizer

    from arcttt_kaggle.engines.format import PROFILE_FILE, profile_of_model

    marker = Path(model_dir) / PROFILE_FILE
    return profile_of_model(model_dir, None if marker.exists() else AutoTokenizer.from_pretrained(str(model_dir)))[0]


def plan_only(config: RunConfig, profile: str = "kit") -> tuple:
    """The plan ``run`` would make at its start, without starting anything: (plan, tasks, rejected).
    ``profile``: the format profile whose layout the tokens are counted in (``plan_profile``)."""
    loaded = load_challenges(config.challenges, strict=False)
    tasks = dict(list(loaded.tasks.items())[:config.max_tasks] if config.max_tasks else loaded.tasks.items())
    budget = Budget(config.budget)
    available = budget.work_deadline() - budget.start
    if config.joint.enabled and tasks:  # the joint stage's share comes first, as in ``Run.plan``
        available = config.joint.left_after(available)
    batch = config.train.batch_size * config.train.grad_accum
    tokens = TokenModel.of(config, profile)
    plan = make_plan(lambda s: task_works(tasks, config.ttt, batch, s, tokens=tokens), full_settings(config),
                     CostModel(config.throughput), config.workers, available, scores=config.select.method == "poe")
    return plan, tasks, loaded.rejected
