"""Shared fixtures: the shipped sample, and ``../shared/data`` (tests that need it skip with a reason)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from arcttt_kaggle.arc.data import Task, load_challenges, package_sample_dir, shared_data_dir


@pytest.fixture(scope="session")
def sample_tasks() -> dict[str, Task]:
    """The 10 sample tasks shipped in the package, with their solutions attached."""
    d = package_sample_dir()
    return load_challenges(d / "arc-agi_test_challenges.json", solutions=d / "arc-agi_test_solutions.json").tasks


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is absent on this machine (ARC-AGI-1/2 corpora are not shipped in the repo)")
    return d


def pytest_configure(config):
    """Under pytest-xdist each worker process gets its own Unsloth compile cache: the tests that train with
    Unsloth in-process would otherwise write and import one ``./unsloth_compiled_cache`` at the same time (the
    race the kit's own workers avoid the same way, ``run.pipeline.worker_env``)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        os.environ["UNSLOTH_COMPILE_LOCATION"] = str(Path(tempfile.gettempdir()) / f"arcttt-unsloth-{os.getpid()}-{worker}")


def pytest_collection_modifyitems(config, items):
    """Longest work first. Under ``--dist loadfile --no-loadscope-reorder`` xdist hands out whole files in this
    order, so the files that run whole notebooks (``test_dry_run*``), then the files with the most ``slow`` tests,
    go out first and the last file handed to a worker is a short one (a long file last would leave the other
    worker idle). Within a file the order is unchanged; without xdist the order only changes which file runs
    first."""
    slow_per_file: dict[str, int] = {}
    for item in items:
        slow_per_file[item.location[0]] = slow_per_file.get(item.location[0], 0) + bool(item.get_closest_marker("slow"))

    def weight(item) -> tuple[bool, int]:
        path = item.location[0]
        return (not Path(path).name.startswith("test_dry_run"), -slow_per_file[path])

    items.sort(key=weight)  # stable: a file's tests stay in their order
