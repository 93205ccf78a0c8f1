"""The synthetic pretraining curriculum: every family gives valid ARC tasks whose pairs obey one rule, draws are
deterministic, and nothing that shares a pair with a held-out task is ever produced."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from arcttt_kaggle.arc.augment import DIHEDRAL_NAMES, dihedral
from arcttt_kaggle.arc.data import grid_key
from arcttt_kaggle.arc.heldout import canonical_pair_key
from arcttt_kaggle.pretrain.corpus import CorpusConfig, epoch_tasks
from arcttt_kaggle.pretrain.synthetic import FAMILIES, synthetic_task, synthetic_tasks


def pairs(task):
    return [*task.train, *task.test]


def family_tasks(family, n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = [synthetic_task(family, rng, f"t{i}") for i in range(n)]
    return [t for t in out if t is not None]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_gives_valid_tasks(family):
    tasks = family_tasks(family)
    assert len(tasks) >= 8, f"{family}: most draws must succeed"
    for t in tasks:
        assert len(t.train) >= 2 and len(t.test) == 1 and t.test[0].output is not None
        keys = [grid_key(p.input) for p in pairs(t)]
        assert len(set(keys)) == len(keys), "inputs are distinct"
        for p in pairs(t):
            for g in (p.input, p.output):
                assert g.dtype == np.uint8 and g.ndim == 2 and 1 <= min(g.shape) and max(g.shape) <= 30
                assert g.max() <= 9


@given(st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_dihedral_family_is_one_transform_for_all_pairs(seed):
    t = synthetic_task("dihedral", np.random.default_rng(seed), "t")
    if t is None:
        return
    names = [n for n in DIHEDRAL_NAMES
             if all(np.array_equal(dihedral(n, p.input), p.output) for p in pairs(t))]
    assert names and "id" not in names or len(names) > 1  # some non-identity transform explains every pair


@given(st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_upscale_and_tile_outputs_are_made_of_the_input(seed):
    rng = np.random.default_rng(seed)
    up = synthetic_task("upscale", rng, "u")
    if up is not None:
        for p in pairs(up):
            ky, kx = p.output.shape[0] // p.input.shape[0], p.output.shape[1] // p.input.shape[1]
            assert p.output.shape == (p.input.shape[0] * ky, p.input.shape[1] * kx)
            assert np.array_equal(p.output[::ky, ::kx], p.input)
    tile = synthetic_task("tile", rng, "t")
    if tile is not None:
        for p in pairs(tile):
            h, w = p.input.shape
            assert p.output.shape[0] % h == 0 and p.output.shape[1] % w == 0
            for i in range(0, p.output.shape[0], h):
                for j in range(0, p.output.shape[1], w):
                    block = p.output[i:i + h, j:j + w]
                    assert any(np.array_equal(dihedral(n, p.input), block)
                               for n in ("id", "flipud", "fliplr", "rot180"))


@given(st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_gravity_keeps_each_line_and_packs_it_to_one_side(seed):
    t = synthetic_task("gravity", np.random.default_rng(seed), "g")
    if t is None:
        return
    for p in pairs(t):
        assert p.output.shape == p.input.shape
        assert sorted(p.output.ravel()) == sorted(p.input.ravel())
    # one side, the same for every pair: along it every line's coloured cells sit flush against the edge
    sides = []
    for k in range(4):
        ok = True
        for p in pairs(t):
            rot = np.rot90(p.output, k)
            for col in rot.T:
                nz = np.nonzero(col)[0]
                ok &= nz.size == 0 or (nz[-1] == col.size - 1 and nz.size == nz[-1] - nz[0] + 1)
        sides.append(ok)
    assert any(sides)


@given(st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_crop_and_halves_outputs_are_smaller_views_of_the_input(seed):
    rng = np.random.default_rng(seed)
    crop = synthetic_task("crop", rng, "c")
    if crop is not None:
        for p in pairs(crop):
            o = p.output
            assert o[0].any() and o[-1].any() and o[:, 0].any() and o[:, -1].any()  # tight box
            hits = [(y, x) for y in range(p.input.shape[0] - o.shape[0] + 1)
                    for x in range(p.input.shape[1] - o.shape[1] + 1)
                    if np.array_equal(p.input[y:y + o.shape[0], x:x + o.shape[1]], o)]
            assert hits and p.input.sum() == o.sum()  # nothing outside the box
    halves = synthetic_task("halves", rng, "h")
    if halves is not None:
        shapes = {p.output.shape for p in pairs(halves)}
        assert len(shapes) == 1
        for p in pairs(halves):
            assert len(np.unique(p.output[p.output > 0])) <= 1  # one output colour
            assert p.output.size < p.input.size


def test_draws_are_deterministic_and_seeds_differ():
    a, b, c = synthetic_tasks(40, 7), synthetic_tasks(40, 7), synthetic_tasks(40, 8)
    key = lambda ts: [(t.id, *(grid_key(g) for p in pairs(t) for g in (p.input, p.output))) for t in ts]
    assert key(a) == key(b)
    assert key(a) != key(c)
    assert {t.id.rsplit("-", 1)[1] for t in a} == set(FAMILIES)


def test_a_task_sharing_a_pair_with_an_excluded_task_is_dropped():
    tasks = synthetic_tasks(40, 3)
    banned = tasks[5].train[1]
    # The ban holds up to views: the excluded pair is given rotated and recoloured.
    recolour = np.array([0, 3, 1, 2, 9, 5, 6, 7, 8, 4])
    seen = (recolour[np.rot90(banned.input)], recolour[np.rot90(banned.output)])
    kept = synthetic_tasks(40, 3, frozenset({canonical_pair_key(*seen)}))
    assert [t.id for t in kept] == [t.id for t in tasks if t.id != tasks[5].id]


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown families"):
        synthetic_tasks(3, 0, families=("nope",))


def test_each_epoch_adds_fresh_synthetic_tasks_beside_the_corpus():
    base = synthetic_tasks(5, 100)  # stands in for the real corpus
    cfg = CorpusConfig(synthetic_tasks=30)
    e0, e1 = epoch_tasks(base, 0, cfg), epoch_tasks(base, 1, cfg)
    assert e0[:5] == base and e1[:5] == base
    assert 25 <= len(e0) - 5 <= 30
    assert {t.id for t in e0[5:]}.isdisjoint({t.id for t in e1[5:]})
    assert epoch_tasks(base, 0, CorpusConfig()) == base
    with pytest.raises(ValueError, match="synthetic_tasks"):
        CorpusConfig(synthetic_tasks=-1)
