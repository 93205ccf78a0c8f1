"""Failure isolation for a decode pass: one bad request must not sink every request of the engine call.

A pass is one engine call over every request of a worker (``Decoder.generate``), so one adapter that fails
to load, or one request that crashes the engine, would fail all of them. ``run_isolated`` runs the call and,
when it raises:

- an error that names an adapter of the call (``AdapterError``, or a message holding the adapter's path) marks
  that adapter bad: its requests are rerouted to the base model and the call is retried without it;
- any other error bisects: the requests (sorted by adapter, so one adapter's requests stay together) are split
  in halves, each retried, down to the lone request at fault; a lone request with an adapter is retried with
  the base model, and if that succeeds the adapter is marked bad (its other requests go to the base too); a
  lone request that fails with the base model is dropped;
- an error the backend calls fatal (``fatal(exc)``: its engine died, or a CUDA error broke its context) stops:
  what has not run is dropped, and ``Isolated.fatal`` holds the error.

Retries are bounded (``retry_calls`` engine calls after the first failure) and stop at the deadline; what
they do not reach is dropped with the reason. Nothing here knows tasks: ``Decoder`` turns ``rerouted`` and
``dropped`` into ``DecodeFailure`` records (``failure_records``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from .engine_base import AdapterError, Job, Sample, check_adapter


@dataclass(frozen=True)
class DecodeFailure:
    """What a decode pass did about requests it could not decode as planned.

    ``action``: "base" (decoded with the base model instead of ``adapter``) or "dropped" (no candidates)."""

    task: str
    test_index: int
    adapter: str | None  # the adapter folder the requests were planned with; None = the base model
    reason: str
    action: str
    requests: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Isolated:
    """Outcome of ``run_isolated``, keyed by ``Job.index``."""

    results: dict[int, list[Sample] | None] = field(default_factory=dict)  # None: cut by the deadline
    rerouted: dict[int, tuple[str, str]] = field(default_factory=dict)  # -> (adapter, why): decoded with base
    dropped: dict[int, str] = field(default_factory=dict)  # -> why: no result
    failed_calls: int = 0  # engine calls that raised
    fatal: BaseException | None = None  # the error after which the engine was unusable (nothing retried after it)


def _key(adapter: Path) -> str:
    return str(Path(adapter).resolve())


def bad_adapters(jobs: Sequence[Job], check: Callable[[Path], None] = check_adapter) -> dict[str, str]:
    """Resolved folder -> reason, for each distinct adapter of ``jobs`` that ``check`` refuses (AdapterError)."""
    bad: dict[str, str] = {}
    for key in sorted({_key(j.adapter) for j in jobs if j.adapter is not None}):
        try:
            check(Path(key))
        except AdapterError as e:
            bad[key] = e.reason
    return bad


def _named_adapter(exc: Exception, batch: Sequence[Job]) -> str | None:
    """The one adapter of ``batch`` the error names, if any."""
    keys = {_key(j.adapter): j.adapter for j in batch if j.adapter is not None}
    if isinstance(exc, AdapterError) and _key(exc.adapter) in keys:
        return _key(exc.adapter)
    msg = str(exc)
    hits = {k for k, a in keys.items() if k in msg or str(a) in msg}
    return hits.pop() if len(hits) == 1 else None


def run_isolated(run: Callable[[list[Job]], list[list[Sample] | None]], jobs: Sequence[Job], *,
                 deadline: float | None, retry_calls: int, fatal: Callable[[BaseException], bool],
                 bad: dict[str, str] | None = None, clock: Callable[[], float] | None = None) -> Isolated:
    """Run ``jobs`` through ``run`` (one engine call per batch), isolating failures (module docstring).

    ``bad``: adapters already known bad (resolved folder -> reason; their jobs go to the base model from the
    start). ``clock``: ``time.time`` unless given."""
    import time

    clock = clock or time.time
    out = Isolated()
    bad = dict(bad or {})
    probes: dict[int, tuple[str, str]] = {}  # lone job retried with the base model -> (adapter, its error)

    def reroute(batch: Sequence[Job]) -> list[Job]:
        moved = []
        for j in batch:
            if j.adapter is not None and _key(j.adapter) in bad:
                out.rerouted[j.index] = (_key(j.adapter), bad[_key(j.adapter)])
                j = replace(j, adapter=None)
            moved.append(j)
        return moved

    def drop(batch: Sequence[Job], why: str) -> None:
        for j in batch:
            out.rerouted.pop(j.index, None)
            out.dropped[j.index] = why
            out.results[j.index] = None

    queue: list[list[Job]] = [reroute(jobs)] if jobs else []
    retries, last = 0, ""
    while queue:
        batch = reroute(queue.pop(0))
        if out.failed_calls:
            if deadline is not None and clock() >= deadline:
                drop(batch, f"the deadline passed before its retry (after {last})")
                continue
            if retries >= retry_calls:
                drop(batch, f"retry budget spent ({retry_calls} calls; after {last})")
                continue
            retries += 1
        try:
            res = run(batch)
        except Exception as e:  # noqa: BLE001 - any engine error: isolate its cause, retry the rest
            out.failed_calls += 1
            last = f"{type(e).__name__}: {e}"[:400]
            if fatal(e):
                out.fatal = e
                drop([j for b in [batch, *queue] for j in b], f"engine unusable after {last}")
                break
            named = _named_adapter(e, batch)
            if named is not None:
                bad[named] = last
                queue.insert(0, batch)
            elif len(batch) > 1:
                ordered = sorted(batch, key=lambda j: ("" if j.adapter is None else _key(j.adapter), j.index))
                half = len(ordered) // 2
                queue[:0] = [ordered[:half], ordered[half:]]
            elif batch[0].index in probes:  # failed with the base model too: the adapter is not to blame
                adapter, first = probes.pop(batch[0].index)
                drop(batch, f"{first} (adapter {adapter}); with the base model: {last}")
            elif batch[0].adapter is not None:
                probes[batch[0].index] = (_key(batch[0].adapter), last)
                queue.insert(0, [replace(batch[0], adapter=None)])
            else:
                drop(batch, last)
            continue
        for j, r in zip(batch, res):
            out.results[j.index] = r
            if j.index in probes:  # the lone job ran with the base model: its adapter was at fault
                adapter, why = probes.pop(j.index)
                bad[adapter] = why
                out.rerouted[j.index] = (adapter, why)
    return out


def failure_records(isolated: Isolated, jobs: Sequence[Job], who: Callable[[int], tuple[str, int]]
                    ) -> list[DecodeFailure]:
    """One record per (task, test input, planned adapter, reason, action), counting its requests; ``who``
    maps a job index to (task id, test index)."""
    planned = {j.index: (None if j.adapter is None else _key(j.adapter)) for j in jobs}
    counts: dict[tuple, int] = {}
    for i, (adapter, why) in isolated.rerouted.items():
        key = (*who(i), adapter, f"adapter failed: {why}", "base")
        counts[key] = counts.get(key, 0) + 1
    for i, why in isolated.dropped.items():
        key = (*who(i), planned.get(i), why, "dropped")
        counts[key] = counts.get(key, 0) + 1
    return [DecodeFailure(t, ti, a, why, act, n) for (t, ti, a, why, act), n in sorted(
        counts.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][4], str(kv[0][2])))]
