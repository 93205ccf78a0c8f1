"""Held-out by content, as a specification: a pair's canonical key is the same for its whole orbit under the
augmentations (rotations, flips, colour bijections) and differs otherwise; the curriculum's rules come from
ARC-AGI-1 training tasks only; the sample, validation and reporting sets are disjoint by content."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt_kaggle.arc.augment import DIHEDRAL_NAMES, Augmentation
from arcttt_kaggle.arc.data import load_challenges, package_sample_dir
from arcttt_kaggle.arc.heldout import canonical_pair_key, canonical_pair_keys, held_out_sets, shared_content
from arcttt_kaggle.pretrain.synthetic import FAMILIES, TRAINING_IDS, curriculum_families, is_instance

grids = st.integers(1, 6).flatmap(lambda h: st.integers(1, 6).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))


@settings(max_examples=150, deadline=None)
@given(grids, grids, st.sampled_from(DIHEDRAL_NAMES), st.permutations(range(10)))
def test_a_pair_and_any_augmented_view_of_it_share_one_key(a, b, d, colors):
    a, b = np.array(a, dtype=np.uint8), np.array(b, dtype=np.uint8)
    view = Augmentation(d, tuple(colors))  # background not kept: a full colour bijection
    assert canonical_pair_key(a, b) == canonical_pair_key(view.apply_grid(a), view.apply_grid(b))


def test_pairs_outside_one_orbit_get_different_keys():
    a = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    side = np.array([[1, 1], [0, 0]], dtype=np.uint8)  # the output grows a neighbour...
    diagonal = np.array([[1, 0], [0, 1]], dtype=np.uint8)  # ...or a diagonal cell: no view maps one to the other
    assert canonical_pair_key(a, side) != canonical_pair_key(a, diagonal)
    assert canonical_pair_key(a, side) != canonical_pair_key(a, np.zeros((3, 2), np.uint8))  # shapes count
    assert canonical_pair_key(a, side) != canonical_pair_key(side, a)  # input and output are not interchangeable
    assert canonical_pair_key(a, side) == canonical_pair_key(a.T, side.T)  # a transpose is a view


def test_the_known_cross_set_pair_is_caught(shared_data):
    """Training task caa06a1f shares a pair with evaluation task 50a16a69 up to a colour permutation."""
    d = shared_data / "arc-agi-1"
    train = load_challenges(d / "arc-agi_training_challenges.json", solutions=d / "arc-agi_training_solutions.json")
    ev = load_challenges(d / "arc-agi_evaluation_challenges.json", solutions=d / "arc-agi_evaluation_solutions.json")
    assert shared_content([ev.tasks["50a16a69"]], [train.tasks["caa06a1f"]]) == ["50a16a69"]
    exact = lambda t: {(p.input.tobytes(), p.output.tobytes()) for p in t.train}  # noqa: E731
    assert not exact(ev.tasks["50a16a69"]) & exact(train.tasks["caa06a1f"])  # an exact check misses it


def test_every_curriculum_family_generalises_arc_agi_1_training_tasks_only(shared_data):
    d = shared_data / "arc-agi-1"
    train = load_challenges(d / "arc-agi_training_challenges.json", solutions=d / "arc-agi_training_solutions.json")
    ev = load_challenges(d / "arc-agi_evaluation_challenges.json", solutions=d / "arc-agi_evaluation_solutions.json")
    assert set(TRAINING_IDS) == set(FAMILIES)
    for family, ids in TRAINING_IDS.items():
        assert ids and set(ids) <= set(train.tasks) and not set(ids) & set(ev.tasks), family
        assert tuple(sorted(t for t in train.tasks if is_instance(train.tasks[t], family))) == ids, family
    # The rule of evaluation task 0692e18c (the inverse self-tile) was once a curriculum variant: no more.
    assert curriculum_families(ev.tasks["0692e18c"]) == []
    assert curriculum_families(ev.tasks["00576224"]) == ["tile"]  # an evaluation instance of a training rule


def test_the_three_sets_are_disjoint_by_content_and_stable(shared_data):
    d = shared_data / "arc-agi-1"
    ev = load_challenges(d / "arc-agi_evaluation_challenges.json", solutions=d / "arc-agi_evaluation_solutions.json")
    sample_dir = package_sample_dir()
    sample = load_challenges(sample_dir / "arc-agi_test_challenges.json",
                             solutions=sample_dir / "arc-agi_test_solutions.json").tasks
    sets = held_out_sets(ev.tasks, list(sample.values()), validation=24, reporting=60)
    assert len(sets.sample) == 10 and len(sets.validation) == 24 and len(sets.reporting) == 60
    groups = [sets.sample, sets.validation, sets.reporting]
    for i, g in enumerate(groups):
        for h in groups[i + 1:]:
            assert not set(g) & set(h)
            assert not shared_content([ev.tasks[t] for t in g], [ev.tasks[t] for t in h])
    again = held_out_sets(ev.tasks, list(sample.values()), validation=24, reporting=60)
    assert again == sets
    with pytest.raises(ValueError, match="unknown task set"):
        sets.named("test")
    assert canonical_pair_keys(ev.tasks[sets.reporting[0]])
