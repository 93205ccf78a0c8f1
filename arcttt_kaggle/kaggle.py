"""Kaggle specifics: where the inputs are, the public placeholder run vs the hidden rerun, the notebook's config.

The notebook calls ``notebook_config()`` and ``run(config)`` and nothing else. Locally, ``build_submission.py
dry-run`` executes the same notebook with ``ARCTTT_*`` environment variables that point it at the shipped
sample, the tiny model and a short budget; on Kaggle none of them is set and the Kaggle paths are used.

Short mode: when a notebook is submitted, Kaggle first runs it on the public test file (a placeholder run
whose score is not the competition's) and then reruns it on the hidden tasks with
``KAGGLE_IS_COMPETITION_RERUN`` set. Spending 12 hours on the placeholder run only delays the rerun, so there
the run solves a few tasks with a short budget (still writing a complete, valid submission).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from .budget import Throughput
from .config import RunConfig, budget_overrides, preset

COMPETITION = "arc-prize-2025"
SHORT_MODE_TASKS = 4
SHORT_MODE_SECONDS = 20 * 60.0


def on_kaggle() -> bool:
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or Path("/kaggle/working").is_dir()


def is_competition_rerun() -> bool:
    return os.environ.get("KAGGLE_IS_COMPETITION_RERUN", "") not in ("", "0", "false", "False")


def kaggle_challenges(competition: str = COMPETITION) -> Path:
    return Path("/kaggle/input") / competition / "arc-agi_test_challenges.json"


def notebook_config(default_preset: str = "t4x2", competition: str = COMPETITION,
                    model: str = "/kaggle/input/arc-base-model") -> RunConfig:
    """The notebook's config: the preset and Kaggle paths, overridden by ``ARCTTT_*`` variables when set.

    ARCTTT_PRESET, ARCTTT_CHALLENGES, ARCTTT_SOLUTIONS, ARCTTT_OUT, ARCTTT_MODEL, ARCTTT_BUDGET_SECONDS,
    ARCTTT_FAULT, ARCTTT_OVERRIDES (a JSON object of dotted keys, e.g. '{"train.steps": 8}'), ARCTTT_THROUGHPUT
    (a ``measured_throughput.json`` of an earlier run on the same hardware: the plan's priors).
    """
    env = os.environ
    name = env.get("ARCTTT_PRESET", default_preset)
    cfg = preset(name)
    paths = {
        "challenges": env.get("ARCTTT_CHALLENGES", str(kaggle_challenges(competition))),
        "solutions": env.get("ARCTTT_SOLUTIONS", ""),
        "out_dir": env.get("ARCTTT_OUT", "/kaggle/working" if on_kaggle() else "out"),
        "fault": env.get("ARCTTT_FAULT", ""),
    }
    if "ARCTTT_MODEL" in env or cfg.device == "cuda":
        paths["model"] = env.get("ARCTTT_MODEL", model)
    cfg = replace(cfg, **paths)
    if env.get("ARCTTT_BUDGET_SECONDS"):
        cfg = budget_overrides(cfg, float(env["ARCTTT_BUDGET_SECONDS"]))
    elif on_kaggle() and not is_competition_rerun():
        cfg = replace(budget_overrides(cfg, SHORT_MODE_SECONDS), max_tasks=SHORT_MODE_TASKS)
    if env.get("ARCTTT_THROUGHPUT"):
        cfg = replace(cfg, throughput=Throughput.from_file(env["ARCTTT_THROUGHPUT"]))
    if env.get("ARCTTT_OVERRIDES"):
        cfg = cfg.with_overrides(json.loads(env["ARCTTT_OVERRIDES"]))
    return cfg
