"""Specification (issue 19): the dry run is isolated from the machine it runs on. A ``/kaggle/input`` there (here
a fake one holding a bundle manifest whose install.sh fails, a model folder and challenges), an ``ARCTTT_BUNDLE``
or Kaggle's variables must not reach the notebook's install cell or ``notebook_setup`` under the environment
``dry_run_env`` builds. Each test first shows the same machine state does reach them without it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from arcttt_kaggle.arc.data import package_sample_dir
from arcttt_kaggle.kaggle import notebook
from arcttt_kaggle.kaggle.dryrun import NOTEBOOK, dry_run_env

SAMPLE = package_sample_dir() / "arc-agi_test_challenges.json"


def machine_input(root):
    """A leftover Kaggle inputs folder: a kit bundle whose install.sh fails, a model, 2026 challenges."""
    bundle = root / "arcttt-kaggle-bundle"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps({"kit": "arcttt-kaggle", "model_dataset": "me/bogus-model"}))
    (bundle / "install.sh").write_text(f"touch {root}/INSTALL_RAN; exit 3\n")
    model = root / "bogus-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    comp = root / "competitions" / notebook.COMPETITION
    comp.mkdir(parents=True)
    (comp / "arc-agi_test_challenges.json").write_text("{}")
    return bundle, model, comp / "arc-agi_test_challenges.json"


def the_dry_runs_env(tmp_path) -> dict[str, str]:
    return dry_run_env(preset="cpu-tiny", challenges=SAMPLE, solutions=None, budget_seconds=60,
                       out_dir=tmp_path / "dry")


@pytest.fixture
def environ_restored():
    """notebook_setup sets the offline variables in os.environ for good: put the environment back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_notebook_setup_under_the_dry_runs_env_ignores_the_machines_kaggle_input(tmp_path, monkeypatch,
                                                                                  environ_restored):
    from arcttt_kaggle.run.preflight import fatal_reasons, is_competition_rerun

    root = tmp_path / "kaggle" / "input"
    bundle, model, challenges = machine_input(root)
    monkeypatch.setattr(notebook, "INPUT_ROOT", root)  # stands in for the machine's /kaggle/input
    for k in ("ARCTTT_PRESET", "ARCTTT_CHALLENGES", "ARCTTT_MODEL", "ARCTTT_BUDGET_SECONDS", "ARCTTT_OVERRIDES",
              "ARCTTT_THROUGHPUT", notebook.INPUT_ENV, notebook.DRY_RUN_ENV):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ARCTTT_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # the machine claims to be a Kaggle kernel
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)

    cfg, pre = notebook.notebook_setup()  # without the dry run's variables the leftovers are found
    assert cfg.challenges == str(challenges) and notebook.bundle_manifest()["model_dataset"] == "me/bogus-model"
    assert notebook.find_model() == model and notebook.on_kaggle() and pre.on_kaggle

    for k, v in the_dry_runs_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    cfg, pre = notebook.notebook_setup()
    assert cfg.challenges == str(SAMPLE.resolve()) == pre.challenges
    assert notebook.bundle_manifest() == {}
    with pytest.raises(FileNotFoundError, match="none") as e:
        notebook.find_model()
    assert str(tmp_path / "dry") in str(e.value)
    assert not notebook.on_kaggle() and not pre.on_kaggle and not is_competition_rerun()
    assert "KAGGLE_IS_COMPETITION_RERUN" not in the_dry_runs_env(tmp_path)  # a dry run may play the rerun on purpose
    assert not any("Kaggle" in r for r in fatal_reasons(pre)[0])
    assert cfg.preset == "cpu-tiny" and cfg.model == "tiny"


def install_cell() -> str:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    src = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert src.startswith("%%bash\n")
    return src.split("\n", 1)[1]


def test_the_install_cell_under_the_dry_runs_env_neither_installs_nor_stops(tmp_path):
    root = tmp_path / "kaggle" / "input"
    bundle, _, _ = machine_input(root)
    script = install_cell()
    machine = {**os.environ, "ARCTTT_INPUT": str(root)}  # a machine whose inputs are mounted elsewhere
    for extra in ({}, {"ARCTTT_BUNDLE": str(bundle)}):
        r = subprocess.run(["bash", "-c", script], env={**machine, **extra}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and (root / "INSTALL_RAN").exists()  # the leftover bundle's install.sh ran
        (root / "INSTALL_RAN").unlink()
        r = subprocess.run(["bash", "-c", script], env={**machine, **extra, **the_dry_runs_env(tmp_path)},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "not on Kaggle, using the installed environment" in r.stdout and not (root / "INSTALL_RAN").exists()
