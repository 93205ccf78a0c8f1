"""The run status (ok / degraded / fallback-only, with reasons) and report.html, the page a person reads.

``run_status`` is checked on constructed reports, one per reason kind. ``report.html`` is checked on an output
folder built here with the real writers (config, candidate files, selection, submission, ``build_report``,
timeline) and parsed with ``html.parser``. The slow test executes the notebook (the dry run, real engines) and
checks that its last cell shows the page with the status printed first.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from arcttt_kaggle.arc.candidates import Candidate, write_candidate_file
from arcttt_kaggle.run.config import preset
from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
from arcttt_kaggle.run.report import build_report, format_summary, incidents, run_status, status_line, write_timeline
from arcttt_kaggle.run.report_html import write_report_html
from arcttt_kaggle.selection.select import attempts_or_fallback, select_all
from arcttt_kaggle.arc.submission import build_submission, fallback_attempts, write_submission

SAMPLE = package_sample_dir()
RIGHT, MIXED, EMPTY = "00576224", "31d5ba1a", "0692e18c"  # 1, 2 and 1 test inputs
BAD = "badtask0"  # malformed: rejected at load, answered with the placeholder


# -- run_status on constructed reports ------------------------------------------------------------------------

def answered(n_tasks: int = 2) -> dict:
    """A clean report: every task answered by the model, nothing in incidents."""
    sel = {"attempts": [[[1]], [[2]]], "program_role": "off"}
    return {"tasks": n_tasks, "fallback_tasks": [], "budget": {"finished_before_deadline": True},
            "workers": [{"worker": 0, "attempt": 0, "reason": ""}], "incidents": [],
            "per_task": {f"t{i}": {"attempted": True, "outcome": "ttt", "selection": [sel]} for i in range(n_tasks)}}


def ev(phase: str, status: str, **kw) -> dict:
    return {"worker": kw.pop("worker", 0), "phase": phase, "status": status, "task": kw.pop("task", ""), "t": 1.0, **kw}


def test_a_clean_report_is_ok_with_no_reasons():
    assert run_status(answered()) == ("ok", [])


@pytest.mark.parametrize("change, expect", [
    (lambda r: r["incidents"].append(ev("engine", "fallback", stage="train", rung="peft", error="unsloth: no GPU")),
     "train engine fell back (rung peft) on worker 0: unsloth: no GPU"),
    (lambda r: r["incidents"].append(ev("engine", "fallback", stage="decode", rung="vllm", next="hf", error="boom")),
     "decode engine fell back (rung vllm) on worker 0: boom; decoding on transformers instead of vLLM"),
    (lambda r: r.update(downgrades=[{"source": "memory plan", "setting": "decode.backend", "was": "vllm", "now": "hf",
                                     "what": "decoding on transformers instead of vLLM", "why": "16-bit does not fit"}]),
     "memory plan: decoding on transformers instead of vLLM (16-bit does not fit)"),
    (lambda r: r["incidents"].append(ev("worker", "replaced", worker=-1, replaced_worker=0, reason="exit -9")),
     "worker 0 was replaced (exit -9)"),
    (lambda r: r["workers"].extend([{"worker": 1, "attempt": 0, "reason": "worker 1 exited with code -9"},
                                    {"worker": 1, "attempt": 1, "reason": ""}]),
     "worker 1 was replaced (worker 1 exited with code -9)"),
    (lambda r: r["workers"].append({"worker": 2, "attempt": 0, "reason": "terminated at the work deadline"}),
     "worker 2 (attempt 0): terminated at the work deadline"),
    (lambda r: r["incidents"].extend([ev("score", "skipped", task="t0", reason="deadline reached"),
                                      ev("score", "skipped", task="t1", reason="deadline reached")]),
     "scoring cut for 2 task(s) (t0, t1): deadline reached"),
    (lambda r: r["incidents"].append(ev("train", "error", task="t1", reason="RuntimeError: boom")),
     "TTT failed for 1 task(s) (t1), decoded with the base model: RuntimeError: boom"),
    (lambda r: r["incidents"].append(ev("train", "skipped", task="t0", reason="training phase deadline reached")),
     "TTT skipped for 1 task(s) (t0)"),
    (lambda r: r["incidents"].append(ev("decode", "error", reason="decoder failed to start: OOM")),
     "decoding on worker 0 failed: decoder failed to start: OOM"),
    (lambda r: r["incidents"].append(ev("decode", "hang", reason="injected fault: decode-hang")),
     "decoding on worker 0 hung"),
    (lambda r: r["incidents"].append(ev("worker", "error", reason="Traceback...\n  File x\nValueError: bad")),
     "worker 0 raised: ValueError: bad"),
    (lambda r: r["incidents"].append(ev("programs", "error", worker=-1)), "the program expert did not finish"),
    (lambda r: r["incidents"].append(ev("run", "error", worker=-1, reason="OSError: disk full")),
     "the run failed: OSError: disk full"),
    (lambda r: r.update(fallback_tasks=["t1"]), "1 of 2 tasks fell back: t1"),
    (lambda r: r["incidents"].append(ev("decode", "unparsable", reason="all 8 outputs of decoding pass 2 were "
                                        "unparsable")),
     "decoding on worker 0: all 8 outputs of decoding pass 2 were unparsable"),
    (lambda r: r.update(rejected=[{"task_id": "bad0", "reason": "train[0].input: ragged rows"}]),
     "task bad0 rejected at load: train[0].input: ragged rows"),
    (lambda r: r["per_task"]["t0"]["selection"].append({"attempts": [None, None]}),
     "1 task(s) answer some test inputs with the fallback: t0"),
    (lambda r: r["budget"].update(finished_before_deadline=False), "the run finished after its deadline"),
])
def test_each_kind_of_fallback_makes_the_run_degraded_and_is_named(change, expect):
    report = answered()
    change(report)
    status, reasons = run_status(report)
    assert status == "degraded"
    assert any(expect in r for r in reasons), reasons


def test_no_model_or_program_answer_anywhere_is_fallback_only():
    report = answered()
    for t in report["per_task"].values():
        t["selection"] = [{"attempts": [None, None]}]
        t["outcome"] = "fallback"
    report["fallback_tasks"] = sorted(report["per_task"])
    status, reasons = run_status(report)
    assert status == "fallback-only"
    assert reasons[0].startswith("no task got a model or program answer") and "2 of 2 tasks fell back" in reasons[1]
    assert run_status({})[0] == "fallback-only"  # nothing answered at all, sections absent: no crash


def test_answers_from_the_program_expert_alone_are_fallback_only():
    report = answered()
    report["per_task"]["t0"]["selection"] = [{"attempts": [[[5]], None], "program_role": "sole", "distinct": 0}]
    report["per_task"]["t1"]["selection"] = [{"attempts": [None, None], "program_role": "off", "distinct": 0}]
    status, reasons = run_status(report)
    assert status == "fallback-only"
    assert reasons[0] == "no task got a model answer: every attempt is the program expert's (1 task(s): t0) or the fallback"
    # the expert overriding the model's first attempt leaves the model's answer second: a model run
    report["per_task"]["t1"]["selection"] = [{"attempts": [[[5]], [[1]]], "program_role": "overrode", "distinct": 1}]
    assert run_status(report)[0] != "fallback-only"


def test_a_fatal_preflight_is_fallback_only_even_with_answers():
    report = answered()
    report["preflight"] = {"fatal": ["base model folder missing"], "warnings": []}
    assert run_status(report) == ("fallback-only", ["preflight: base model folder missing"])


def test_incidents_keep_only_degrading_events_with_one_line_reasons():
    events = [{"worker": 0, "phase": "train", "status": "ok", "task": "a", "start": 10.0, "end": 11.0},
              {"worker": 0, "phase": "worker", "status": "error", "task": "", "start": 12.5, "end": 12.5,
               "reason": "Traceback (most recent call last):\n  File \"w.py\"\nKeyError: 'x'\n"},
              {"worker": -1, "phase": "engine", "status": "fallback", "task": "", "start": 11.0, "end": 11.0,
               "stage": "decode", "rung": "hf", "error": "vllm: no kernel"}]
    out = incidents(events, t0=10.0)
    assert [(e["phase"], e["t"]) for e in out] == [("engine", 1.0), ("worker", 2.5)]
    assert out[1]["reason"] == "KeyError: 'x'" and out[0]["rung"] == "hf" and "start" not in out[0]


# -- report.html on a constructed output folder ---------------------------------------------------------------

class Page(HTMLParser):
    """Tags with attributes in document order, the text inside each task section, and every attribute value."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.section_text: dict[str, str] = {}
        self.banner_text = ""
        self._section: str | None = None
        self._banner_depth = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self._section = a["data-task"]
            self.section_text[self._section] = ""
        if tag == "div" and ("banner" in a.get("class", "") or self._banner_depth):
            self._banner_depth += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == "div" and self._banner_depth:
            self._banner_depth -= 1

    def handle_data(self, data):
        if self._section:
            self.section_text[self._section] += data
        if self._banner_depth:
            self.banner_text += data

    def grids(self, role: str) -> list[str]:
        return [a["data-cells"] for t, a in self.tags if t == "svg" and a.get("data-role") == role]


def cells(grid) -> str:
    return "|".join("".join(str(int(v)) for v in row) for row in np.asarray(grid))


def make_out_dir(out: Path, with_solutions: bool) -> dict:
    """A finished run's output folder, written by the real writers: RIGHT is solved by TTT votes; MIXED has a
    verified program that decides test 0 (right) and wrong TTT answers on test 1; EMPTY has no candidates;
    BAD is malformed (a ragged row), rejected at load and answered with the placeholder."""
    solved = load_challenges(SAMPLE / "arc-agi_test_challenges.json",
                             solutions=SAMPLE / "arc-agi_test_solutions.json").tasks
    ids = [RIGHT, MIXED, EMPTY]
    out.mkdir(parents=True, exist_ok=True)
    bad = {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[0]]}]}
    (out / "challenges.json").write_text(json.dumps({**{t: solved[t].to_dict() for t in ids}, BAD: bad}))
    sols = ""
    if with_solutions:
        (out / "solutions.json").write_text(json.dumps({t: [o.tolist() for o in solved[t].test_outputs] for t in ids}))
        sols = str(out / "solutions.json")
    cfg = replace(preset("cpu-tiny"), challenges=str(out / "challenges.json"), solutions=sols, out_dir=str(out))
    cfg.write(out / "config.json")
    loaded = load_challenges(cfg.challenges, strict=False)
    tasks = loaded.tasks
    right = solved[RIGHT].test[0].output
    wrong = np.ones_like(solved[MIXED].test[1].output)
    ttt = {RIGHT: [[Candidate(right, view="id"), Candidate(right, view="rot90"), Candidate(np.zeros((2, 2), np.uint8))]],
           MIXED: [[Candidate(wrong, view="id")], [Candidate(wrong, view="id"), Candidate(None, view="t")]]}
    progs = {MIXED: [[Candidate(solved[MIXED].test[0].output, source="program", program="recolor(2->5)", verified=True)],
                     []]}
    wdir = out / "work" / "worker0-0"
    write_candidate_file(wdir / "candidates.json", ttt, "ttt", {"worker": 0})
    write_candidate_file(out / "programs.json", progs, "programs")
    sels = select_all(tasks, ttt, cfg.select, program_set=progs)
    answers = {t: [attempts_or_fallback(s, fb) for s, fb in zip(sels[t], fallback_attempts(tasks[t]))] for t in tasks}
    write_submission(cfg.submission_file, build_submission(tasks, answers, placeholders={BAD: 1}))
    t0 = time.time()
    events = [{"worker": -1, "phase": "load", "status": "ok", "task": "", "start": t0, "end": t0 + 0.2},
              {"worker": 0, "phase": "train", "status": "ok", "task": RIGHT, "start": t0 + 1, "end": t0 + 3},
              {"worker": 0, "phase": "train", "status": "error", "task": EMPTY, "start": t0 + 3, "end": t0 + 3.5,
               "reason": "ValueError: no TTT examples fit the token budget"},
              {"worker": 0, "phase": "decode", "status": "ok", "task": "", "start": t0 + 4, "end": t0 + 6}]
    budget = SimpleNamespace(start=t0, deadline=t0 + 600)
    write_timeline(events, budget, out / "timeline.png")
    run = SimpleNamespace(cfg=cfg, all_tasks=tasks, tasks=tasks, rejected=loaded.rejected, workers=[], budget=budget,
                          reasons={MIXED: ["<script>alert('x')</script> & more"],
                                   BAD: [f"rejected at load: {loaded.rejected[0].reason}"]}, selections=sels,
                          final_candidates=(ttt, progs))
    report = build_report(run, events)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


@pytest.fixture(scope="module", params=[True, False], ids=["solutions", "no-solutions"])
def built(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    report = make_out_dir(out, with_solutions=request.param)
    path = write_report_html(out)
    return request.param, report, path.read_text(encoding="utf-8"), out


def test_build_report_carries_the_status_and_the_summary_prints_it_first(built):
    _, report, _, _ = built
    assert report["status"] == "degraded"
    assert f"2 of 4 tasks fell back: {EMPTY}, {BAD}" in report["status_reasons"]
    assert any("TTT failed for 1 task(s) (" + EMPTY for r in report["status_reasons"])
    lines = format_summary(report).splitlines()
    assert lines[0] == f"status: degraded ({len(report['status_reasons'])} reasons)"
    assert lines[1].startswith("  - ")


def test_the_page_opens_with_the_status_banner_and_its_reasons(built):
    _, report, text, _ = built
    page = Page(text)
    banner = [a for t, a in page.tags if t == "div" and "banner" in a.get("class", "")]
    assert len(banner) == 1 and banner[0]["data-status"] == "degraded"
    assert "status: degraded" in page.banner_text
    assert all(r in page.banner_text for r in report["status_reasons"])
    assert text.index('class="banner"') < text.index("<section")


def test_one_section_per_task_failed_tasks_first(built):
    with_solutions, _, text, _ = built
    page = Page(text)
    sections = [(a["data-task"], a["data-failed"]) for t, a in page.tags if t == "section"]
    assert sorted(s for s, _ in sections) == sorted([RIGHT, MIXED, EMPTY, BAD])
    flags = [f for _, f in sections]
    assert flags == sorted(flags, key=lambda f: f != "true")  # every failed section before every passed one
    # EMPTY and BAD fell back; MIXED has a fallback reason (and, with solutions, a wrong test 1); RIGHT is solved.
    assert dict(sections) == {EMPTY: "true", MIXED: "true", RIGHT: "false", BAD: "true"}
    assert "rejected at load: " in page.section_text[BAD] and "non-rectangular" in page.section_text[BAD]


def test_attempts_are_the_submitted_ones_and_expected_only_with_solutions(built):
    with_solutions, _, text, out = built
    page = Page(text)
    sub = json.loads((out / "submission.json").read_text())
    order = [a["data-task"] for t, a in page.tags if t == "section"]
    want_1 = [cells(x["attempt_1"]) for tid in order for x in sub[tid]]
    assert page.grids("attempt-1") == want_1 and len(page.grids("attempt-2")) == len(want_1)
    assert len(page.grids("input")) == 4  # 1 + 2 + 1 test inputs; BAD's input is not drawn (it did not load)
    assert sub[BAD] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]  # the placeholder, drawn like any attempt
    if with_solutions:
        sols = json.loads((out / "solutions.json").read_text())
        assert page.grids("expected") == [cells(g) for tid in order for g in sols.get(tid, [])]
        assert "✓ right" in page.section_text[RIGHT] and "✗ wrong" in page.section_text[MIXED]
    else:
        assert page.grids("expected") == [] and "✓" not in text and "✗" not in text


def test_top_candidates_show_votes_source_and_the_program_experts_role(built):
    _, _, text, _ = built
    page = Page(text)
    mixed = page.section_text[MIXED]
    assert "program expert role decided (overrode)" in mixed  # test 0: the verified program beat TTT's answer
    assert "program expert role none (off)" in mixed  # test 1: no program answer
    assert "recolor(2->5)" in mixed and "program" in mixed
    right = page.section_text[RIGHT]
    assert "3 candidates considered, 0 unparsable, 2 distinct grids" in right
    assert "program expert role none (off)" in right
    assert "no candidates" in page.section_text[EMPTY]
    # fallback attempts are labelled as such
    assert "attempt 1 (fallback)" in page.section_text[EMPTY]


def test_text_is_escaped_and_nothing_is_fetched_from_the_network(built):
    _, _, text, _ = built
    page = Page(text)
    assert not any(t == "script" for t, _ in page.tags)
    assert "<script>alert('x')</script> & more" in page.section_text[MIXED]
    assert "http://" not in text and "https://" not in text
    for t, a in page.tags:
        for k in ("src", "href"):
            if k in a:
                assert a[k].startswith(("data:", "#")), (t, a)
    assert not any(t in ("link", "iframe", "object", "embed") for t, _ in page.tags)


def test_the_timeline_is_embedded_as_a_png_data_uri(built):
    _, _, text, out = built
    imgs = [a["src"] for t, a in Page(text).tags if t == "img"]
    assert len(imgs) == 1 and imgs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(imgs[0].split(",", 1)[1]) == (out / "timeline.png").read_bytes()


def test_the_phase_table_and_incidents_are_on_the_page(built):
    _, report, text, _ = built
    page = Page(text)
    classes = [a.get("class") for t, a in page.tags if t == "table"]
    assert "phases" in classes and "incidents" in classes
    assert "no TTT examples fit the token budget" in text


def test_a_folder_without_report_json_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.json"):
        write_report_html(tmp_path)


# -- end to end: the notebook ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_notebook_shows_the_page_with_the_status_printed_first(tmp_path):
    import nbformat

    from arcttt_kaggle.kaggle.dryrun import dry_run

    report = dry_run(challenges=SAMPLE / "arc-agi_test_challenges.json", solutions=SAMPLE / "arc-agi_test_solutions.json",
                     budget_seconds=400, out_dir=tmp_path,
                     overrides={"max_tasks": 2, "train.steps": 4, "decode.views_per_test": 2,
                                "programs.seconds_per_task": 1.0})
    assert report["status"] in ("ok", "degraded") and (tmp_path / "report.html").is_file()
    page = Page((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert len([a for t, a in page.tags if t == "section"]) == 10  # 2 attempted, 8 on the fallback (max_tasks)
    nb = nbformat.read(str(tmp_path / "notebook_executed.ipynb"), as_version=4)  # joins multi-line strings
    outputs = nb.cells[-1].outputs
    printed = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert printed.splitlines()[0] == status_line(report) and status_line(report).startswith("status: ")
    shown = [o["data"]["text/html"] for o in outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1 and 'class="banner"' in "".join(shown)


def test_dfs_summary_counts_candidates_per_task_and_names_truncation():
    from arcttt_kaggle.run.report import dfs_summary

    ev = [{"phase": "decode", "status": "ok", "dfs_candidates": {"t1": 2, "t1/adapter-b": 1, "t2": 0},
           "dfs_truncated": {"t2": "max_tokens 40 reached with branches open"}},
          {"phase": "decode", "status": "ok", "dfs_candidates": {"t1": 4}},
          {"phase": "train", "status": "ok", "dfs_candidates": {"t9": 9}}]
    assert dfs_summary(ev) == {"candidates": {"t1": 7, "t2": 0},
                               "truncated": {"t2": "max_tokens 40 reached with branches open"}}
    assert dfs_summary([]) == {"candidates": {}, "truncated": {}}
