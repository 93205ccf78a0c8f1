"""augment.py: the augmentations form a group acting on grids and tasks (property tests with hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.arc.augment import DIHEDRAL_NAMES, Augmentation, dihedral, sample_augmentations
from arcttt_kaggle.arc.data import Pair, Task, grid_key

settings.register_profile("arcttt", max_examples=60, deadline=None)
settings.load_profile("arcttt")


@st.composite
def grids(draw, max_side: int = 30) -> np.ndarray:
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 10, size=(h, w), dtype=np.uint8)


@st.composite
def augmentations(draw, num_train: int | None = None) -> Augmentation:
    d = draw(st.sampled_from(DIHEDRAL_NAMES))
    colors = tuple(draw(st.permutations(range(10))))
    order = tuple(draw(st.permutations(range(num_train)))) if num_train else None
    return Augmentation(d, colors, order)


@st.composite
def tasks(draw) -> Task:
    k = draw(st.integers(1, 5))
    pair = lambda: Pair(draw(grids(8)), draw(grids(8)))  # noqa: E731
    return Task("0000abcd", tuple(pair() for _ in range(k)), (Pair(draw(grids(8))), pair()))


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def task_key(t: Task) -> tuple:
    return tuple(grid_key(g) for p in t.train + t.test for g in (p.input, p.output) if g is not None)


@given(grids(), augmentations())
def test_inverse_undoes_apply(g, a):
    out = a.apply_grid(g)
    assert out.dtype == np.uint8
    assert same(a.inverse().apply_grid(out), g)
    assert same(a.invert_grid(out), g)
    assert same(a.apply_grid(a.invert_grid(g)), g)


@given(st.data())
def test_apply_task_then_inverse_restores_the_task(data):
    task = data.draw(tasks())
    a = data.draw(augmentations(len(task.train)))
    aug = a.apply_task(task)
    assert aug.id == task.id and len(aug.train) == len(task.train) and len(aug.test) == len(task.test)
    assert aug.test[0].output is None
    assert task_key(a.inverse().apply_task(aug)) == task_key(task)


@given(st.data())
def test_apply_task_reorders_demonstrations(data):
    task = data.draw(tasks())
    a = data.draw(augmentations(len(task.train)))
    aug = a.apply_task(task)
    for i, p in enumerate(aug.train):
        assert same(p.input, a.apply_grid(task.train[a.order[i]].input))


@given(grids(), augmentations(4), augmentations(4))
def test_composition_closes(g, a, b):
    ab = a.then(b)
    assert isinstance(ab, Augmentation)
    assert same(ab.apply_grid(g), b.apply_grid(a.apply_grid(g)))
    items = list("wxyz")
    assert ab.reorder(items) == b.reorder(a.reorder(items))
    assert a.then(a.inverse()).is_identity


@given(st.data())
def test_string_round_trip(data):
    a = data.draw(augmentations(data.draw(st.integers(1, 12))))
    s = a.to_string()
    assert Augmentation.from_string(s) == a
    assert str(a) == s


@given(augmentations())
def test_string_round_trip_without_order(a):
    assert Augmentation.from_string(a.to_string()) == a


def test_empty_order_round_trips():
    a = Augmentation("rot90", order=())
    assert Augmentation.from_string(a.to_string()) == a


def test_the_eight_dihedral_elements_are_distinct():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    keys = {grid_key(dihedral(name, g)) for name in DIHEDRAL_NAMES}
    assert len(DIHEDRAL_NAMES) == 8 and len(keys) == 8


def test_dihedral_products_are_in_the_group():
    g = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for x in DIHEDRAL_NAMES:
        for y in DIHEDRAL_NAMES:
            xy = Augmentation(x).then(Augmentation(y))
            assert same(xy.apply_grid(g), dihedral(y, dihedral(x, g)))


@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_color_zero_is_fixed_by_default(seed, k):
    rng = np.random.default_rng(seed)
    a = Augmentation.random(rng, k)
    assert a.colors[0] == 0
    assert sorted(a.order) == list(range(k))
    assert all(x.colors[0] == 0 for x in sample_augmentations(20, seed, k))


def test_color_zero_moves_when_background_is_not_kept():
    moved = [Augmentation.random(np.random.default_rng(s), keep_background=False).colors[0] for s in range(50)]
    assert any(c != 0 for c in moved)
    augs = sample_augmentations(30, 1, keep_background=False)
    assert any(a.colors[0] != 0 for a in augs)


def test_sampling_is_deterministic_from_seed():
    a = sample_augmentations(16, 123, 4)
    assert a == sample_augmentations(16, 123, 4)
    assert a != sample_augmentations(16, 124, 4)
    assert a[0].is_identity
    assert len({x.to_string() for x in a}) == 16
    assert {x.dihedral for x in a[:8]} == set(DIHEDRAL_NAMES)


@pytest.mark.parametrize("bad", [
    "", "id", "rot45.c0123456789", "id.c012345678", "id.c0123456788", "id.cabcdefghij",
    "id.c0123456789.x1,0", "id.c0123456789.o1,1", "id.c0123456789.o0,a", "id.c0123456789.o0,1.extra",
    "id.0123456789",
])
def test_bad_strings_raise_value_error(bad):
    with pytest.raises(ValueError):
        Augmentation.from_string(bad)


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="unknown dihedral transform 'spin'"):
        Augmentation("spin")
    with pytest.raises(ValueError, match="colors must be a permutation of 0..9"):
        Augmentation(colors=(0,) * 10)
    with pytest.raises(ValueError, match="order .* is for 2 demonstrations, task has 3"):
        Augmentation(order=(1, 0)).reorder([1, 2, 3])
