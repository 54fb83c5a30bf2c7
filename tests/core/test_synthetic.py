"""Tests for the procedural scene generator (napari_samtune.core.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_samtune.core.synthetic import SCENE_KINDS, Scene, make_scene, make_scenes


def _check_scene(scene: Scene, size: int) -> None:
    """Shape/dtype/label invariants every scene must satisfy."""
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    assert scene.labels.shape == (size, size) and scene.labels.dtype == np.int32
    assert scene.kind in SCENE_KINDS
    ids = np.unique(scene.labels)
    ids = ids[ids > 0]
    n = int(scene.labels.max())
    assert n >= 1
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))  # consecutive 1..N
    areas = np.bincount(scene.labels.ravel())[1:]
    assert areas.max() >= 20
    assert areas.min() >= 10
    for i, sl in enumerate(ndimage.find_objects(scene.labels), start=1):
        assert ndimage.label(scene.labels[sl] == i)[1] == 1, f"label {i} is not one connected region"


def _edge_contrast(scene: Scene) -> float:
    """Mean over objects of max-channel |mean inside - mean of a 3 px background ring|, in grey levels."""
    img = scene.image.astype(np.float64)
    diffs = []
    for i, sl in enumerate(ndimage.find_objects(scene.labels), start=1):
        pad = tuple(slice(max(s.start - 4, 0), s.stop + 4) for s in sl)
        lab = scene.labels[pad]
        inside = lab == i
        ring = ndimage.binary_dilation(inside, iterations=3) & (lab == 0)
        if inside.sum() < 20 or ring.sum() < 20:
            continue
        diffs.append(np.abs(img[pad][inside].mean(0) - img[pad][ring].mean(0)).max())
    return float(np.mean(diffs)) if diffs else 0.0


def test_same_seed_same_scene() -> None:
    a = make_scene(np.random.default_rng(7))
    b = make_scene(np.random.default_rng(7))
    assert a.kind == b.kind
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_different_seeds_differ() -> None:
    a, b = make_scenes(2, seed=3, size=128, kind="nuclei")
    c = make_scenes(1, seed=4, size=128, kind="nuclei")[0]
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)


def test_make_scenes_regenerates_any_scene_alone() -> None:
    scenes = make_scenes(3, seed=11, size=128)
    alone = make_scene(np.random.default_rng([11, 2]), size=128)
    np.testing.assert_array_equal(scenes[2].image, alone.image)
    np.testing.assert_array_equal(scenes[2].labels, alone.labels)


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_every_kind_makes_valid_scenes(kind: str) -> None:
    for scene in make_scenes(3, seed=1, kind=kind):
        assert scene.kind == kind
        _check_scene(scene, 256)


@pytest.mark.parametrize("size", [128, 384])
def test_size_respected(size: int) -> None:
    for scene in make_scenes(4, seed=2, size=size):
        _check_scene(scene, size)


def test_random_kind_gives_variety() -> None:
    scenes = make_scenes(24, seed=5, size=96)
    assert len({s.kind for s in scenes}) >= 4
    grey = [bool((s.image == s.image[..., :1]).all()) for s in scenes]
    assert 0 < sum(grey) < len(scenes)  # both grey and colour scenes


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_objects_differ_from_background(kind: str) -> None:
    contrasts = [_edge_contrast(s) for s in make_scenes(4, seed=9, size=192, kind=kind)]
    assert np.mean(contrasts) > 6.0, contrasts


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="unknown scene kind"):
        make_scene(np.random.default_rng(0), kind="galaxies")
