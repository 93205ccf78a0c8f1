"""The run report (``report.json``) and the timeline picture (``timeline.png``), built from worker events.

The report answers the questions a competitor asks after a run: did it fit (per-phase predicted vs measured
seconds), which engines actually ran (backends), what happened to every task (trained? decoded? how many
candidates, how many unparsable, did the program expert decide it, why it fell back), how the second pass spent
its compute (per task the first-pass difficulty and the extra views given), and the score when solutions exist.
Its top-level ``status`` (``run_status``) says in one word whether to trust it: ``ok``, ``degraded`` (with the
reasons: what was downgraded before the workers started, from ``downgrades``, and what fell back while they ran,
from ``incidents``, the degrading events kept in the report) or ``fallback-only`` (no model answer at all).
``report_html`` draws the same content as a page of ARC grids.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

PHASE_OF = {"startup_train": "startup", "startup_decode": "startup", "startup_score": "startup",
            "train": "train", "decode": "decode", "score": "score"}
COLORS = {"startup": "#9e9e9e", "train": "#1f77b4", "decode": "#2ca02c", "score": "#ff7f0e",
          "programs": "#9467bd", "load": "#8c564b", "final_write": "#d62728", "hang": "#e377c2", "joint": "#17becf"}


def measured_phase_seconds(events: list[dict]) -> dict[str, float]:
    """Per phase, the largest per-worker total (workers run in parallel: the phase's makespan)."""
    per: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        phase = PHASE_OF.get(e["phase"])
        if phase is None or e.get("status") not in ("ok", "error") or e.get("worker", -1) < 0:
            continue
        per[phase][e["worker"]] += max(0.0, e["end"] - e["start"])
    return {p: max(per[p].values()) if per[p] else 0.0 for p in ("startup", "train", "decode", "score")}


def predicted_phase_seconds(plan) -> dict[str, float]:
    return {p: max((w.seconds.get(p, 0.0) for w in plan.workers), default=0.0)
            for p in ("startup", "train", "decode", "score")}


def build_report(run, events: list[dict]) -> dict[str, Any]:
    """Everything ``report.json`` holds; ``run`` is the pipeline's ``Run`` after ``finish`` selected."""
    cfg = run.cfg
    sels = getattr(run, "selections", {})
    ttt, progs = getattr(run, "final_candidates", ({}, {}))
    backends: dict[str, str] = {}
    for e in events:
        if e["phase"].startswith("startup_") and e.get("backend"):
            backends[e["phase"].removeprefix("startup_")] = e["backend"]
    if cfg.run_programs:
        backends["programs"] = "arcttt_kaggle.programs (CPU DSL search)"
    trained = {e["task"] for e in events if e["phase"] == "train" and e["status"] == "ok"}
    too_long = {e["task"]: int(e.get("examples_skipped") or 0) for e in events
                if e["phase"] == "train" and e["status"] in ("ok", "error") and e.get("task")}
    train_err = {e["task"]: e.get("reason", "") for e in events if e["phase"] == "train" and e["status"] in ("error", "skipped") and e["task"]}
    allocation = _allocation(run)
    dfs = dfs_summary(events)
    per_task = {}
    for tid, task in run.all_tasks.items():
        sel = sels.get(tid, [])
        reasons = list(run.reasons.get(tid, []))
        if tid in train_err:
            reasons.append(f"TTT: {train_err[tid]}; decoded with the base model")
        n_cands = sum(len(x) for x in ttt.get(tid, []))
        unparsable = sum(1 for x in ttt.get(tid, []) for c in x if c.grid is None)
        fell_back = [i for i, s in enumerate(sel) if s.attempts[0] is None]
        if tid in run.tasks and fell_back:
            why = "no candidates" if n_cands == 0 else ("all candidates unparsable" if unparsable == n_cands else "")
            reasons.append(f"test inputs {fell_back} use the fallback answer" + (f" ({why})" if why else ""))
        per_task[tid] = {
            "attempted": tid in run.tasks, "adapter": tid in trained, "candidates": n_cands, "unparsable": unparsable,
            "program_answers": sum(1 for x in progs.get(tid, []) for c in x if c.verified),
            "decided_by_program": any(s.decided_by_program for s in sel),
            "outcome": _outcome(tid in run.tasks, tid in trained, n_cands - unparsable, fell_back, sel),
            "selection": [s.to_dict() for s in sel], "fallback_reasons": reasons,
            "attempt_sources": [attempt_sources(s.to_dict()) for s in sel],
            "allocation": allocation.get("tasks", {}).get(tid),
            "examples_skipped_for_length": too_long.get(tid, 0),
        }
        if tid in dfs["candidates"] or tid in dfs["truncated"]:
            per_task[tid]["dfs_candidates"] = dfs["candidates"].get(tid, 0)
            per_task[tid]["dfs_truncated"] = dfs["truncated"].get(tid, "")
    for r in run.rejected:
        per_task[r.task_id] = {"attempted": False, "outcome": "placeholder", "fallback_reasons": run.reasons.get(r.task_id, [])}
    measured = measured_phase_seconds(events)
    predicted = predicted_phase_seconds(run.the_plan) if hasattr(run, "the_plan") else {}
    phases = {p: {"predicted_s": round(predicted.get(p, 0.0), 2), "measured_s": round(measured.get(p, 0.0), 2),
                  "ratio": round(measured[p] / predicted[p], 3) if predicted.get(p) else None} for p in measured}
    joint = getattr(run, "joint_outcome", None)
    if joint is not None:  # before the workers, in the parent: its own phase
        phases = {"joint": {"predicted_s": round(joint.predicted_s, 2), "measured_s": round(joint.measured_s, 2),
                            "ratio": round(joint.measured_s / joint.predicted_s, 3) if joint.predicted_s else None},
                  **phases}
    pred_total = sum(v["predicted_s"] for v in phases.values())
    meas_total = sum(v["measured_s"] for v in phases.values())
    report: dict[str, Any] = {
        "preset": cfg.preset, "challenges": cfg.challenges, "submission": str(cfg.submission_file),
        "fault": cfg.fault or None, "selection_method": cfg.select.method, "backends": backends,
        "tasks": len(run.all_tasks) + len(run.rejected), "attempted": len(run.tasks),
        "rejected": [{"task_id": r.task_id, "reason": r.reason} for r in run.rejected],
        "budget": {"limit_s": cfg.budget.limit_seconds, "margin_s": cfg.budget.safety_margin_seconds,
                   "wall_s": round(max((e["end"] for e in events), default=run.budget.start) - run.budget.start, 2),
                   "finished_before_deadline": max((e["end"] for e in events), default=0) <= run.budget.deadline},
        "plan": run.the_plan.to_dict() if hasattr(run, "the_plan") else None,
        "phases": phases,
        "phases_total": {"predicted_s": round(pred_total, 2), "measured_s": round(meas_total, 2),
                         "ratio": round(meas_total / pred_total, 3) if pred_total else None},
        "workers": [{"worker": w["worker"], "attempt": w["attempt"], "tasks": w["tasks"], "returncode": w["returncode"],
                     "reason": w["reason"], "train_steps": w["train_steps"], "views": w["views"]} for w in run.workers],
        "programs": {"tasks_with_verified_program": sum(1 for t in progs.values() if any(any(c.verified for c in x) for x in t)),
                     "tasks_decided": sum(1 for t in per_task.values() if t.get("decided_by_program"))},
        "allocation": allocation,
        "joint": joint.to_dict() if joint is not None else None,
        "dfs": dfs if dfs["candidates"] or dfs["truncated"] else None,
        "fallback_tasks": sorted(t for t, v in per_task.items() if v.get("outcome") in ("fallback", "placeholder")),
        "per_task": per_task,
    }
    if cfg.solutions:
        report["score"] = _score(cfg)
    if getattr(run, "preflight", None) is not None:
        pre = run.preflight
        report["preflight"] = pre if isinstance(pre, dict) else pre.to_dict()  # preflight.PreflightResult
    if getattr(run, "prepared", None) is not None:  # model_prep.PreparedModel
        report["model_card"] = run.prepared.card()
    # Decided before any worker started (pipeline.planned_downgrades: the preflight's engine ladder, the memory plan).
    report["downgrades"] = list(getattr(run, "downgrades", None) or [])
    report["incidents"] = incidents(events, run.budget.start)
    return with_status(report)


def dfs_summary(events: list[dict]) -> dict:
    """DFS decoding per task over every decode call: candidates found and why a cap cut the search (a task
    decoded under several adapters is keyed ``task/adapter`` by the decoder; summed here per task)."""
    cands: dict[str, int] = defaultdict(int)
    cut: dict[str, str] = {}
    for e in events:
        if e["phase"] != "decode" or e.get("status") != "ok":
            continue
        for key, n in (e.get("dfs_candidates") or {}).items():
            cands[key.split("/")[0]] += int(n)
        for key, why in (e.get("dfs_truncated") or {}).items():
            cut.setdefault(key.split("/")[0], why)
    return {"candidates": dict(cands), "truncated": cut}


def _outcome(attempted: bool, trained: bool, parsed: int, fell_back: list[int], sel) -> str:
    if not attempted:
        return "fallback"
    if fell_back and len(fell_back) == len(sel):
        return "program" if any(s.decided_by_program for s in sel) else "fallback"
    if parsed == 0:  # no model candidate at all (no engine, or nothing parsed): the answers are the expert's
        return "program" if any(s.decided_by_program for s in sel) else "fallback"
    return ("ttt" if trained else "base-model") + ("+program" if any(s.decided_by_program for s in sel) else "")


def _allocation(run) -> dict:
    merged: dict[str, Any] = {"tasks": {}, "budget_units": 0.0, "spent_units": 0.0}
    for w in getattr(run, "workers", []):
        path = Path(w["dir"]) / "allocation.json"
        if path.exists():
            d = json.loads(path.read_text())
            merged["tasks"].update(d.get("tasks", {}))
            merged["budget_units"] += d.get("budget_units", 0.0)
            merged["spent_units"] += d.get("spent_units", 0.0)
    return merged


def _score(cfg) -> dict:
    from arcttt_kaggle.arc.scoring import score_submission_files

    rep = score_submission_files(cfg.submission_file, cfg.solutions)
    return {"score": rep.score, "task_score": rep.task_score, "correct": rep.correct, "total": rep.total,
            "table": rep.format_table()}


# -- run status -------------------------------------------------------------------------------------------------

STATUSES = ("ok", "degraded", "fallback-only")
# Events that make a run degraded, kept in ``report["incidents"]`` so the status can be recomputed from report.json.
INCIDENT_KINDS = {("engine", "fallback"), ("engine", "replanned"), ("worker", "replaced"), ("worker", "error"),
                  ("score", "skipped"), ("score", "error"), ("train", "error"), ("train", "skipped"), ("decode", "error"),
                  ("decode", "hang"), ("decode", "isolated"), ("decode", "unparsable"), ("programs", "error"),
                  ("run", "error"),
                  ("joint", "error")}


def _short(text: Any, limit: int = 240) -> str:
    """One line of an event's reason: a traceback's last non-empty line, capped at ``limit`` characters."""
    lines = [x.strip() for x in str(text or "").splitlines() if x.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def incidents(events: list[dict], t0: float = 0.0) -> list[dict]:
    """The events that degrade a run (``INCIDENT_KINDS``), in time order, times in seconds since ``t0``."""
    out = []
    for e in sorted(events, key=lambda e: e.get("start", 0.0)):
        if (e.get("phase"), e.get("status")) not in INCIDENT_KINDS:
            continue
        rec = {k: v for k, v in e.items() if k not in ("start", "end")}
        rec["t"] = round(float(e.get("start", t0)) - t0, 2)
        for k in ("reason", "error"):
            if k in rec:
                rec[k] = _short(rec[k], 600)
        out.append(rec)
    return out


ENGINE_NAMES = {"vllm": "vLLM", "hf": "transformers", "unsloth": "Unsloth", "peft": "PEFT"}  # engine rungs
STAGE_VERBS = {"train": "training", "decode": "decoding", "score": "scoring"}


def attempt_sources(sel: dict) -> list[str]:
    """Where each of one test input's two attempts came from, read from its selection (``Selection.to_dict``):
    ``model`` (a TTT or base-model candidate), ``program`` (the program expert's answer) or ``fallback`` (empty:
    the fallback answer fills it). The BARC rule (``select.ensemble_with_programs``) places them: ``sole`` = the
    model had no answer, both are the expert's; ``overrode`` = the expert's first, the model's favourite second;
    otherwise the model's, with an empty second slot ``program_filled`` by the expert."""
    attempts = (list(sel.get("attempts") or []) + [None, None])[:2]
    role = sel.get("program_role", "off")
    if role == "sole" or sel.get("distinct") == 0:
        order = ["program", "program"]
    elif role == "overrode":
        order = ["program", "model"]
    else:
        order = ["model", "program" if sel.get("program_filled") else "model"]
    return [src if a is not None else "fallback" for src, a in zip(order, attempts)]


def _ids(ids: list[str], n: int = 8) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _grouped(items: list[tuple[str, str]], template: str) -> list[str]:
    """``items`` are (task, reason); one line per distinct reason: ``template`` gets {n}, {ids}, {reason}."""
    by: dict[str, list[str]] = defaultdict(list)
    for task, why in items:
        by[why].append(task)
    return [template.format(n=len(ts), ids=_ids(sorted(ts)), reason=why or "no reason given") for why, ts in by.items()]


def run_status(report: dict) -> tuple[str, list[str]]:
    """``(status, reasons)`` of a report: ``ok``, ``degraded`` or ``fallback-only``. Pure; reads only ``report``.

    fallback-only: a preflight check was fatal, or no task got a model answer (every attempt of every task is the
    program expert's or the fallback, ``attempt_sources``). degraded: anything was downgraded before the workers
    started (``downgrades``: the preflight's engine ladder, the memory plan; each named as what ran instead of
    what) or fell back on the way: an engine rung, a worker (replaced, crashed, terminated), training, decoding,
    scoring (cut or failed), the program expert, or tasks (all or some test inputs on the fallback answer), or the
    run ended after its deadline. Missing sections count as nothing happened.
    """
    reasons: list[str] = []
    inc = report.get("incidents") or []
    # Downgrades decided before the workers started, one line per source and cause (a memory plan that lowered
    # several decoding settings for one reason says so once).
    planned: dict[tuple[str, str], list[str]] = defaultdict(list)
    for d in report.get("downgrades") or []:
        what = d.get("what") or f"{d.get('setting')} {d.get('now')} instead of {d.get('was')}"
        planned[(d.get("source", "?"), d.get("why", ""))].append(what)
    reasons += [f"{source}: {'; '.join(whats)}" + (f" ({why})" if why else "")
                for (source, why), whats in planned.items()]

    def of(phase: str, *statuses: str) -> list[dict]:
        return [e for e in inc if e.get("phase") == phase and e.get("status") in statuses]

    engine: dict[tuple, set] = defaultdict(set)
    for e in of("engine", "fallback"):
        engine[(e.get("stage", "?"), e.get("rung", "?"), _short(e.get("error") or e.get("reason")),
                str(e.get("next") or ""))].add(e.get("worker"))
    reasons += [f"{stage} engine fell back (rung {rung}) on worker {_ids([str(w) for w in sorted(ws, key=str)])}"
                + (f": {err}" if err else "") + _instead(stage, rung, nxt)
                for (stage, rung, err, nxt), ws in engine.items()]
    replans: dict[tuple, set] = defaultdict(set)
    for e in of("engine", "replanned"):
        replans[(e.get("stage", "?"), e.get("rung", "?"), _short(e.get("reason")))].add(e.get("worker"))
    reasons += [f"{stage} engine re-planned for {ENGINE_NAMES.get(rung, rung)} on worker "
                f"{_ids([str(w) for w in sorted(ws, key=str)])}: {why}" for (stage, rung, why), ws in replans.items()]
    # Workers: a replacement (event, or a second attempt in report["workers"]) and workers that ended badly.
    workers = report.get("workers") or []
    replaced = {w["worker"] for w in workers if w.get("attempt", 0) > 0}
    first_reason = {w["worker"]: w.get("reason", "") for w in workers if w.get("attempt", 0) == 0}
    for wid in sorted(replaced):
        reasons.append(f"worker {wid} was replaced" + (f" ({first_reason[wid]})" if first_reason.get(wid) else ""))
    for e in of("worker", "replaced"):  # the parent's event names the worker in ``replaced_worker``
        if e.get("replaced_worker") not in replaced:
            reasons.append(f"worker {e.get('replaced_worker', '?')} was replaced"
                           + (f" ({_short(e.get('reason'))})" if e.get("reason") else ""))
    for w in workers:
        if w.get("reason") and not (w["worker"] in replaced and w.get("attempt", 0) == 0):
            reasons.append(f"worker {w['worker']} (attempt {w.get('attempt', 0)}): {w['reason']}")
    reasons += [f"worker {e.get('worker')} raised: {_short(e.get('reason'))}" for e in of("worker", "error")]
    train = of("train", "error", "skipped")
    reasons += [f"training on worker {e.get('worker')} failed: {_short(e.get('reason'))}" for e in train if not e.get("task")]
    reasons += _grouped([(e["task"], _short(e.get("reason"))) for e in train if e.get("task") and e["status"] == "error"],
                        "TTT failed for {n} task(s) ({ids}), decoded with the base model: {reason}")
    reasons += _grouped([(e["task"], _short(e.get("reason"))) for e in train if e.get("task") and e["status"] == "skipped"],
                        "TTT skipped for {n} task(s) ({ids}), decoded with the base model: {reason}")
    skipped = sorted((t, v["examples_skipped_for_length"]) for t, v in (report.get("per_task") or {}).items()
                     if v.get("examples_skipped_for_length"))
    if skipped:
        reasons.append(f"TTT examples longer than train.max_seq_len were left out: {sum(n for _, n in skipped)} in "
                       f"{len(skipped)} task(s) ({_ids([f'{t}: {n}' for t, n in skipped])})")
    reasons += [f"decoding on worker {e.get('worker')} {'hung' if e['status'] == 'hang' else 'failed'}: {_short(e.get('reason'))}"
                for e in of("decode", "error", "hang")]
    reasons += [f"decoding on worker {e.get('worker')}: {_short(e.get('reason'))}" for e in of("decode", "unparsable")]
    reasons += _grouped([(e.get("task") or "?", _short(e.get("reason"))) for e in of("decode", "isolated")],
                        "decoding isolated a failure for {n} task(s) ({ids}): {reason}")
    score = of("score", "skipped", "error")
    reasons += _grouped([(e.get("task") or "all", _short(e.get("reason"))) for e in score if e["status"] == "skipped"],
                        "scoring cut for {n} task(s) ({ids}): {reason}")
    reasons += _grouped([(e.get("task") or "all", _short(e.get("reason"))) for e in score if e["status"] == "error"],
                        "scoring failed for {n} task(s) ({ids}): {reason}")
    reasons += [f"the program expert did not finish: {_short(e.get('reason')) or 'no programs.json written'}"
                for e in of("programs", "error")]
    reasons += [f"the run failed: {_short(e.get('reason'))}" for e in of("run", "error")]
    reasons += [f"joint stage: {_short(e.get('reason'), 400)}" for e in of("joint", "error")]
    reasons += [f"task {r.get('task_id')} rejected at load: {_short(r.get('reason'))}"
                for r in report.get("rejected") or []]
    per_task = report.get("per_task") or {}
    fell = report.get("fallback_tasks")
    fell = sorted(fell) if fell is not None else sorted(t for t, v in per_task.items()
                                                        if v.get("outcome") in ("fallback", "placeholder"))
    if fell:
        reasons.append(f"{len(fell)} of {report.get('tasks', len(per_task))} tasks fell back: {_ids(fell)}")
    partly = sorted(t for t, v in per_task.items() if t not in fell
                    and any(s.get("attempts", [None])[0] is None for s in v.get("selection", [])))
    if partly:
        reasons.append(f"{len(partly)} task(s) answer some test inputs with the fallback: {_ids(partly)}")
    if (report.get("budget") or {}).get("finished_before_deadline") is False:
        reasons.append("the run finished after its deadline")
    fatal = [str(x) for x in (report.get("preflight") or {}).get("fatal") or []]
    sources = {t: {x for s in v.get("selection", []) for x in attempt_sources(s)} for t, v in per_task.items()}
    by_model = any("model" in x for x in sources.values())
    if fatal or not by_model:
        lead = [f"preflight: {x}" for x in fatal]
        by_program = sorted(t for t, x in sources.items() if "program" in x)
        if not by_model and by_program:
            lead.append(f"no task got a model answer: every attempt is the program expert's ({len(by_program)} "
                        f"task(s): {_ids(by_program)}) or the fallback")
        elif not by_model:
            lead.append("no task got a model or program answer: every attempt is the fallback")
        return "fallback-only", lead + reasons
    return ("degraded" if reasons else "ok"), reasons


def _instead(stage: str, rung: str, nxt: str) -> str:
    """What a worker's engine ladder ran instead of the rung that failed (the event's ``next``)."""
    if not nxt:
        return ""
    if nxt.startswith("none"):
        return f"; no {STAGE_VERBS.get(stage, stage)} engine left: {nxt}"
    verb = STAGE_VERBS.get(stage, stage)
    return f"; {verb} on {ENGINE_NAMES.get(nxt, nxt)} instead of {ENGINE_NAMES.get(rung, rung)}"


def with_status(report: dict) -> dict:
    """``report`` with ``status`` and ``status_reasons`` (re)computed by ``run_status`` (the same dict, updated)."""
    report["status"], report["status_reasons"] = run_status(report)
    return report


def status_line(report: dict) -> str:
    """``status: degraded (2 reasons)``: the first line the notebook prints."""
    status, reasons = (report["status"], report.get("status_reasons", [])) if "status" in report else run_status(report)
    return f"status: {status}" + (f" ({len(reasons)} reason{'s' if len(reasons) != 1 else ''})" if reasons else "")


def write_timeline(events: list[dict], budget, path: Path) -> None:
    """Phases per worker over time as horizontal bars (parent row -1 holds load, programs, final write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.6 * (1 + len({e["worker"] for e in events}))))
    lanes = sorted({e["worker"] for e in events})
    t0 = budget.start
    seen = set()
    for e in events:
        name = "hang" if e.get("status") == "hang" else PHASE_OF.get(e["phase"], e["phase"])
        if name not in COLORS:
            continue
        start, end = e["start"] - t0, max(e["end"] - t0, e["start"] - t0 + 0.05)
        if name == "hang":
            end = max(end, max((x["end"] for x in events), default=end) - t0)
        y = lanes.index(e["worker"])
        ax.barh(y, end - start, left=start, color=COLORS[name], edgecolor="white" if e.get("task") else "none",
                linewidth=0.3, label=name if name not in seen else None, alpha=0.4 if e.get("status") != "ok" else 1.0)
        seen.add(name)
    ax.axvline(budget.deadline - t0, color="red", linestyle="--", label="deadline")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(["parent" if w < 0 else f"worker {w}" for w in lanes])
    ax.set_xlabel("seconds since start")
    ax.set_title("arcttt-kaggle run timeline (faded bars: errors or skipped)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=8, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(report: dict) -> str:
    """A short human summary of ``report.json`` (the notebook's last cell prints it)."""
    reasons = report["status_reasons"] if "status" in report else run_status(report)[1]
    lines = [status_line(report)] + [f"  - {r}" for r in reasons]
    lines += [f"preset {report['preset']}  method {report['selection_method']}  fault {report.get('fault') or '-'}",
             "backends: " + ", ".join(f"{k}={v}" for k, v in report["backends"].items()),
             f"tasks {report['tasks']} (attempted {report['attempted']}, rejected {len(report['rejected'])}); "
             f"wall {report['budget']['wall_s']}s of {report['budget']['limit_s']}s; "
             f"before deadline: {report['budget']['finished_before_deadline']}",
             f"{'phase':<8} {'predicted':>10} {'measured':>10} {'ratio':>6}"]
    for p, v in report["phases"].items():
        lines.append(f"{p:<8} {v['predicted_s']:>10.1f} {v['measured_s']:>10.1f} {v['ratio'] if v['ratio'] is not None else '-':>6}")
    t = report["phases_total"]
    lines.append(f"{'total':<8} {t['predicted_s']:>10.1f} {t['measured_s']:>10.1f} {t['ratio'] if t['ratio'] is not None else '-':>6}")
    lines.append(f"program expert: {report['programs']['tasks_with_verified_program']} tasks verified, "
                 f"{report['programs']['tasks_decided']} decided")
    if report.get("fallback_tasks"):
        lines.append(f"fallback tasks: {', '.join(report['fallback_tasks'])}")
    if "score" in report:
        lines.append(f"score {report['score']['score']:.3f} ({report['score']['correct']}/{report['score']['total']} test outputs)")
    return "\n".join(lines)
