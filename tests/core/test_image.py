"""Reading user images: dtypes, RGB(A), channels, stacks, one global intensity mapping, and errors that say why."""

from __future__ import annotations

import numpy as np
import pytest

from napari_samtune.core.image import ImageError, Normalization, as_volume

RNG = np.random.default_rng(0)
GREY = {
    "uint8": RNG.integers(0, 256, (64, 48)).astype(np.uint8),
    "uint16": RNG.integers(0, 65536, (64, 48)).astype(np.uint16),
    "int32": RNG.integers(-100_000, 100_000, (64, 48)).astype(np.int32),
    "float32": RNG.normal(size=(64, 48)).astype(np.float32),
    "float64": RNG.normal(scale=1e3, size=(64, 48)),
    "bool": RNG.random((64, 48)) > 0.5,
}


def expected_plane(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values.astype(np.float32) - low) * 255 / (high - low), 0, 255)


@pytest.mark.parametrize("dtype", list(GREY))
def test_grey_image_of_any_dtype_becomes_three_equal_channels_in_0_255(dtype):
    image = GREY[dtype]
    vol = as_volume(image)
    low, high = np.percentile(image.astype(np.float32), [1, 99.8])
    assert vol.n_planes == 1 and not vol.is_stack and vol.plane_shape == (64, 48)
    assert (vol.low, vol.high) == pytest.approx((low, high))
    plane = vol.plane(0)
    assert plane.shape == (64, 48, 3) and plane.dtype == np.float32
    assert np.array_equal(plane[..., 0], plane[..., 1]) and np.array_equal(plane[..., 0], plane[..., 2])
    np.testing.assert_allclose(plane[..., 0], expected_plane(image, low, high), atol=1e-3)
    assert plane.min() == 0 and plane.max() == 255


def test_bool_image_maps_false_to_0_and_true_to_255():
    plane = as_volume(GREY["bool"]).plane(0)[..., 0]
    assert np.array_equal(plane, np.where(GREY["bool"], 255.0, 0.0))


def test_percentiles_map_to_0_and_255():
    ramp = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    vol = as_volume(ramp)
    assert vol.low == pytest.approx(99.99) and vol.high == pytest.approx(9979.002)
    plane = vol.plane(0)[..., 0]
    assert (plane == 0).sum() == 100  # values 0..99, the lowest 1 %
    assert (plane == 255).sum() == 20  # values 9980..9999, the highest 0.2 %
    assert plane[50, 39] == pytest.approx((5039 - 99.99) * 255 / (9979.002 - 99.99), abs=1e-2)


def test_other_percentiles_can_be_asked_for():
    ramp = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    vol = as_volume(ramp, normalization=Normalization(low_percentile=10, high_percentile=90))
    assert (vol.low, vol.high) == pytest.approx((999.9, 8999.1))


def test_rgb_keeps_colours_with_one_mapping_for_all_channels():
    rgb = np.stack([GREY["uint8"], GREY["uint8"] // 2, 255 - GREY["uint8"]], axis=-1)
    vol = as_volume(rgb)
    low, high = np.percentile(rgb.astype(np.float32), [1, 99.8])
    assert vol.planes.shape == (1, 64, 48, 3) and not vol.is_stack
    assert (vol.low, vol.high) == pytest.approx((low, high))
    np.testing.assert_allclose(vol.plane(0), expected_plane(rgb, low, high), atol=1e-3)


def test_rgba_drops_alpha_before_normalising():
    rgb = RNG.integers(50, 100, (32, 40, 3)).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((32, 40, 1), 255, np.uint8)], axis=-1)
    vol, vol_rgb = as_volume(rgba), as_volume(rgb)
    assert vol.planes.shape == (1, 32, 40, 3)
    assert (vol.low, vol.high) == (vol_rgb.low, vol_rgb.high)  # the opaque alpha (255) does not stretch the range
    assert np.array_equal(vol.plane(0), vol_rgb.plane(0))


def test_channel_axis_picks_averages_or_uses_the_first_three_as_rgb():
    image = RNG.integers(0, 1000, (4, 32, 40)).astype(np.uint16)
    picked = as_volume(image, channel_axis=0, channel=2)
    assert np.array_equal(picked.planes[0], image[2])
    mean = as_volume(image, channel_axis=0, channel="mean")
    np.testing.assert_allclose(mean.planes[0], image.mean(axis=0), rtol=1e-6)
    rgb = as_volume(image, channel_axis=0, channel="rgb")
    assert rgb.planes.shape == (1, 32, 40, 3) and not rgb.is_stack
    assert np.array_equal(rgb.planes[0], np.moveaxis(image[:3], 0, -1))
    last = as_volume(np.moveaxis(image, 0, -1), channel_axis=-1, channel=2)
    assert np.array_equal(last.planes[0], image[2])


def test_channel_axis_of_a_stack_gives_a_stack():
    image = RNG.integers(0, 1000, (5, 2, 32, 40)).astype(np.uint16)  # (Z, C, H, W)
    vol = as_volume(image, channel_axis=1, channel=1)
    assert vol.is_stack and vol.planes.shape == (5, 32, 40)
    assert np.array_equal(vol.planes[3], image[3, 1])


def test_grey_and_rgb_stacks():
    grey = as_volume(RNG.integers(0, 255, (6, 32, 40)).astype(np.uint8))
    assert grey.is_stack and grey.n_planes == 6 and grey.plane_shape == (32, 40)
    assert grey.plane(5).shape == (32, 40, 3)
    rgb = as_volume(RNG.integers(0, 255, (6, 32, 40, 3)).astype(np.uint8))
    assert rgb.is_stack and rgb.n_planes == 6 and rgb.plane_shape == (32, 40)
    assert rgb.plane(5).shape == (32, 40, 3)
    rgba = as_volume(RNG.integers(0, 255, (6, 32, 40, 4)).astype(np.uint8))
    assert rgba.planes.shape == (6, 32, 40, 3)
    with pytest.raises(IndexError, match="plane 6 is outside the stack of 6 planes"):
        grey.plane(6)


def test_stack_normalisation_is_global_not_per_plane():
    ramp = np.arange(1024, dtype=np.float32).reshape(32, 32)
    stack = np.stack([ramp, ramp + 1000, ramp + 2000])
    stack[0, 0, 0] = stack[2, 0, 0] = 1500
    vol = as_volume(stack)
    low, high = np.percentile(stack, [1, 99.8])
    assert (vol.low, vol.high) == pytest.approx((low, high))
    assert vol.low != pytest.approx(as_volume(stack[0]).low)
    planes = [vol.plane(i)[..., 0] for i in range(3)]
    for i in range(3):
        np.testing.assert_allclose(planes[i], expected_plane(stack[i], low, high), atol=1e-3)
    assert planes[0][0, 0] == planes[2][0, 0] == pytest.approx((1500 - low) * 255 / (high - low), abs=1e-3)
    assert planes[0].mean() < 90 < planes[1].mean() < 170 < planes[2].mean()


def test_constant_image_maps_to_black_without_dividing_by_zero():
    vol = as_volume(np.full((20, 30), 7, np.uint16))
    assert (vol.low, vol.high) == (7.0, 8.0)
    plane = vol.plane(0)
    assert np.isfinite(plane).all() and (plane == 0).all()


def test_nearly_constant_image_falls_back_to_min_and_max():
    image = np.full((50, 50), 5.0, np.float32)
    image[10, 10] = 100.0  # both percentiles are 5: the one bright pixel decides the range
    vol = as_volume(image)
    assert (vol.low, vol.high) == (5.0, 100.0)
    assert vol.plane(0)[10, 10, 0] == 255 and vol.plane(0)[0, 0, 0] == 0


def test_content_hash_follows_pixels_shape_and_dtype():
    image = GREY["uint16"]
    assert as_volume(image).content_hash() == as_volume(image.copy()).content_hash()
    changed = image.copy()
    changed[3, 4] += 1
    hashes = {
        as_volume(image).content_hash(),
        as_volume(changed).content_hash(),
        as_volume(image.astype(np.int32)).content_hash(),
        as_volume(image.reshape(48, 64)).content_hash(),
    }
    assert len(hashes) == 4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_pixels_are_refused(bad):
    image = np.ones((16, 16), np.float32)
    image[3, 3] = bad
    with pytest.raises(ImageError, match="NaN or infinite values"):
        as_volume(image)


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((100,), 1), ((2, 3, 16, 16, 16), 5), ((2, 3, 16, 16), 4)],
)
def test_wrong_number_of_axes_is_refused(shape, axes):
    with pytest.raises(ImageError, match=rf"shape \({shape[0]},.* has {axes} spatial axes; expected a 2D image"):
        as_volume(np.zeros(shape, np.uint8))


def test_complex_dtype_is_refused():
    with pytest.raises(ImageError, match="dtype complex64 is not a real number type"):
        as_volume(np.zeros((16, 16), np.complex64))


def test_bad_channel_choices_are_refused():
    image = np.zeros((32, 32, 5), np.uint8)
    with pytest.raises(ImageError, match="channel 5 does not exist: the channel axis 2 has 5 channels"):
        as_volume(image, channel_axis=-1, channel=5)
    with pytest.raises(ImageError, match="channel -1 does not exist"):
        as_volume(image, channel_axis=2, channel=-1)
    with pytest.raises(ImageError, match="channel='rgb' needs ≥ 3 channels but axis 0 has 2"):
        as_volume(np.zeros((2, 32, 32), np.uint8), channel_axis=0, channel="rgb")
    with pytest.raises(ImageError, match="channel must be a channel index, 'mean' or 'rgb'; got 'max'"):
        as_volume(image, channel_axis=2, channel="max")


@pytest.mark.parametrize("shape", [(5, 100), (100, 7), (3, 5, 100), (7, 100, 3)])
def test_too_small_image_is_refused(shape):
    with pytest.raises(ImageError, match="too small to segment"):
        as_volume(np.zeros(shape, np.uint8))
