"""Image / CompressedImage <-> RGB (vla_ros.ros.image_msgs), checked against real sensor_msgs messages."""

from __future__ import annotations

import sys
import types

from builtin_interfaces.msg import Time
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vla_ros.errors import ObservationError
from vla_ros.ros import image_msgs
from vla_ros.ros.image_msgs import (
    compressed_to_rgb,
    image_to_rgb,
    ImageConversionError,
    rgb_to_compressed_msg,
    rgb_to_image_msg,
)

# 3 rows x 4 columns; every channel value distinct so any mix-up shows.
RGB = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3) * 5
ALPHA = np.full((3, 4, 1), 200, dtype=np.uint8)

# encoding -> pixels as they sit in the message, and the RGB we must get back.
LAYOUTS = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], RGB),
    "rgba8": (np.concatenate([RGB, ALPHA], axis=2), RGB),
    "bgra8": (np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2), RGB),
    "mono8": (RGB[:, :, :1], np.repeat(RGB[:, :, :1], 3, axis=2)),
}


def make_image(pixels: np.ndarray, encoding: str, padding: int = 0, pad_value: int = 0xEE) -> Image:
    """Lay `pixels` out by hand (independently of rgb_to_image_msg), padding each row."""
    height, width, channels = pixels.shape
    rows = np.full((height, width * channels + padding), pad_value, dtype=np.uint8)
    rows[:, : width * channels] = pixels.reshape(height, -1)
    msg = Image()
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.step = width * channels + padding
    msg.data = rows.tobytes()
    return msg


# ----------------------------------------------------------------- Image ---


@pytest.mark.parametrize("padding", [0, 1, 3, 8])
@pytest.mark.parametrize("encoding", sorted(LAYOUTS))
def test_image_to_rgb_every_encoding_with_row_padding(encoding: str, padding: int) -> None:
    pixels, expected = LAYOUTS[encoding]
    rgb = image_to_rgb(make_image(pixels, encoding, padding))
    assert rgb.dtype == np.uint8
    assert rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(rgb, expected)
    assert rgb.flags.c_contiguous


def test_bgr_and_rgb_read_the_same_bytes_in_opposite_channel_order() -> None:
    raw = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert image_to_rgb(make_image(raw, "rgb8"))[0, 0].tolist() == [10, 20, 30]
    assert image_to_rgb(make_image(raw, "bgr8"))[0, 0].tolist() == [30, 20, 10]


def test_mono8_gives_three_equal_channels() -> None:
    gray = np.array([[[0], [7]], [[128], [255]]], dtype=np.uint8)
    rgb = image_to_rgb(make_image(gray, "mono8"))
    assert rgb.tolist() == [[[0, 0, 0], [7, 7, 7]], [[128, 128, 128], [255, 255, 255]]]


def test_rgba_and_bgra_drop_alpha() -> None:
    raw = np.array([[[1, 2, 3, 4]]], dtype=np.uint8)
    assert image_to_rgb(make_image(raw, "rgba8"))[0, 0].tolist() == [1, 2, 3]
    assert image_to_rgb(make_image(raw, "bgra8"))[0, 0].tolist() == [3, 2, 1]


def test_is_bigendian_does_not_change_8bit_data() -> None:
    msg = make_image(LAYOUTS["bgr8"][0], "bgr8", padding=2)
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def test_result_is_a_copy_not_a_view_of_the_message() -> None:
    msg = make_image(RGB, "rgb8")
    rgb = image_to_rgb(msg)
    rgb[:] = 0
    assert msg.data[0] == RGB[0, 0, 0] and msg.data[5] == RGB[0, 1, 2]


def test_wrong_encoding_names_it_and_the_supported_list() -> None:
    msg = make_image(RGB, "yuv422")
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(msg)
    text = str(info.value)
    assert text == "unsupported image encoding 'yuv422'; supported: rgb8, bgr8, mono8, rgba8, bgra8"
    assert isinstance(info.value, ObservationError)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16bit_encodings_are_rejected_with_a_hint(encoding: str) -> None:
    msg = make_image(np.zeros((2, 2, 2), np.uint8), encoding)
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(msg)
    text = str(info.value)
    assert f"'{encoding}'" in text
    assert "16/32-bit" in text
    assert "supported: rgb8, bgr8, mono8, rgba8, bgra8" in text


def test_short_and_long_data_are_rejected() -> None:
    msg = make_image(RGB, "rgb8", padding=2)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ImageConversionError, match=r"has 41 data bytes; expected step\*height = 42"):
        image_to_rgb(msg)
    msg.data = bytes(43)
    with pytest.raises(ImageConversionError, match="has 43 data bytes"):
        image_to_rgb(msg)


def test_step_smaller_than_a_row_is_rejected() -> None:
    msg = make_image(RGB, "rgb8")
    msg.step = 11
    msg.data = bytes(33)
    expected = r"step 11 bytes; a row needs at least width\*channels = 12"
    with pytest.raises(ImageConversionError, match=expected):
        image_to_rgb(msg)


def test_empty_image_is_rejected() -> None:
    msg = Image(encoding="rgb8", height=0, width=4, step=12)
    with pytest.raises(ImageConversionError, match="empty"):
        image_to_rgb(msg)


# --------------------------------------------------------- cv_bridge path ---


class FakeBridgeError(Exception):
    pass


class FakeRosBridge:
    """Stands in for ROS cv_bridge: passthrough view of whole-pixel rows, like the real one."""

    calls = 0

    def imgmsg_to_cv2(self, msg: Image, desired_encoding: str = "passthrough") -> np.ndarray:
        FakeRosBridge.calls += 1
        if msg.encoding != "rgb8":
            raise FakeBridgeError(f"cannot convert {msg.encoding}")
        channels = 3
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step // channels, channels)
        return rows[:, : msg.width]


def test_cv_bridge_path_is_used_copied_and_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_msgs, "_CV_BRIDGE", (FakeRosBridge(), FakeBridgeError))
    FakeRosBridge.calls = 0
    assert image_msgs.image_backend() == "cv_bridge"

    msg = make_image(RGB, "rgb8", padding=3)
    rgb = image_to_rgb(msg)
    assert FakeRosBridge.calls == 1
    np.testing.assert_array_equal(rgb, RGB)
    assert rgb.flags.owndata and rgb.flags.writeable

    # Padding that is not whole pixels: the real cv_bridge misplaces rows, so numpy does it.
    np.testing.assert_array_equal(image_to_rgb(make_image(RGB, "rgb8", padding=2)), RGB)
    assert FakeRosBridge.calls == 1

    # Foreign byte order: the real cv_bridge's byte swap fails on numpy 2, so numpy does it.
    foreign = make_image(RGB, "rgb8")
    foreign.is_bigendian = int(sys.byteorder == "little")
    np.testing.assert_array_equal(image_to_rgb(foreign), RGB)
    assert FakeRosBridge.calls == 1

    with pytest.raises(ImageConversionError, match="cv_bridge could not convert 'bgr8' to rgb8"):
        image_to_rgb(make_image(RGB, "bgr8"))


def test_only_the_ros_cv_bridge_is_picked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    pypi_port = types.ModuleType("cv_bridge")
    pypi_port.CvBridge = type("CvBridge", (), {})  # no imgmsg_to_cv2
    monkeypatch.setitem(sys.modules, "cv_bridge", pypi_port)
    assert image_msgs._load_ros_cv_bridge() is None

    ros_module = types.ModuleType("cv_bridge")
    ros_module.CvBridge = FakeRosBridge
    ros_module.CvBridgeError = FakeBridgeError
    monkeypatch.setitem(sys.modules, "cv_bridge", ros_module)
    loaded = image_msgs._load_ros_cv_bridge()
    assert loaded is not None
    assert isinstance(loaded[0], FakeRosBridge) and loaded[1] is FakeBridgeError


@pytest.mark.skipif(image_msgs.image_backend() != "cv_bridge", reason="ROS cv_bridge not installed")
@pytest.mark.parametrize("encoding", sorted(LAYOUTS))
def test_real_cv_bridge_matches_numpy(encoding: str) -> None:
    pixels, expected = LAYOUTS[encoding]
    for padding in (0, 4 * pixels.shape[2]):
        msg = make_image(pixels, encoding, padding)
        np.testing.assert_array_equal(image_to_rgb(msg), expected)
        np.testing.assert_array_equal(image_msgs._image_to_rgb_numpy(msg, pixels.shape[2]), expected)


# ------------------------------------------------------- CompressedImage ---


def gradient_image() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)


def test_png_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    msg = rgb_to_compressed_msg(image, "png", stamp=3.25, frame_id="cam")
    assert msg.format == "png"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (3, 250_000_000, "cam")
    np.testing.assert_array_equal(compressed_to_rgb(msg), image)


def test_jpeg_round_trip_within_tolerance_and_channel_order_kept() -> None:
    image = gradient_image()
    msg = rgb_to_compressed_msg(image, "jpeg", quality=90)
    assert msg.format == "jpeg"
    rgb = compressed_to_rgb(msg)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    diff = np.abs(rgb.astype(np.int16) - image)
    assert diff.max() <= 8
    assert diff.mean() <= 2.0


def test_solid_red_jpeg_stays_red() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 255
    rgb = compressed_to_rgb(rgb_to_compressed_msg(image, "jpeg"))
    assert rgb[8, 8, 0] >= 250 and rgb[8, 8, 1] <= 5 and rgb[8, 8, 2] <= 5


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "JPEG", "rgb8; jpeg compressed bgr8", ""])
def test_image_transport_and_plain_format_strings_accepted(fmt: str) -> None:
    msg = rgb_to_compressed_msg(gradient_image(), "jpeg")
    msg.format = fmt
    assert compressed_to_rgb(msg).shape == (48, 64, 3)


def test_grayscale_png_gives_three_equal_channels() -> None:
    gray = np.array([[0, 50], [100, 255]], dtype=np.uint8)
    ok, data = cv2.imencode(".png", gray)
    assert ok
    msg = CompressedImage(format="mono8; png compressed mono8", data=data.tobytes())
    assert compressed_to_rgb(msg).tolist() == [[[0, 0, 0], [50, 50, 50]], [[100, 100, 100], [255, 255, 255]]]


def test_png_with_alpha_drops_alpha() -> None:
    bgra = np.array([[[10, 20, 30, 40]]], dtype=np.uint8)
    ok, data = cv2.imencode(".png", bgra)
    assert ok
    assert compressed_to_rgb(CompressedImage(format="png", data=data.tobytes())).tolist() == [[[30, 20, 10]]]


def test_jpeg_with_trailing_zero_padding_is_accepted() -> None:
    msg = rgb_to_compressed_msg(gradient_image(), "jpeg")
    msg.data = bytes(msg.data) + bytes(16)
    assert compressed_to_rgb(msg).shape == (48, 64, 3)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"this is not an image", "could not be decoded"),
        (b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9", "could not be decoded"),
        (b"", "has no data"),
    ],
)
def test_corrupt_compressed_data_is_rejected(data: bytes, match: str) -> None:
    with pytest.raises(ImageConversionError, match=match):
        compressed_to_rgb(CompressedImage(format="jpeg", data=data))


def test_truncated_jpeg_is_rejected() -> None:
    msg = rgb_to_compressed_msg(gradient_image(), "jpeg")
    msg.data = bytes(msg.data)[: len(msg.data) // 2]
    with pytest.raises(ImageConversionError, match="truncated"):
        compressed_to_rgb(msg)


def test_truncated_png_is_rejected() -> None:
    msg = rgb_to_compressed_msg(gradient_image(), "png")
    msg.data = bytes(msg.data)[: len(msg.data) // 2]
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_to_rgb(msg)


def test_depth_and_unknown_compressed_formats_are_rejected() -> None:
    data = rgb_to_compressed_msg(gradient_image(), "png").data
    with pytest.raises(ImageConversionError, match="depth stream"):
        compressed_to_rgb(CompressedImage(format="16UC1; compressedDepth png", data=data))
    expected = "unsupported compressed image format 'tiff'; supported: jpeg, jpg, png"
    with pytest.raises(ImageConversionError, match=expected):
        compressed_to_rgb(CompressedImage(format="tiff", data=data))


def test_16bit_png_is_rejected() -> None:
    ok, data = cv2.imencode(".png", np.full((2, 2), 1000, np.uint16))
    assert ok
    with pytest.raises(ImageConversionError, match="uint16"):
        compressed_to_rgb(CompressedImage(format="png", data=data.tobytes()))


# ------------------------------------------------------- rgb_to_image_msg ---


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_rgb_to_image_msg_round_trip(encoding: str) -> None:
    msg = rgb_to_image_msg(RGB, encoding, stamp=Time(sec=7, nanosec=5), frame_id="base", row_padding=3)
    channels = 4 if encoding.endswith("a8") else 3
    step = 4 * channels + 3
    assert (msg.height, msg.width, msg.step, len(msg.data)) == (3, 4, step, 3 * step)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (7, 5, "base")
    assert msg.encoding == encoding and msg.is_bigendian == 0
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def test_rgb_to_image_msg_layout_and_alpha() -> None:
    pixel = np.array([[[1, 2, 3]]], np.uint8)
    assert bytes(rgb_to_image_msg(pixel, "bgr8").data) == b"\x03\x02\x01"
    assert bytes(rgb_to_image_msg(pixel, "bgra8").data) == b"\x03\x02\x01\xff"
    assert bytes(rgb_to_image_msg(np.array([[9, 8]], np.uint8), "mono8").data) == b"\x09\x08"
    assert rgb_to_image_msg(pixel).header.stamp == Time()


def test_rgb_to_image_msg_rejects_bad_input() -> None:
    with pytest.raises(ImageConversionError, match="mono16"):
        rgb_to_image_msg(RGB, "mono16")
    with pytest.raises(ValueError, match="uint8"):
        rgb_to_image_msg(RGB.astype(np.float32))
