"""Shared fixtures: the shipped sample, and ``../shared/data`` (tests that need it skip with a reason)."""

from __future__ import annotations

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
