"""Kaggle specifics: where the inputs are, the public placeholder run vs the hidden rerun, the notebook's config.

The notebook calls ``notebook_setup()`` and ``run(config, ...)`` and nothing else. Locally, ``build_submission.py
dry-run`` executes the same notebook with ``ARCTTT_*`` environment variables that point it at the shipped
sample, the tiny model and a short budget, and ``ARCTTT_INPUT`` at a folder of its own (so a ``/kaggle/input``
that happens to exist where it runs is never read); on Kaggle none of them is set and the inputs are found under
``/kaggle/input`` whatever the layout (the 2024/2025 ``/kaggle/input/<slug>/`` and the
``/kaggle/input/competitions/<slug>/`` layouts; the model dataset by the bundle's manifest, or the one model
folder attached).

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

from arcttt_kaggle.run.budget import Throughput
from arcttt_kaggle.run.config import RunConfig, budget_overrides
from arcttt_kaggle.run.preflight import is_competition_rerun

COMPETITION = "arc-prize-2026-arc-agi-2"  # the 2026 ARC-AGI-2 track (4xL4, 12 h, internet off)
INPUT_ROOT = Path("/kaggle/input")
INPUT_ENV = "ARCTTT_INPUT"  # where datasets are mounted, if not INPUT_ROOT; the install cell reads it too
DRY_RUN_ENV = "ARCTTT_DRY_RUN"  # set by the dry run: never on Kaggle, whatever the machine looks like
SHORT_MODE_TASKS = 4
SHORT_MODE_SECONDS = 20 * 60.0
KIT_MARKER = "arcttt-kaggle"  # manifest.json "kit" of the bundle dataset (bundle.py writes it)


def on_kaggle() -> bool:
    """A Kaggle kernel: its run-type variable or a ``/kaggle/working`` folder, except under the dry run."""
    if os.environ.get(DRY_RUN_ENV):
        return False
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or Path("/kaggle/working").is_dir()


def kaggle_input_root() -> Path:
    """Where the attached datasets are: ``ARCTTT_INPUT`` when set, else ``/kaggle/input``."""
    return Path(os.environ.get(INPUT_ENV) or INPUT_ROOT)


def bundle_manifest(input_root: str | Path | None = None) -> dict:
    """The attached bundle's manifest.json under ``input_root`` (default ``kaggle_input_root()``); ``{}`` when
    none is attached, as in a local dry run."""
    root = Path(input_root) if input_root is not None else kaggle_input_root()
    for depth in ("*", "*/*", "*/*/*", "*/*/*/*"):
        for p in sorted(root.glob(f"{depth}/manifest.json")) if root.is_dir() else []:
            try:
                doc = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(doc, dict) and doc.get("kit") == KIT_MARKER:
                return doc
    return {}


def find_model(input_root: str | Path | None = None, dataset: str = "") -> Path:
    """The base model folder under ``input_root`` (default ``kaggle_input_root()``): a folder holding
    ``config.json`` and a tokenizer, at most four levels down. With several, the one whose path ends with the model
    dataset's slug (``owner/slug`` from the bundle's manifest). The error lists what was found."""
    root = Path(input_root) if input_root is not None else kaggle_input_root()
    found = sorted({p.parent for depth in ("*", "*/*", "*/*/*", "*/*/*/*") for p in root.glob(f"{depth}/config.json")
                    if (p.parent / "tokenizer.json").exists() or (p.parent / "tokenizer_config.json").exists()}) \
        if root.is_dir() else []
    slug = dataset.split("/")[-1]
    if slug:
        named = [p for p in found if slug in p.parts]
        if named:
            return named[0]
    if len(found) == 1:
        return found[0]
    hint = f" (the bundle names {dataset!r})" if dataset else ""
    raise FileNotFoundError(
        f"no single model folder under {root}{hint}: found {[str(p) for p in found] or 'none'}. Attach the model "
        "dataset (build_submission.py bundle --model-dataset), or set ARCTTT_MODEL to its folder")


def notebook_setup(default_preset: str | None = None, input_root: str | Path | None = None):
    """The notebook's config and the first part of the preflight, before anything heavy is imported.

    Offline variables are set first, then the kernel's start time (the budget clock), the GPUs and the preset
    (``ARCTTT_PRESET`` or ``default_preset`` wins when the hardware can run it; a preset that asks for more
    GPUs, bf16 or memory than exist is refused, except in the rerun), and the challenges. ``pipeline.run`` does
    the rest (model, memory plan, engines) after it has started the program expert. The inputs are searched
    under ``input_root``, default ``kaggle_input_root()``.

    Variables: ARCTTT_INPUT, ARCTTT_PRESET, ARCTTT_CHALLENGES, ARCTTT_SOLUTIONS, ARCTTT_OUT, ARCTTT_MODEL,
    ARCTTT_BUDGET_SECONDS, ARCTTT_FAULT, ARCTTT_OVERRIDES (a JSON object of dotted keys, e.g.
    '{"train.steps": 8}'), ARCTTT_THROUGHPUT (a ``measured_throughput.json`` of an earlier run on the same
    hardware: the plan's priors).
    Returns ``(config, preflight)``: pass both to ``run(config, preflight=preflight)``.
    """
    from arcttt_kaggle.run.preflight import (PreflightError, PreflightResult, choose_preset, config_for, detect_gpus, engines_imported,
                            find_challenges, kernel_start_time, set_offline_env)

    env = os.environ
    input_root = Path(input_root) if input_root is not None else kaggle_input_root()
    changed = set_offline_env()
    before = tuple(engines_imported())
    start = kernel_start_time()
    gpus, source = detect_gpus()
    choice = choose_preset(gpus, env.get("ARCTTT_PRESET") or default_preset)
    if choice.refused and not is_competition_rerun():
        raise PreflightError(f"preset {choice.requested}: {choice.refused}")
    cfg = config_for(choice, gpus)
    manifest = bundle_manifest(input_root)
    challenges, challenges_error = env.get("ARCTTT_CHALLENGES", ""), ""
    if not challenges:
        try:
            challenges = str(find_challenges(None, input_root))
        except FileNotFoundError as e:
            challenges_error = str(e)
    paths = {"challenges": challenges, "solutions": env.get("ARCTTT_SOLUTIONS", ""),
             "out_dir": env.get("ARCTTT_OUT", "/kaggle/working" if on_kaggle() else "out"),
             "fault": env.get("ARCTTT_FAULT", "")}
    if env.get("ARCTTT_MODEL"):
        paths["model"] = env["ARCTTT_MODEL"]
    elif cfg.device == "cuda":
        try:
            paths["model"] = str(find_model(input_root, manifest.get("model_dataset", "")))
        except FileNotFoundError as e:
            paths["model"] = f"(not found) {e}"  # the preflight's model check reports it as fatal
    cfg = _with_env(replace(cfg, **paths))
    pre = PreflightResult.build(preset=choice, gpus=tuple(gpus), gpu_source=source, device=cfg.device,
                                kernel_start=start, offline_env_changed=changed,
                                engines_imported_before=before, challenges=challenges,
                                challenges_error=challenges_error, on_kaggle=on_kaggle())
    return cfg, pre


def notebook_config(default_preset: str = "t4x2", model: str = "") -> RunConfig:
    """The config alone, from the preset named here (or ``ARCTTT_PRESET``) and the ``ARCTTT_*`` variables,
    without the hardware checks of ``notebook_setup`` (tests, scripts)."""
    from arcttt_kaggle.run.config import preset

    env = os.environ
    cfg = preset(env.get("ARCTTT_PRESET", default_preset))
    paths = {"challenges": env.get("ARCTTT_CHALLENGES",
                                   str(kaggle_input_root() / COMPETITION / "arc-agi_test_challenges.json")),
             "solutions": env.get("ARCTTT_SOLUTIONS", ""),
             "out_dir": env.get("ARCTTT_OUT", "/kaggle/working" if on_kaggle() else "out"),
             "fault": env.get("ARCTTT_FAULT", "")}
    if env.get("ARCTTT_MODEL") or model:
        paths["model"] = env.get("ARCTTT_MODEL") or model
    return _with_env(replace(cfg, **paths))


def _with_env(cfg: RunConfig) -> RunConfig:
    """Budget (``ARCTTT_BUDGET_SECONDS``, or Kaggle's short mode on the public run), priors and overrides."""
    env = os.environ
    if env.get("ARCTTT_BUDGET_SECONDS"):
        cfg = budget_overrides(cfg, float(env["ARCTTT_BUDGET_SECONDS"]))
    elif on_kaggle() and not is_competition_rerun():
        cfg = replace(budget_overrides(cfg, SHORT_MODE_SECONDS), max_tasks=SHORT_MODE_TASKS)
    if env.get("ARCTTT_THROUGHPUT"):
        cfg = replace(cfg, throughput=Throughput.from_file(env["ARCTTT_THROUGHPUT"]))
    if env.get("ARCTTT_OVERRIDES"):
        cfg = cfg.with_overrides(json.loads(env["ARCTTT_OVERRIDES"]))
    return cfg
