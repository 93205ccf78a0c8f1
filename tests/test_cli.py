"""build_submission.py's fast subcommands (score, validate, plan), the notebook's thinness, the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from arcttt_kaggle.arc.data import package_sample_dir
from arcttt_kaggle.kaggle.dryrun import NOTEBOOK, REPO

SAMPLE = package_sample_dir()
CHALLENGES = SAMPLE / "arc-agi_test_challenges.json"
SOLUTIONS = SAMPLE / "arc-agi_test_solutions.json"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "build_submission.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.fixture()
def perfect_submission(tmp_path) -> Path:
    sols = json.loads(SOLUTIONS.read_text())
    sub = {tid: [{"attempt_1": g, "attempt_2": g} for g in grids] for tid, grids in sols.items()}
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(sub))
    return path


def test_score_prints_one_for_the_solutions(perfect_submission):
    r = cli("score", str(perfect_submission), str(SOLUTIONS))
    assert r.returncode == 0, r.stderr
    assert "13/13" in r.stdout or "1.000" in r.stdout


def test_validate_accepts_valid_and_rejects_a_missing_task(perfect_submission, tmp_path):
    assert cli("validate", str(perfect_submission), str(CHALLENGES)).returncode == 0
    sub = json.loads(perfect_submission.read_text())
    missing = next(iter(sub))
    del sub[missing]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(sub))
    r = cli("validate", str(bad), str(CHALLENGES))
    assert r.returncode != 0 and missing in r.stderr


def test_plan_prints_per_worker_phases():
    r = cli("plan", "--preset", "t4x2", "--challenges", str(CHALLENGES))
    assert r.returncode == 0, r.stderr
    assert "worker" in r.stdout and "train" in r.stdout and "fits" in r.stdout
    assert sum(1 for line in r.stdout.splitlines() if line.strip()[:1] in "01") == 2  # one row per T4


def test_notebook_is_thin():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("run(config" in c for c in code) and any("notebook_setup()" in c for c in code)
    for src in code:
        assert "def " not in src and "class " not in src, "no functions or classes in notebook cells"
        assert "%%writefile" not in src and "sed " not in src, "no library code written from cells, no sed patches"
    assert all(len(c.splitlines()) <= 16 for c in code)  # the install cell: find the bundle, run its install.sh


def test_bundle_without_wheels(tmp_path):
    r = cli("bundle", "--out", str(tmp_path / "bundle"), "--no-wheels", "--kaggle-user", "alice")
    assert r.returncode == 0, r.stderr
    ds, nbdir = tmp_path / "bundle" / "dataset", tmp_path / "bundle" / "notebook"
    meta = json.loads((ds / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/arcttt-kaggle-bundle" and meta["licenses"]
    kernel = json.loads((nbdir / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True
    assert kernel["code_file"] == NOTEBOOK.name and (nbdir / kernel["code_file"]).exists()
    assert "alice/arcttt-kaggle-bundle" in kernel["dataset_sources"] and kernel["competition_sources"]
    nb = nbformat.read(str(nbdir / NOTEBOOK.name), as_version=4)
    assert "arcttt-kaggle-bundle" in nb.cells[1].source  # the install cell reads the dataset it ships with
    wheels = list((ds / "wheels").glob("arcttt_kaggle-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    for needed in ("arcttt_kaggle/run/pipeline.py", "arcttt_kaggle/programs/expert.py",
                   "arcttt_kaggle/sample_data/arc-agi_test_challenges.json", "arcttt_kaggle/sample_data/LICENSE"):
        assert needed in names
    assert (ds / "requirements.lock").read_text().count("vllm==0.32.0") == 1  # default target: Python 3.12, CUDA 13


def test_programs_cli_writes_candidates_submission_and_accuracy(tmp_path):
    r = cli("programs", "--challenges", str(CHALLENGES), "--solutions", str(SOLUTIONS), "--seconds-per-task", "2",
            "--out", str(tmp_path / "p.json"), "--submission-out", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    assert cli("validate", str(tmp_path / "s.json"), str(CHALLENGES)).returncode == 0
    line = next(x for x in r.stdout.splitlines() if x.startswith("tasks 10"))
    solved = int(line.split("solved ")[1].split()[0])
    assert solved >= 1 and "verified but wrong" in line


def test_a_model_folders_run_settings_are_the_dry_runs_overrides_under_the_users(tmp_path):
    from arcttt_kaggle.kaggle.dryrun import model_settings

    assert model_settings(None, {"train.steps": 8}) == {"train.steps": 8}
    assert model_settings(tmp_path, {}) == {}  # a model folder without the file
    (tmp_path / "run_settings.json").write_text(json.dumps({"train.steps": 96, "train.load_in_4bit": False}))
    assert model_settings(tmp_path, {"train.steps": 8}) == {"train.steps": 8, "train.load_in_4bit": False}
    (tmp_path / "run_settings.json").write_text(json.dumps({"train.stepz": 96}))
    with pytest.raises(ValueError, match=r"run_settings.json: unknown config key 'train.stepz'"):
        model_settings(tmp_path)


def test_pretrain_refuses_a_shape_or_profile_with_init_and_warns_without_exclude(tmp_path):
    r = cli("pretrain", "--data", str(CHALLENGES), "--out", str(tmp_path / "m"), "--init", str(REPO / "models" / "x"),
            "--shape", "arc-nano", "--tokens", "10")
    assert r.returncode != 0 and "drop --shape" in r.stderr
    r = cli("pretrain", "--data", str(CHALLENGES), "--out", str(tmp_path / "m"), "--shape", "arc-nano",
            "--tokens", "1", "--max-seq-len", "1024", "--tokens-per-batch", "1024")
    assert r.returncode == 0, r.stderr
    assert "WARNING: no --exclude: nothing is held out" in r.stderr
    assert "arc-tiny" in cli("pretrain", "--help").stdout  # --shape lists its choices
