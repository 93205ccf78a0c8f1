"""``report.html``: the run report a person reads, one self-contained page (no network, images inline).

Built from the files a run leaves in its output folder (see ``pipeline.Run.finish`` and ``worker.py``):
``report.json`` (status, phases, per-task outcomes and fallback reasons, incidents), ``config.json`` (the
challenges and solutions paths, the selection config), ``submission.json`` (the attempts actually submitted),
``timeline.png``, ``programs.json`` and every worker's ``work/*/candidates.json`` and ``scores.json``.

Top to bottom: the status banner with its reasons, the run summary, the timeline picture, the phase table
(predicted vs measured seconds), the downgrades decided before the workers started and the incidents while they
ran, then one section per task, failed tasks first: each test input, both attempts (marked right or wrong when
solutions are known, and "fallback" where the fallback answer was used), the expected output (only when solutions
are known), the top candidates with their votes, product-of-experts score and source (TTT or program), and the
program expert's role (decided, agreed or none).

Grids are inline SVG in the 10 ARC colours; each carries ``data-role`` (input, attempt-1, attempt-2, expected,
candidate) and ``data-cells`` (rows of digits joined by ``|``) so the page can be checked by a parser. The top
candidates are recomputed with ``select.select_all`` from the same candidate files and selection config the
pipeline used (pure, no engine); a recomputed attempt that differs from the submitted one is noted on the page.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arcttt_kaggle.arc.candidates import CandidateSet, atomic_write_text, merge_candidate_sets, read_candidate_file
from .config import RunConfig
from arcttt_kaggle.arc.data import Grid, Task, grid_key, load_challenges, load_solutions, to_grid
from .report import run_status

ARC_COLORS = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
              "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
STATUS_COLORS = {"ok": "#2e7d32", "degraded": "#e65100", "fallback-only": "#b71c1c"}
TOP_CANDIDATES = 5  # TTT grids shown per test input (the page stays small on a 240-task run)
ROLE_OF = {"overrode": "decided", "sole": "decided", "agreed": "agreed"}  # everything else: none

# Every selector is scoped to .arcttt-report so the page can be shown inside a notebook without restyling it.
CSS = """
.arcttt-report{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;color:#222;max-width:1240px;margin:0 auto;
 padding:8px 16px;background:#fff;line-height:1.35}
.arcttt-report h1{font-size:22px;margin:6px 0}.arcttt-report h2{font-size:18px;margin:18px 0 6px;
 border-bottom:1px solid #ddd}.arcttt-report h3{font-size:15px;margin:10px 0 4px}
.arcttt-report .banner{color:#fff;padding:10px 14px;border-radius:6px;margin:8px 0}
.arcttt-report .banner .st{font-size:24px;font-weight:700;text-transform:uppercase;letter-spacing:.04em}
.arcttt-report .banner ul{margin:6px 0 0 18px;padding:0}
.arcttt-report table{border-collapse:collapse;font-size:13px;margin:4px 0}
.arcttt-report td,.arcttt-report th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:middle}
.arcttt-report th{background:#f3f3f3}.arcttt-report td.num{text-align:right;font-variant-numeric:tabular-nums}
.arcttt-report .task{border:1px solid #ccc;border-radius:6px;padding:6px 10px;margin:10px 0}
.arcttt-report .task.failed{border-left:6px solid #c62828}.arcttt-report .task.passed{border-left:6px solid #2e7d32}
.arcttt-report .grids{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.arcttt-report figure{margin:0}.arcttt-report figcaption{font-size:12px;color:#444;margin-bottom:2px}
.arcttt-report .right{color:#2e7d32;font-weight:700}.arcttt-report .wrong{color:#c62828;font-weight:700}
.arcttt-report .muted{color:#777}.arcttt-report .reasons{color:#8d2b00;font-size:13px;margin:4px 0 4px 18px}
.arcttt-report .nav a{margin-right:8px;font-size:12px}.arcttt-report svg.grid{display:block}
.arcttt-report img.timeline{max-width:100%;border:1px solid #ddd}
"""


@dataclass(frozen=True)
class RunFiles:
    """What ``report.html`` is drawn from, read once from a run's output folder."""

    out_dir: Path
    report: dict
    config: RunConfig
    submission: dict[str, list[tuple[Grid | None, Grid | None]]]
    tasks: dict[str, Task]
    expected: dict[str, list[Grid]]
    ttt: CandidateSet
    scores: CandidateSet
    programs: CandidateSet
    timeline_png: bytes | None
    notes: list[str] = field(default_factory=list)  # files that were missing or unreadable, said on the page


def write_report_html(out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` (atomically) from the files the run left there; returns its path."""
    files = load_run_files(Path(out_dir))
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, render_report_html(files))
    return path


def load_run_files(out_dir: Path) -> RunFiles:
    """Read the run's files. report.json and config.json must exist; anything else missing is noted, not fatal."""
    for name in ("report.json", "config.json"):
        if not (out_dir / name).is_file():
            raise FileNotFoundError(f"{out_dir / name} does not exist: not a finished run's output folder")
    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    cfg = RunConfig.from_dict(json.loads((out_dir / "config.json").read_text(encoding="utf-8")))
    notes: list[str] = []
    tasks: dict[str, Task] = {}
    if cfg.challenges and Path(cfg.challenges).is_file():
        tasks = load_challenges(cfg.challenges, strict=False).tasks
    else:
        notes.append(f"challenges file {cfg.challenges!r} not found: test inputs and candidates are not shown")
    expected: dict[str, list[Grid]] = {}
    if cfg.solutions:
        try:
            expected = load_solutions(cfg.solutions)
        except (OSError, ValueError) as e:
            notes.append(f"solutions file {cfg.solutions!r} unreadable ({e}): expected outputs are not shown")
    sub_path = out_dir / "submission.json"
    if not sub_path.is_file():
        sub_path = Path(report.get("submission") or sub_path)
    submission = _read_submission(sub_path, notes)

    def candidates(paths: list[Path]) -> CandidateSet:
        sets = []
        for p in paths:
            try:
                sets.append(read_candidate_file(p)[0])
            except ValueError as e:
                notes.append(f"candidate file unreadable, left out: {e}")
        return merge_candidate_sets(*sets)

    work = sorted((out_dir / "work").glob("*/")) if (out_dir / "work").is_dir() else []
    timeline = out_dir / "timeline.png"
    if not timeline.is_file():
        notes.append("timeline.png not found")
    return RunFiles(out_dir=out_dir, report=report, config=cfg, submission=submission, tasks=tasks, expected=expected,
                    ttt=candidates([w / "candidates.json" for w in work if (w / "candidates.json").is_file()]),
                    scores=candidates([w / "scores.json" for w in work if (w / "scores.json").is_file()]),
                    programs=candidates([p for p in [out_dir / "programs.json"] if p.is_file()]),
                    timeline_png=timeline.read_bytes() if timeline.is_file() else None, notes=notes)


def _read_submission(path: Path, notes: list[str]) -> dict[str, list[tuple[Grid | None, Grid | None]]]:
    if not path.is_file():
        notes.append(f"submission {path} not found: attempts are not shown")
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {tid: [(to_grid(a["attempt_1"], f"{tid} attempt_1"), to_grid(a["attempt_2"], f"{tid} attempt_2"))
                      for a in tests] for tid, tests in doc.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        notes.append(f"submission {path} unreadable ({type(e).__name__}: {e}): attempts are not shown")
        return {}


# -- rendering (pure) ----------------------------------------------------------------------------------------------

def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def grid_svg(grid: Grid, role: str, max_px: int = 180, cell_px: int = 16) -> str:
    """One grid as inline SVG: a path per colour (runs of equal cells in a row), grid lines on top."""
    g = np.asarray(grid, dtype=np.uint8)
    h, w = g.shape
    cell = max(3, min(cell_px, max_px // max(h, w)))
    runs: dict[int, list[str]] = {}
    for y in range(h):
        x = 0
        while x < w:
            c, x0 = int(g[y, x]), x
            while x < w and g[y, x] == c:
                x += 1
            runs.setdefault(c, []).append(f"M{x0} {y}h{x - x0}v1h{x0 - x}z")
    paths = "".join(f'<path fill="{ARC_COLORS[c]}" d="{"".join(d)}"/>' for c, d in sorted(runs.items()))
    lines = "".join(f"M0 {y}H{w}" for y in range(1, h)) + "".join(f"M{x} 0V{h}" for x in range(1, w))
    cells = "|".join("".join(str(int(v)) for v in row) for row in g)
    return (f'<svg class="grid" data-role="{esc(role)}" data-cells="{cells}" '
            f'width="{w * cell}" height="{h * cell}" viewBox="0 0 {w} {h}" shape-rendering="crispEdges">'
            f"<title>{esc(role)} {h}x{w}</title>{paths}"
            f'<path d="{lines}" stroke="#555" stroke-width="{1 / cell:.3f}" fill="none"/>'
            f'<rect width="{w}" height="{h}" fill="none" stroke="#888" stroke-width="{2 / cell:.3f}"/></svg>')


def _figure(caption: str, grid: Grid | None, role: str, max_px: int = 180) -> str:
    body = grid_svg(grid, role, max_px) if grid is not None else '<span class="muted">none</span>'
    return f"<figure><figcaption>{caption}</figcaption>{body}</figure>"


def _same(a: Grid | None, b: Grid | None) -> bool:
    return a is not None and b is not None and grid_key(a) == grid_key(b)


def _fmt(x: Any, digits: int = 2) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.{digits}f}"
    return "–" if x is None else str(x)


def _banner(status: str, reasons: list[str], notes: list[str]) -> str:
    items = "".join(f"<li>{esc(r)}</li>" for r in reasons) or "<li>every stage ran as planned</li>"
    note = "".join(f'<p class="muted">note: {esc(n)}</p>' for n in notes)
    return (f'<div class="banner" data-status="{esc(status)}" style="background:{STATUS_COLORS.get(status, "#555")}">'
            f'<div class="st">status: {esc(status)}</div><ul class="status-reasons">{items}</ul></div>{note}')


def _summary(r: dict) -> str:
    b = r.get("budget") or {}
    score = r.get("score")
    rows = [("preset", r.get("preset")), ("selection", r.get("selection_method")), ("fault", r.get("fault") or "-"),
            ("backends", ", ".join(f"{k}={v}" for k, v in (r.get("backends") or {}).items()) or "-"),
            ("tasks", f"{r.get('tasks')} (attempted {r.get('attempted')}, rejected {len(r.get('rejected') or [])})"),
            ("wall", f"{b.get('wall_s')} s of {b.get('limit_s')} s; before deadline: {b.get('finished_before_deadline')}"),
            ("program expert", f"{(r.get('programs') or {}).get('tasks_with_verified_program', 0)} tasks verified, "
                               f"{(r.get('programs') or {}).get('tasks_decided', 0)} decided")]
    if score:
        rows.append(("score", f"{score['score']:.3f} ({score['correct']}/{score['total']} test outputs)"))
    card = r.get("model_card")
    if card:  # model_prep.PreparedModel.card()
        rows.append(("model", f"profile {card.get('profile')} ({card.get('profile_from')}), vocabulary "
                              f"{card.get('vocab_size')} of {card.get('source_vocab_size')}, quantization "
                              f"{card.get('quantization')}, folder {card.get('path')}, prepared in "
                              f"{card.get('seconds', 0):.1f} s{' (cached)' if card.get('cached') else ''}"))
    return "<table class=\"summary\">" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def _phase_table(r: dict) -> str:
    rows = [(p, v) for p, v in (r.get("phases") or {}).items()]
    if r.get("phases_total"):
        rows.append(("total", r["phases_total"]))
    body = "".join(f"<tr><td>{esc(p)}</td><td class=num>{_fmt(v.get('predicted_s'), 1)}</td>"
                   f"<td class=num>{_fmt(v.get('measured_s'), 1)}</td><td class=num>{_fmt(v.get('ratio'), 3)}</td></tr>"
                   for p, v in rows)
    return ('<table class="phases"><tr><th>phase</th><th>predicted s</th><th>measured s</th><th>measured/predicted</th>'
            f"</tr>{body}</table>")


def _downgrades(r: dict) -> str:
    """What the preflight and the memory plan changed before the workers started (``report["downgrades"]``)."""
    downs = r.get("downgrades") or []
    if not downs:
        return ""
    rows = "".join(f"<tr><td>{esc(d.get('source'))}</td><td>{esc(d.get('setting'))}</td><td>{esc(d.get('was'))}</td>"
                   f"<td>{esc(d.get('now'))}</td><td>{esc(d.get('what'))}</td><td>{esc(d.get('why'))}</td></tr>"
                   for d in downs)
    return ('<table class="downgrades"><tr><th>decided by</th><th>setting</th><th>configured</th><th>ran</th>'
            f"<th>what ran instead</th><th>why</th></tr>{rows}</table>")


def _incidents(r: dict, limit: int = 60) -> str:
    inc = r.get("incidents") or []
    if not inc:
        return _downgrades(r) + ('<p class="muted">no incidents: nothing fell back, failed or was cut while the '
                                 "workers ran.</p>")
    rows = "".join(f"<tr><td class=num>{_fmt(e.get('t'), 1)}</td><td>{esc(e.get('worker'))}</td><td>{esc(e.get('phase'))}"
                   f"</td><td>{esc(e.get('status'))}</td><td>{esc(e.get('task', ''))}</td>"
                   f"<td>{esc(e.get('reason') or e.get('error') or '')}</td></tr>" for e in inc[:limit])
    more = f'<p class="muted">{len(inc) - limit} more in report.json</p>' if len(inc) > limit else ""
    return (_downgrades(r) + '<table class="incidents"><tr><th>t (s)</th><th>worker</th><th>phase</th><th>status</th>'
            f"<th>task</th><th>reason</th></tr>{rows}</table>{more}")


@dataclass(frozen=True)
class TaskView:
    """What one task's section shows, and where it sorts (failed first)."""

    task_id: str
    failed: bool
    solved: int | None  # test outputs right (None: no solutions)
    html: str


def _candidate_rows(sel, progs: list, sub: tuple[Grid | None, Grid | None]) -> list[tuple]:
    """(grid, votes, poe, score, source, detail) for the top TTT grids and the distinct verified program answers."""
    rows = []
    for rk in sel.ranked[:TOP_CANDIDATES]:
        # Under PoE a grid past the top C keeps its pre-ranking score, not comparable with PoE scores: not shown.
        score = None if sel.method == "poe" and rk.poe_logprob is None else rk.score
        rows.append((rk.grid, rk.votes, rk.poe_logprob, score, "ttt",
                     f"{len(rk.views)} views, {rk.families} families, best log-prob {rk.best_logprob:.2f}"))
    support: dict[bytes, list] = {}
    for c in progs:
        if c.verified and c.grid is not None:
            support.setdefault(c.key, [c.grid, 0, c.program])[1] += 1
    for grid, n, prog in support.values():
        rows.append((grid, n, None, None, "program", prog))
    return [row + (" ".join(f"attempt {i + 1}" for i, a in enumerate(sub) if _same(a, row[0])),) for row in rows]


def _task_view(tid: str, files: RunFiles, sel_list: list | None) -> TaskView:
    info = (files.report.get("per_task") or {}).get(tid, {})
    task = files.tasks.get(tid)
    sub = files.submission.get(tid, [])
    exp = files.expected.get(tid) or []
    n_tests = len(task.test) if task else len(sub)
    solved = sum(1 for i in range(n_tests) if i < len(exp) and i < len(sub) and any(_same(a, exp[i]) for a in sub[i])) \
        if exp else None
    outcome = info.get("outcome", "not in report")
    fell_back = outcome in ("fallback", "placeholder")
    reasons = list(info.get("fallback_reasons") or [])
    failed = fell_back or bool(reasons) or (solved is not None and solved < n_tests)
    parts = []
    for i in range(n_tests):
        sel = sel_list[i] if sel_list and i < len(sel_list) else None
        s_info = (info.get("selection") or [])[i] if i < len(info.get("selection") or []) else {}
        attempts = sub[i] if i < len(sub) else (None, None)
        expected = exp[i] if i < len(exp) else None
        figs = [_figure(f"test input {i}", task.test[i].input if task else None, "input")]
        for k, a in enumerate(attempts):
            from_fallback = (sel.attempts[k] is None) if sel else (s_info.get("attempts") or [None, None])[k] is None
            mark = ("" if expected is None else (' <span class="right">✓ right</span>' if _same(a, expected)
                                                else ' <span class="wrong">✗ wrong</span>'))
            figs.append(_figure(f"attempt {k + 1}{' (fallback)' if from_fallback else ''}{mark}", a, f"attempt-{k + 1}"))
        if expected is not None:
            figs.append(_figure("expected", expected, "expected"))
        role_raw = sel.program_role if sel else s_info.get("program_role", "off")
        head = (f"<h3>test input {i}: program expert role <b>{esc(ROLE_OF.get(role_raw, 'none'))}</b> "
                f'<span class="muted">({esc(role_raw)})</span></h3>')
        notes = [sel.note] if sel and sel.note else []
        if sel:
            for k, a in enumerate(sel.attempts):
                if a is not None and k < len(attempts) and not _same(a, attempts[k]):
                    notes.append(f"recomputed attempt {k + 1} differs from the submitted one")
        table = ""
        if sel:
            progs = files.programs.get(tid, [])
            rows = _candidate_rows(sel, list(progs[i]) if i < len(progs) else [], attempts)
            stats = (f"{sel.considered} candidates considered, {sel.unparsable} unparsable, {len(sel.ranked)} distinct "
                     f"grids ({sel.demoted} put last: the demonstrations rule them out); method {sel.method}")
            table = (f'<p class="muted">{esc(stats)}</p>' + ('<table class="candidates"><tr><th>grid</th><th>votes</th>'
                     "<th>PoE log-lik.</th><th>score</th><th>source</th><th>detail</th><th>submitted as</th></tr>" +
                     "".join(f"<tr><td>{grid_svg(g, 'candidate', 90, 10)}</td><td class=num>{esc(v)}</td>"
                             f"<td class=num>{_fmt(p)}</td><td class=num>{_fmt(s)}</td><td>{esc(src)}</td>"
                             f"<td>{esc(d)}</td><td>{esc(m)}</td></tr>" for g, v, p, s, src, d, m in rows)
                     + "</table>" if rows else '<p class="muted">no candidates</p>'))
        parts.append(head + f'<div class="grids">{"".join(figs)}</div>'
                     + "".join(f'<p class="muted">note: {esc(n)}</p>' for n in notes) + table)
    score = "" if solved is None else f" — {solved}/{n_tests} right"
    why = "".join(f"<li>{esc(r)}</li>" for r in reasons)
    body = (f'<section class="task {"failed" if failed else "passed"}" id="task-{esc(tid)}" data-task="{esc(tid)}" '
            f'data-failed="{str(failed).lower()}"><h2>{esc(tid)} <span class="muted">outcome {esc(outcome)}{score}, '
            f"{info.get('candidates', 0)} candidates, adapter: {esc(info.get('adapter', '-'))}</span></h2>"
            + (f'<ul class="reasons">{why}</ul>' if why else "") + "".join(parts) + "</section>")
    return TaskView(tid, failed, solved, body)


def task_views(files: RunFiles) -> list[TaskView]:
    """One view per task of the report (and of the challenges), failed tasks first, then by task id."""
    from arcttt_kaggle.selection.select import attach_view_logprobs, select_all

    per_task = files.report.get("per_task") or {}
    attempted = {t: files.tasks[t] for t, v in per_task.items() if v.get("attempted") and t in files.tasks}
    cands = attach_view_logprobs(files.ttt, files.scores) if files.scores else files.ttt
    sels = select_all(attempted, cands, files.config.select, score_fn=None, program_set=files.programs)
    ids = list(dict.fromkeys(list(per_task) + list(files.tasks)))
    views = [_task_view(t, files, sels.get(t)) for t in ids]
    return sorted(views, key=lambda v: (not v.failed, v.task_id))


def render_report_html(files: RunFiles) -> str:
    """The whole page (pure: everything comes from ``files``)."""
    r = files.report
    status, reasons = run_status(r)
    views = task_views(files)
    timeline = (f'<img class="timeline" alt="timeline" src="data:image/png;base64,'
                f'{base64.b64encode(files.timeline_png).decode("ascii")}">' if files.timeline_png
                else '<p class="muted">no timeline.png</p>')
    nav = "".join(f'<a href="#task-{esc(v.task_id)}" class="{"wrong" if v.failed else "right"}">{esc(v.task_id)}</a>'
                  for v in views)
    n_failed = sum(v.failed for v in views)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>arcttt-kaggle run report: {esc(status)}</title><style>{CSS}</style></head><body>"
            f'<div class="arcttt-report"><h1>arcttt-kaggle run report</h1>{_banner(status, reasons, files.notes)}'
            f"{_summary(r)}<h2>Timeline</h2>{timeline}<h2>Phases: predicted vs measured</h2>{_phase_table(r)}"
            f"<h2>Incidents</h2>{_incidents(r)}"
            f"<h2>Tasks ({len(views)}, {n_failed} failed first)</h2><div class=\"nav\">{nav}</div>"
            + "".join(v.html for v in views) + "</div></body></html>\n")
