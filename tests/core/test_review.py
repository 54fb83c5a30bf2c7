"""core.review: prompt-free uncertainty and the walk through uncertain regions, without a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.review import next_uncertain_region, prompt_free_uncertainty, uncertain_regions


def blobs(shape: tuple[int, int], centres: list[tuple[int, int]], heights: list[float], width: float = 4.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.float32)
    for (r, c), h in zip(centres, heights):
        out = np.maximum(out, h * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * width**2)))
    return out


def test_prompt_free_uncertainty_is_normalised_entropy():
    certain = np.zeros((3, 4, 4), np.float32)
    certain[1] = 1.0
    np.testing.assert_allclose(prompt_free_uncertainty(certain), 0.0, atol=1e-6)
    np.testing.assert_allclose(prompt_free_uncertainty(np.full((3, 4, 4), 1 / 3)), 1.0, atol=1e-6)
    two = np.stack([np.full((2, 2), 0.9), np.full((2, 2), 0.1)])
    value = prompt_free_uncertainty(two)[0, 0]
    assert 0.4 < value < 0.5 and prompt_free_uncertainty(two).dtype == np.float32
    with pytest.raises(ValueError, match="at least 2 classes"):
        prompt_free_uncertainty(np.ones((1, 2, 2)))


def test_regions_come_most_uncertain_first_and_visited_ones_are_skipped():
    u = blobs((96, 96), [(20, 70), (60, 30), (80, 80)], [0.5, 0.9, 0.7])
    coords, scores = uncertain_regions(u)
    np.testing.assert_array_equal(coords, [[60, 30], [80, 80], [20, 70]])
    assert (np.diff(scores) <= 0).all()

    visited = []
    for expected in [(60, 30), (80, 80), (20, 70)]:
        position = next_uncertain_region(u, visited)
        assert position == expected
        visited.append((position[0] + 3, position[1] - 2))  # a region counts as visited near where the view went
    assert next_uncertain_region(u, visited) is None
    assert next_uncertain_region(np.zeros((32, 32)), []) is None  # nothing above the threshold


def test_single_bright_pixels_lose_to_a_broad_uncertain_region():
    u = blobs((64, 64), [(40, 40)], [0.6], width=6.0)
    u[5, 5] = 1.0  # one noisy pixel: smoothing makes it small
    assert next_uncertain_region(u) == (40, 40)


def test_stacks_are_searched_plane_by_plane():
    u = np.stack([blobs((48, 48), [(10, 10)], [0.4]), blobs((48, 48), [(10, 10)], [0.8])])
    assert next_uncertain_region(u) == (1, 10, 10)
    assert next_uncertain_region(u, [(1, 10, 10)]) == (0, 10, 10)  # same place, other plane: not visited
    with pytest.raises(ValueError, match="must be"):
        uncertain_regions(np.zeros(5))
