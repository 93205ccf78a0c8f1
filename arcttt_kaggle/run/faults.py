"""Injected faults: which a run carries, and the moment each strikes.

A fault spec (``RunConfig.fault``, ``dry-run --inject-fault``) is a comma-separated list of ``name`` or
``name@moment``. Each fault is a real failure (a SIGKILL, a raise, a hang, a corrupt file) injected where it would
happen on Kaggle; the moment says when, in the unit its place in the run has (``MOMENTS``). Without a moment each
strikes where the fault matrix has always put it, so several share one run without meeting: an exception in a
step of the worker's first task, ENOSPC saving its second adapter, a non-finite loss in its third task.

The soak (``benchmarks/soak.py``) draws the moments at random. Every fault that strikes leaves a
``("fault", "injected")`` event (``fault`` = its name, ``moment``) before it acts, so what was drawn, what struck
and what the report said can be told apart; those events are not incidents: a fault counts as named only when the
kit's own reaction names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

# name: (unit of its moment, the moment when none is given). Units:
#   task        the n-th task (0-based) a first-attempt worker starts training, cheapest first
#   adapter     the n-th trained adapter (0-based, in task-id order; -1 = the last)
#   pass        the decoding pass (1 or 2; 0 = every pass)
#   seconds     seconds after the program expert started
#   share       the deadline moves to this share of the plan's predicted work time after the workers launch
#               (none given: to the middle of training, a formula of the plan's phases)
#   checkpoint  the joint stage is killed once it has written this many checkpoints
#   -           no moment: the fault is in the run's inputs or its environment
MOMENTS: Mapping[str, tuple[str, float | None]] = MappingProxyType({
    "worker-crash": ("task", 1), "train-hang": ("task", 1), "task-exception": ("task", 0),
    "step-exception": ("task", 0), "enospc": ("task", 1), "nonfinite-loss": ("task", 2),
    "corrupt-adapter": ("adapter", -1),
    "decode-hang": ("pass", 1), "cuda-error": ("pass", 1), "unparsable": ("pass", 0),
    "programs-killed": ("seconds", 1.0), "deadline": ("share", None), "joint-crash": ("checkpoint", 1),
    "bad-task": ("-", None), "no-vllm": ("-", None), "no-unsloth": ("-", None),
})
FAULTS = tuple(MOMENTS)


@dataclass(frozen=True)
class FaultPlan:
    """The faults of one run, each with its moment (None: the default of ``MOMENTS``)."""

    moments: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "FaultPlan":
        """``"worker-crash@3,deadline@0.4,bad-task"`` -> a plan; a clear error names a bad item."""
        moments: dict[str, float | None] = {}
        for item in (x.strip() for x in (spec or "").split(",")):
            if not item:
                continue
            name, _, moment = item.partition("@")
            if name not in MOMENTS:
                raise ValueError(f"unknown fault {name!r} in {spec!r}; choose from {FAULTS}")
            if name in moments:
                raise ValueError(f"fault {name!r} given twice in {spec!r}")
            unit = MOMENTS[name][0]
            if moment and unit == "-":
                raise ValueError(f"fault {name!r} takes no moment (it is in the run's inputs or environment)")
            try:
                value = float(moment) if moment else None
            except ValueError:
                raise ValueError(f"fault {item!r}: the moment {moment!r} is not a number ({unit})") from None
            if value is not None and not _valid(unit, value):
                raise ValueError(f"fault {item!r}: {value} is not a valid {unit} moment")
            moments[name] = value
        return cls(moments)

    def __contains__(self, name: str) -> bool:
        return name in self.moments

    def __bool__(self) -> bool:
        return bool(self.moments)

    def at(self, name: str) -> float | None:
        """The fault's moment: the one given, else the default (None for ``deadline``'s formula and for faults
        without a moment)."""
        value = self.moments.get(name)
        return MOMENTS[name][1] if value is None else value

    def strikes(self, name: str, value: float) -> bool:
        """Whether ``name`` is in the plan and strikes at ``value`` (a task index, a pass, a checkpoint count)."""
        return name in self and self.at(name) == value

    def strikes_in_pass(self, name: str, decoding_pass: int) -> bool:
        return name in self and self.at(name) in (0, decoding_pass)

    def spec_without(self, names) -> str:
        """The spec of this plan less the faults ``names`` (moments kept as given)."""
        return ",".join(n if m is None else f"{n}@{m:g}" for n, m in self.moments.items() if n not in set(names))


def _valid(unit: str, value: float) -> bool:
    if unit in ("task", "checkpoint"):
        return value == int(value) and value >= (1 if unit == "checkpoint" else 0)
    if unit == "adapter":
        return value == int(value) and value >= -1
    if unit == "pass":
        return value in (0, 1, 2)
    if unit == "seconds":
        return value >= 0
    if unit == "share":
        return 0 < value <= 1
    return False
