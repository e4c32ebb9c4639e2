"""Resize-with-pad, pixel scaling and camera batching against hand-computed pixels."""

import re

import numpy as np
import pytest

from vla_ros.errors import ObservationError
from vla_ros.observation.image import prepare_images, resize_with_pad, to_model_range
from vla_ros.types import CAMERA_KEYS


def _ramp(h: int, w: int, coef_y: int, coef_x: int) -> np.ndarray:
    """Image whose channel 0 is coef_y*y + coef_x*x.

    Bilinear resizing reproduces channel 0 exactly; channel 1 is 255 minus
    that, channel 2 constant 7.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    base = coef_y * yy + coef_x * xx
    return np.stack([base, 255 - base, np.full_like(base, 7)], axis=-1).astype(np.uint8)


def test_wide_3x5_to_4x4_hand_computed():
    # ratio = max(5/4, 3/4) = 1.25 -> resized 2x4 (int(2.4)=2, int(4.0)=4),
    # padding (4-2) = 1 row on top, 1 at the bottom.
    # Pixel-centre sampling: x_src = (x+0.5)*1.25-0.5 = .125, 1.375, 2.625, 3.875
    #                        y_src = (y+0.5)*1.5-0.5  = .25, 1.75
    # value = 40*y_src + 8*x_src: row0 = 10 + (1, 11, 21, 31), row1 = 70 + (1, 11, 21, 31).
    out = resize_with_pad(_ramp(3, 5, 40, 8), 4, 4, method="lerobot")
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    expected = np.array([[0, 0, 0, 0], [11, 21, 31, 41], [71, 81, 91, 101], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out[..., 0], expected)
    inner = np.array([[11, 21, 31, 41], [71, 81, 91, 101]])
    np.testing.assert_array_equal(out[1:3, :, 1], 255 - inner)
    np.testing.assert_array_equal(out[1:3, :, 2], 7)
    np.testing.assert_array_equal(out[[0, 3]], 0)


def test_tall_5x3_to_4x4_hand_computed():
    # Same as above transposed: resized 4x2, one column of padding left and right.
    out = resize_with_pad(_ramp(5, 3, 8, 40), 4, 4, method="lerobot")
    expected = np.array([[0, 11, 71, 0], [0, 21, 81, 0], [0, 31, 91, 0], [0, 41, 101, 0]])
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[:, [0, 3]], 0)


def test_odd_padding_goes_bottom_right():
    # 2x4 -> 5x5: ratio = max(4/5, 2/5) = 0.8 -> resized int(2.5)=2 rows x 5 cols;
    # 3 rows of padding: 1 on top, 2 at the bottom.
    out = resize_with_pad(np.full((2, 4, 3), 200, np.uint8), 5, 5)
    np.testing.assert_array_equal(out[:, 0, 0], [0, 200, 200, 0, 0])
    assert (out[1:3] == 200).all()
    # 4x2 -> 5x5: 3 columns of padding: 1 left, 2 right.
    out = resize_with_pad(np.full((4, 2, 3), 200, np.uint8), 5, 5)
    np.testing.assert_array_equal(out[0, :, 1], [0, 200, 200, 0, 0])


def test_float_image_pads_with_minus_one():
    image = np.full((3, 5, 3), 0.5, np.float32)
    out = resize_with_pad(image, 4, 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[[0, 3]], -1.0)
    np.testing.assert_allclose(out[1:3], 0.5, atol=1e-6)


def test_target_size_is_returned_untouched():
    image = _ramp(4, 4, 40, 8)
    assert resize_with_pad(image, 4, 4) is image


def test_negative_stride_view_is_accepted():
    rgb = _ramp(3, 5, 40, 8)
    bgr_view = rgb[..., ::-1]
    out = resize_with_pad(bgr_view, 4, 4, method="lerobot")
    np.testing.assert_array_equal(out[1:3, :, 2], [[11, 21, 31, 41], [71, 81, 91, 101]])


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((4, 4), np.uint8), "(height, width, 3)"),
        (np.zeros((4, 4, 4), np.uint8), "(height, width, 3)"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 3), np.float64), "float64"),
    ],
)
def test_bad_images_raise(bad, words):
    with pytest.raises(ObservationError, match=re.escape(words)):
        resize_with_pad(bad, 4, 4)


def test_to_model_range():
    out = to_model_range(np.array([0, 51, 255], np.uint8))
    assert out.dtype == np.float32
    # 51/255*2-1 = -0.6
    np.testing.assert_allclose(out, [-1.0, -0.6, 1.0], atol=1e-6)


def test_prepare_images_masks_missing_camera():
    base = np.full((2, 4, 3), 9, np.uint8)
    right = np.full((6, 6, 3), 250, np.uint8)
    batch, mask = prepare_images({"base_0_rgb": base, "right_wrist_0_rgb": right}, size=6)
    assert batch.shape == (3, 6, 6, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(mask, [True, False, True])
    # base: 2x4 -> ratio 4/6 -> 3x6 rows 1..3 (1 on top, 2 at the bottom).
    np.testing.assert_array_equal(batch[0, :, 0, 0], [0, 9, 9, 9, 0, 0])
    assert (batch[1] == 0).all()
    assert (batch[2] == 250).all()
    # A missing camera is -1 everywhere after scaling.
    assert (to_model_range(batch[1]) == -1.0).all()


def test_prepare_images_default_order_and_size():
    images = {key: np.full((10, 10, 3), i + 1, np.uint8) for i, key in enumerate(CAMERA_KEYS)}
    batch, mask = prepare_images(images)
    assert batch.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(batch[:, 100, 100, 0], [1, 2, 3])
    assert mask.all()


def test_prepare_images_unknown_key_lists_expected():
    with pytest.raises(ObservationError, match="left_wrist_0_rgb") as err:
        prepare_images({"cam_high": np.zeros((4, 4, 3), np.uint8)})
    assert "cam_high" in str(err.value)
