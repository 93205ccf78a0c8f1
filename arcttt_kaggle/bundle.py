"""The upload folder for Kaggle: a dataset (kit wheel + offline wheelhouse) and a notebook kernel.

    OUT/dataset/   dataset-metadata.json, requirements-kaggle.lock, wheels/arcttt_kaggle-*.whl, wheels/*.whl
    OUT/notebook/  kernel-metadata.json, arc_ttt_submission.ipynb

Upload with ``kaggle datasets create -p OUT/dataset`` and ``kaggle kernels push -p OUT/notebook``. The
wheelhouse is the pinned Kaggle GPU stack (``requirements-kaggle.lock``) for Python 3.11, manylinux x86_64,
downloaded with ``pip download --only-binary=:all:`` so nothing is built on Kaggle (about 5 GB with vLLM's
CUDA dependencies; ``with_wheels=False`` skips it for tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .dryrun import NOTEBOOK, REPO
from .kaggle import COMPETITION

DATASET_SLUG = "arcttt-kaggle-bundle"
KERNEL_SLUG = "arcttt-submission"


def build_bundle(out_dir: Path, *, user: str = "your-kaggle-username", with_wheels: bool = True,
                 model_dataset: str = "your-kaggle-username/arc-base-model", competition: str = COMPETITION) -> dict:
    out_dir = Path(out_dir)
    ds, nbdir = out_dir / "dataset", out_dir / "notebook"
    wheels = ds / "wheels"
    for d in (ds, nbdir):
        shutil.rmtree(d, ignore_errors=True)
    wheels.mkdir(parents=True)
    nbdir.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True)
    shutil.copy(REPO / "requirements-kaggle.lock", ds / "requirements-kaggle.lock")
    if with_wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
                        "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64", "--platform", "any",
                        "-r", str(REPO / "requirements-kaggle.lock"), "-d", str(wheels)], check=True)
    (ds / "dataset-metadata.json").write_text(json.dumps(
        {"title": DATASET_SLUG, "id": f"{user}/{DATASET_SLUG}", "licenses": [{"name": "apache-2.0"}]}, indent=1))
    shutil.copy(NOTEBOOK, nbdir / NOTEBOOK.name)
    (nbdir / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{user}/{KERNEL_SLUG}", "title": KERNEL_SLUG, "code_file": NOTEBOOK.name, "language": "python",
        "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
        "enable_internet": False, "dataset_sources": [f"{user}/{DATASET_SLUG}", model_dataset],
        "competition_sources": [competition], "kernel_sources": []}, indent=1))
    return {"dataset": str(ds), "notebook": str(nbdir), "wheels": sorted(p.name for p in wheels.iterdir())}
