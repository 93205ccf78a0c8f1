"""Execute the Kaggle notebook itself locally (nbclient), not a copy of its logic: the dry run.

The notebook reads its settings through ``kaggle.notebook_setup``; the dry run sets ``ARCTTT_*`` variables in
the kernel's environment (preset, sample paths, budget, output folder, fault) and runs every cell. It is
isolated from the machine it runs on (``dry_run_env``): the notebook's inputs root is a folder of the dry run's
own, so a ``/kaggle/input`` left on the machine is never searched for a bundle, challenges or a model. For the
``bad-task`` fault it writes a copy of the challenges with one malformed task added, so the lenient loader,
the placeholder answer and the report's reason are exercised end to end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from arcttt_kaggle.arc.candidates import atomic_write_text
from arcttt_kaggle.kaggle.notebook import DRY_RUN_ENV, INPUT_ENV
from arcttt_kaggle.run.faults import FaultPlan

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "arc_ttt_submission.ipynb"
BAD_TASK_ID = "badtask0"
# Faults that make an engine unimportable for real: a package of that name first on the kernel's PYTHONPATH
# (inherited by the workers) whose import raises, as a broken or missing install would.
IMPORT_FAULTS = {"no-vllm": "vllm", "no-unsloth": "unsloth"}


MODEL_SETTINGS = "run_settings.json"  # in a model folder: the run settings its card recommends (dotted keys)


def model_settings(model: Path | None, overrides: dict | None = None) -> dict:
    """The dry run's config overrides: the model folder's ``run_settings.json`` (the TTT settings a model was
    tuned with, e.g. the starter's full-precision LoRA and its step count), then ``overrides`` on top (the
    user's win). Each key must be a config key: a wrong one is an error naming the file."""
    from arcttt_kaggle.run.config import preset

    path = Path(model) / MODEL_SETTINGS if model is not None else None
    base = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else {}
    if not isinstance(base, dict):
        raise ValueError(f"{path}: expected a JSON object of dotted config keys, got {type(base).__name__}")
    try:
        preset("cpu-tiny").with_overrides(base)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e
    return {**base, **(overrides or {})}


def broken_import_shims(faults: set[str], out_dir: Path) -> list[str]:
    """Folders holding a package that raises ImportError on import, one per import fault in ``faults``."""
    paths = []
    for fault, module in IMPORT_FAULTS.items():
        if fault in faults:
            pkg = out_dir / "fault-shims" / fault / module
            pkg.mkdir(parents=True, exist_ok=True)
            atomic_write_text(pkg / "__init__.py", f"raise ImportError('injected fault {fault}: {module} cannot be "
                                                   f"imported (a broken install)')\n")
            paths.append(str(pkg.parent))
    return paths


def inject_bad_task(challenges: Path, out_dir: Path) -> Path:
    """A copy of ``challenges`` with one malformed task (a ragged row in a demonstration input)."""
    data = json.loads(Path(challenges).read_text(encoding="utf-8"))
    data[BAD_TASK_ID] = {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[0]]}]}
    path = out_dir / "challenges_with_bad_task.json"
    atomic_write_text(path, json.dumps(data))
    return path


def dry_run_env(*, preset: str, challenges: Path, solutions: Path | None, budget_seconds: float, out_dir: Path,
                fault: str = "", overrides: dict | None = None, throughput_file: Path | None = None,
                model: Path | None = None, shims: list[str] = ()) -> dict[str, str]:
    """The variables the dry run sets for the kernel (the rest of its environment is inherited).

    Besides the run's settings: ``ARCTTT_INPUT`` (the inputs root of the install cell and ``notebook_setup``) is
    ``out_dir/kaggle_input``, which the dry run never creates, so both see no attached dataset; ``ARCTTT_BUNDLE``
    is emptied (the install cell would run a bundle's install.sh); ``ARCTTT_DRY_RUN`` makes ``on_kaggle()``
    false, whatever the machine says. ``KAGGLE_IS_COMPETITION_RERUN`` is the caller's: a dry run can play the
    competition rerun on purpose (the save-run policy tests do). ``shims``: folders put first on ``PYTHONPATH``
    (``broken_import_shims``).
    """
    out_dir = Path(out_dir).resolve()
    return {"ARCTTT_PRESET": preset, "ARCTTT_CHALLENGES": str(Path(challenges).resolve()),
            "ARCTTT_SOLUTIONS": str(Path(solutions).resolve()) if solutions else "",
            "ARCTTT_OUT": str(out_dir), "ARCTTT_BUDGET_SECONDS": str(budget_seconds), "ARCTTT_FAULT": fault,
            "ARCTTT_OVERRIDES": json.dumps(overrides or {}),
            "ARCTTT_THROUGHPUT": str(Path(throughput_file).resolve()) if throughput_file else "",
            "ARCTTT_MODEL": str(Path(model).resolve()) if model else "",
            INPUT_ENV: str(out_dir / "kaggle_input"), "ARCTTT_BUNDLE": "", DRY_RUN_ENV: "1",
            "PYTHONPATH": os.pathsep.join(list(shims)
                                          + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def dry_run(*, preset: str = "cpu-tiny", challenges: Path, solutions: Path | None, budget_seconds: float,
            out_dir: Path, fault: str = "", overrides: dict | None = None, notebook: Path = NOTEBOOK,
            throughput_file: Path | None = None, model: Path | None = None) -> dict:
    """Run the notebook under a local kernel and return the report it wrote (``out_dir/report.json``).

    ``model``: a model folder for the run (``ARCTTT_MODEL``); None keeps the preset's (``cpu-tiny``: the tiny
    random-weight model, built on the fly).

    ``report["dry_run"]`` adds the wall time, the challenges file the run read (a copy for ``bad-task``) and
    ``failed``: the exception a cell raised (a save run that could only fall back), empty when none did.
    """
    import nbformat
    from nbclient import NotebookClient

    from nbclient.exceptions import CellExecutionError

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").unlink(missing_ok=True)
    faults = set(FaultPlan.parse(fault).moments)  # a bad spec fails here, before the kernel starts
    if "bad-task" in faults:
        challenges = inject_bad_task(challenges, out_dir)
    env = dry_run_env(preset=preset, challenges=challenges, solutions=solutions, budget_seconds=budget_seconds,
                      out_dir=out_dir, fault=fault, overrides=overrides, throughput_file=throughput_file, model=model,
                      shims=broken_import_shims(faults, out_dir))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    t0 = time.time()
    nb = nbformat.read(str(notebook), as_version=4)
    failed = ""
    try:
        # The kernel gets the budget plus start-up and teardown slack; the run itself never passes its deadline.
        client = NotebookClient(nb, timeout=int(budget_seconds + 300), kernel_name="python3",
                                resources={"metadata": {"path": str(REPO)}})
        client.execute()
    except CellExecutionError as e:
        # A cell raised, as on Kaggle the notebook version would fail (the preflight policy: a save run that
        # could only fall back raises after writing the submission). The report, if written, says why.
        failed = f"{e.ename}: {e.evalue}"
        if not (out_dir / "report.json").exists():
            raise
    finally:
        nbformat.write(nb, str(out_dir / "notebook_executed.ipynb"))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    report = json.loads((out_dir / "report.json").read_text())
    report["dry_run"] = {"notebook": str(notebook), "wall_s": round(time.time() - t0, 2), "budget_s": budget_seconds,
                         "challenges": str(challenges), "failed": failed}
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, default=str))
    return report
