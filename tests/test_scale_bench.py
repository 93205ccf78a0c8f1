"""``benchmarks/scale.py`` run tiny on the packaged sample: the real end of a run (``Run.answers``, the submission,
``build_report``, ``report.html``, ``Run.finish``) on synthetic worker folders, every stage timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import scale  # noqa: E402

from arcttt_kaggle.arc.data import package_sample_dir  # noqa: E402
from arcttt_kaggle.arc.submission import validate_submission_file  # noqa: E402

STAGES = ("read_candidates", "selection", "submission", "report", "timeline", "report_html", "finish")


def test_the_scale_benchmark_drives_the_real_end_of_run_on_synthetic_worker_folders(tmp_path, capsys):
    out = tmp_path / "scale"
    res = scale.main(["--tasks", "6", "--candidates", "20", "--views", "2", "--top-c", "4", "--workers", "2",
                      "--out", str(out), "--challenges", str(package_sample_dir() / "arc-agi_test_challenges.json")])
    printed = capsys.readouterr().out
    assert "skipped" not in res
    assert res["tasks"] == 6 and res["candidates"] == 20 * res["outputs"]
    assert set(STAGES) <= set(res["timings"]) and all(res["timings"][s] >= 0 for s in STAGES)
    assert all(res["traced_peak_mib"][s] > 0 for s in STAGES if s != "finish")
    last = printed.strip().splitlines()[-1]
    assert last.startswith(f"scale: 6 tasks, {res['outputs']} test outputs, 20 candidates/output, 2 views: selection ")
    assert "report.html" in last and "peak RSS" in last

    html, sub = out / "report.html", out / "submission.json"
    assert html.is_file() and sub.is_file() and html.stat().st_size == res["files"]["report.html"]
    assert validate_submission_file(sub, out / "challenges.json") == []
    # two workers' folders, as Run.launch names them, each with the files the worker writes
    for w in (0, 1):
        for name in ("candidates.json", "scores.json", "allocation.json", "events.jsonl"):
            assert (out / "work" / f"worker{w}-0" / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok", report["status_reasons"]
    assert len(report["workers"]) == 2 and report["attempted"] == 6
    with_cands = [t for t, v in report["per_task"].items() if v["candidates"] > 0]
    assert len(with_cands) == 6
    for t in with_cands:
        sources = report["per_task"][t]["attempt_sources"]
        assert sources and all(s[0] != "fallback" for s in sources), (t, sources)
        assert all(s["method"] == "poe" and s["scored"] > 0 for s in report["per_task"][t]["selection"]
                   if s["distinct"] > 1), t
    # the page draws every task
    page = html.read_text(encoding="utf-8")
    assert all(f'data-task="{t}"' in page for t in with_cands)


def test_the_benchmark_skips_with_a_reason_when_its_challenges_are_missing(tmp_path, capsys):
    res = scale.main(["--challenges", str(tmp_path / "absent.json"), "--out", str(tmp_path / "o")])
    assert "skipped" in res and "absent.json" in res["skipped"]
    assert "scale: skipped:" in capsys.readouterr().out
