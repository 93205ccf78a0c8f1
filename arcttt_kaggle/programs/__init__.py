"""CPU program-search expert for ARC: a DSL of grid primitives, searched and verified on demonstrations.

Public API (see ``expert.py``): ``ProgramsConfig``, ``ProgramResult``, ``solve_task``, ``run_expert``.
Exports are resolved lazily so that a worker process (``pool.py``) can import this package, cap its memory,
and only then import numpy and the search.

May import ``arc``; beside ``engines`` and ``selection``, imports neither.
"""

from __future__ import annotations

__all__ = ["ProgramsConfig", "ProgramResult", "solve_task", "run_expert"]


def __getattr__(name: str):
    if name in __all__:
        from . import expert

        return getattr(expert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
