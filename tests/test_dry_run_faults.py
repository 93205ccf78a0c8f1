"""The dry run's fault matrix: each fault a real failure injected in the run through the notebook; independent
faults share one run.

Slow (minutes on 2 cores): marked ``slow``; CI runs them.
"""

from __future__ import annotations

import pytest

from arcttt_kaggle.kaggle.dryrun import BAD_TASK_ID

from dry_run_common import JOINT_SHORT, fault_run, reasons

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fault, expect, status", [
    # The joint stage killed after its first checkpoint (the run goes on from it), then a worker crash.
    ("worker-crash,joint-crash", ("exited with code", "joint stage: the joint stage exited with code -9",
                                  "goes on from its checkpoint"), "degraded"),
    # Independent faults share one run: an exception in the worker's first task, a malformed task at load, and
    # a CUDA error in the first decode call (the worker ends at once and is replaced).
    ("task-exception,bad-task,cuda-error", ("injected fault: task-exception", "rejected at load",
                                            "a CUDA error ended the decode engine", "worker 0 was replaced"),
     "degraded"),
    # Garbage from the first decoding pass, then the second pass hangs: nothing parsable is left to any task.
    ("unparsable@1,decode-hang@2", ("terminated at the work deadline", "all candidates unparsable",
                                    "outputs of decoding pass 1 were unparsable",
                                    "decoding on worker 0 hung: injected fault: decode-hang (pass 2)"), None),
    # Found by the soak: garbage from the second pass alone left no trace in the status. The first pass's
    # answers stay in the submission.
    ("unparsable@2", ("outputs of decoding pass 2 were unparsable",), "degraded"),
    ("deadline", ("deadline",), None),
])
def test_fault_matrix(fault, expect, status, tmp_path):
    # A hang lasts until the work deadline: a shorter budget tests the same path in half the time.
    report = fault_run(tmp_path, fault, budget=150.0 if "decode-hang" in fault else 240.0,
                       overrides=JOINT_SHORT if "joint" in fault else None)
    for why in expect:
        said = reasons(report) + report["status_reasons"]
        assert any(why in r for r in said), (why, said)
    # decode-hang, unparsable and an early deadline can leave no model answer: then the run is fallback-only,
    # whatever the program expert answered; a model answer that made it into an attempt makes it degraded.
    model_answered = any("model" in sources for task in report["per_task"].values()
                         for sources in task.get("attempt_sources", []))
    assert report["status"] == (status or ("degraded" if model_answered else "fallback-only"))
    assert report["status_reasons"]
    if "cuda-error" in fault:  # the first worker stopped after one failed engine call; its replacement decoded
        assert [(w["attempt"], w["returncode"]) for w in report["workers"]] == [(0, 4), (1, 0)]
        assert all(t["candidates"] > 0 for t in report["per_task"].values() if t.get("attempted"))
    if "joint-crash" in fault:  # its phase is in the report, and the workers loaded the checkpoint
        assert report["joint"]["source"] == "checkpoint" and report["phases"]["joint"]["measured_s"] > 0
    if "unparsable@2" in fault or "bad-task" in fault:  # named by the status itself (found by the soak)
        assert any(("pass 2 were unparsable" if "unparsable" in fault else f"task {BAD_TASK_ID} rejected at load")
                   in r for r in report["status_reasons"]), report["status_reasons"]
    if "bad-task" in fault:
        assert report["per_task"][BAD_TASK_ID]["outcome"] == "placeholder"
        assert report["dry_run"]["challenges"].endswith("challenges_with_bad_task.json")