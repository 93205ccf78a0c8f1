"""Breadth-first program search: compose library operations, finish with inferred steps, verify on demonstrations.

A *node* is a program prefix together with the grids it produces for every demonstration input and every
test input (all inputs are transformed together, so a program never needs re-running). The search expands
nodes depth by depth, cheapest first, and tries the finishing steps of ``fitters.py`` on each node. A
program is *verified* when it reproduces every demonstration output exactly. Pruning:

- nodes whose demonstration grids equal an earlier node's are dropped (same behaviour, costlier program);
- when every demonstration keeps its shape, nodes that change a demonstration's shape are dropped;
- the depth is capped by the evidence: a single demonstration allows one-step programs only, and tiny
  outputs (a few bits in all) allow no more levels than they can tell apart (``evidence_depth``);
- operation results are cached per grid (different prefixes often reach the same grid);
- the search stops once a verified program is at most as costly as the cheapest program of the next
  depth: deeper programs that also fit are more complex explanations of the same evidence, so they rank
  lower and mostly add wrong answers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import fitters as ft
from . import rules as rl
from .ops import Memo, Op
from .primitives import Grid


@dataclass(frozen=True)
class Found:
    """One verified program: its readable description, cost (simplicity: lower is simpler), test outputs."""

    program: str
    cost: float
    test_outputs: tuple[Grid, ...]


@dataclass
class SearchStats:
    nodes: int = 0
    op_failures: int = 0  # op applications that raised (counted, never fatal)
    depth_done: int = -1  # deepest level fully explored
    timed_out: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Node:
    program: tuple[str, ...]
    cost: float
    grids: tuple[Grid, ...]  # demonstration inputs first, then test inputs


class _Timeout(Exception):
    pass


def _valid(g: object) -> bool:
    return (isinstance(g, np.ndarray) and g.ndim == 2 and 1 <= g.shape[0] <= 30 and 1 <= g.shape[1] <= 30
            and g.dtype == np.uint8 and int(g.max()) < 10)


def _key(g: Grid) -> bytes:
    return bytes(g.shape) + g.tobytes()


def evidence_depth(outputs: list[Grid], n_ops: int, margin_bits: float = 4.0) -> int:
    """The deepest search the demonstrations can support.

    The outputs carry about ``sum(cells * log2(colors))`` bits; each search level multiplies the programs
    tried by ``n_ops`` (``log2(n_ops)`` bits). Searching deeper than the evidence allows finds programs that
    fit by chance, e.g. one-pixel outputs over four demonstrations (4 bits) are matched by some of a hundred
    one-step programs, so they only get the finishing steps.
    """
    bits = sum(y.size * math.log2(max(2, len(np.unique(y)))) for y in outputs)
    per_level = math.log2(max(2, n_ops))
    return max(0, int((bits - margin_bits) // per_level))


class _Search:
    def __init__(self, train_in: list[Grid], train_out: list[Grid], test_in: list[Grid], ops: list[Op],
                 deadline: float, max_found: int):
        self.n = len(train_in)
        self.ys = train_out
        self.root = _Node((), 0.0, tuple(train_in) + tuple(test_in))
        self.same_shape = all(x.shape == y.shape for x, y in zip(train_in, train_out))
        # Output shape must stay reachable: when every demonstration keeps its shape, only shape-keeping
        # operations can be part of a solution (a crop followed by a regrow is not worth the search time).
        self.ops = sorted((o for o in ops if o.keeps_shape or not self.same_shape), key=lambda o: o.cost)
        self.deadline = deadline
        self.max_found = max_found
        self.memo = Memo()
        self.stats = SearchStats()
        self.found: list[Found] = []
        self.out_shapes = [y.shape for y in train_out]

    def _tick(self) -> None:
        if time.time() > self.deadline:
            raise _Timeout

    def _apply(self, op: Op, g: Grid) -> Grid | None:
        key = (op.name, _key(g))
        return self.memo.get(key, lambda: self._call(op, g))

    def _call(self, op: Op, g: Grid) -> Grid | None:
        # A primitive may hit an edge case on an unusual grid (empty selection, odd shape, memory); one
        # failing application must cost only that branch of the search, never the whole task.
        try:
            out = op.fn(g, self.memo)
        except Exception:  # noqa: BLE001 - see comment above
            self.stats.op_failures += 1
            return None
        return out if out is not None and _valid(out) else None

    def _child(self, node: _Node, op: Op, seen: set[bytes]) -> _Node | None:
        """The node after ``op``, or ``None`` if it fails on a grid or repeats a known node on the demonstrations."""
        grids = []
        for i, g in enumerate(node.grids):
            if i == self.n:  # demonstrations done: dedupe before paying for the test grids
                key = b"".join(_key(x) for x in grids)
                if key in seen:
                    return None
                seen.add(key)
            out = self._apply(op, g)
            if out is None:
                return None
            if self.same_shape and i < self.n and out.shape != self.out_shapes[i]:
                return None
            grids.append(out)
        return _Node(node.program + (op.name,), node.cost + op.cost, tuple(grids))

    def _finish(self, node: _Node) -> None:
        xs, ts = list(node.grids[:self.n]), list(node.grids[self.n:])
        prefix = " | ".join(node.program)
        try:
            fits = list(ft.shape_fits(xs, self.ys))
        except Exception:  # noqa: BLE001 - a fitter failing on odd grids must not end the search
            self.stats.op_failures += 1
            return
        for fit in fits:
            if len(node.program) <= fit.max_prefix:
                self._try_fit(node, prefix, fit, xs, ts)
        if len(node.program) <= 1 and all(x.shape == y.shape for x, y in zip(xs, self.ys)):
            # Learned tables have many free entries: object rules may finish one step, local rules
            # (the freest) only the raw input.
            try:
                rules = list(rl.object_rules(xs, self.ys))
                if not node.program and self.n >= 2:
                    rules += list(rl.local_rules(xs, self.ys))
            except Exception:  # noqa: BLE001 - as in _call: a rule learner failing only skips rules
                self.stats.op_failures += 1
                return
            for rule in rules:
                self._try_fit(node, prefix, ft.Fit(rule.name, rule.cost, rule.apply), xs, ts)

    def _try_fit(self, node: _Node, prefix: str, fit: ft.Fit, xs: list[Grid], ts: list[Grid]) -> None:
        try:  # same reason as in _call: an edge case in one finisher must only skip that finisher
            preds = [fit.apply(x) for x in xs]
            if any(p is None or p.shape != y.shape for p, y in zip(preds, self.ys)):
                return
            name = " | ".join(s for s in (prefix, fit.name) if s) or "identity"
            if all(np.array_equal(p, y) for p, y in zip(preds, self.ys)):
                self._record(name, node.cost + fit.cost, [fit.apply(t) for t in ts])
                return
            cmap = ft.color_map_fit(preds, self.ys)
            if cmap is not None:
                desc = ",".join(f"{a}->{b}" for a, b in sorted(cmap.items()) if a != b)
                tests = [fit.apply(t) for t in ts]
                tests = [None if t is None else ft.apply_color_map_strict(t, cmap) for t in tests]
                self._record(f"{name} | recolor[{desc}]", node.cost + fit.cost + 1.0, tests)
                return
            rule = ft.input_color_fit(preds, self.ys, list(self.root.grids[:self.n]))
            if rule is not None:
                raw_tests = self.root.grids[self.n:]
                tests = [fit.apply(t) for t in ts]
                tests = [None if t is None else ft.paint_foreground(t, ft.INPUT_COLORS[rule](r))
                         for t, r in zip(tests, raw_tests)]
                self._record(f"{name} | paint[{rule} of input]", node.cost + fit.cost + 1.0, tests)
        except Exception:  # noqa: BLE001
            self.stats.op_failures += 1

    def _record(self, program: str, cost: float, tests: list[Grid | None]) -> None:
        if all(t is not None and _valid(t) for t in tests):
            self.found.append(Found(program, cost, tuple(tests)))

    def _distance(self, node: _Node) -> float:
        """How far a node's demonstration grids are from the outputs (0 = equal): orders nodes of equal cost,
        so that when time runs out the unexplored nodes are the least promising ones."""
        d = 0.0
        for x, y in zip(node.grids[:self.n], self.ys):
            d += float(np.mean(x != y)) if x.shape == y.shape else 1.0 + abs(x.size - y.size) / max(x.size, y.size)
        return d

    def run(self, max_depth: int) -> list[Found]:
        if self.n == 1:  # one demonstration is weak evidence: allow only one-step programs
            max_depth = min(max_depth, 1)
        max_depth = min(max_depth, evidence_depth(self.ys, len(self.ops)))
        try:
            self._finish(self.root)
            self.stats.depth_done = 0
            seen = {b"".join(_key(g) for g in self.root.grids[:self.n])}
            frontier = [self.root]
            min_cost = min((o.cost for o in self.ops), default=1.0)
            for depth in range(1, max_depth + 1):
                if self.found and min(f.cost for f in self.found) <= depth * min_cost:
                    break  # nothing deeper can be simpler than what is already verified
                nxt: list[_Node] = []
                for node in frontier:
                    for op in self.ops:
                        self._tick()
                        child = self._child(node, op, seen)
                        if child is None:
                            continue
                        self.stats.nodes += 1
                        self._finish(child)
                        if depth < max_depth:
                            nxt.append(child)
                        if len(self.found) >= self.max_found:
                            raise _Timeout  # enough evidence; stop exploring
                frontier = sorted(nxt, key=lambda n: (n.cost, self._distance(n)))
                self.stats.depth_done = depth
        except _Timeout:
            self.stats.timed_out = len(self.found) < self.max_found
        return sorted(self.found, key=lambda f: f.cost)


def search(train_in: list[Grid], train_out: list[Grid], test_in: list[Grid], ops: list[Op], max_depth: int,
           deadline: float, max_found: int = 200) -> tuple[list[Found], SearchStats]:
    """Verified programs (simplest first) for one task, and how the search went.

    Stops at ``deadline`` (a ``time.time()`` value), after ``max_found`` verified programs, or after the first
    depth that produced any. Never raises for a failing operation; returns what it has on timeout.
    """
    s = _Search(train_in, train_out, test_in, ops, deadline, max_found)
    found = s.run(max_depth)
    return found, s.stats
