"""sensor_msgs Image / CompressedImage <-> uint8 RGB arrays.

Cameras reach the node in many forms (rgb8 / bgr8 / mono8 / rgba8 / bgra8 raw
images with padded rows, JPEG or PNG through image_transport), while the
policy wants one thing: a fresh uint8 (H, W, 3) RGB array. Decoding happens
here, with errors that name the encoding and what is supported, so that a
mis-wired topic (a depth stream, a 16-bit image) is obvious from the log.
The encoders (RGB -> message) build the synthetic inputs of the bag tools,
benchmarks and tests with the same layouts.
"""

from __future__ import annotations

import sys

from builtin_interfaces.msg import Time
import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from vla_ros.errors import ObservationError
from vla_ros.ros.builtin_time import as_stamp

# encoding -> channels. Every supported encoding has one byte per channel, so
# `is_bigendian` cannot change the meaning of the data and is ignored on purpose.
_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)
_CV2_TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
}

# Depth / 16-bit streams are a common mis-wiring (a depth topic remapped onto a
# color input); they get their own message so the fix is obvious.
_WIDE_ENCODINGS = frozenset({"mono16", "16UC1", "16SC1", "32FC1", "rgb16", "bgr16", "rgba16", "bgra16"})

_COMPRESSED_CODECS = ("jpeg", "jpg", "png")
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


class ImageConversionError(ObservationError):
    """An image message cannot be turned into an RGB array."""


def _load_ros_cv_bridge() -> tuple[object, type[BaseException]] | None:
    """Return (CvBridge instance, its error type) if ROS cv_bridge is importable.

    The PyPI package `cv-bridge` is an unrelated port with the same import
    name; only the ROS one has `CvBridge.imgmsg_to_cv2`, so that is what we
    check for.
    """
    try:
        import cv_bridge  # noqa: PLC0415  (optional dependency)
    except ImportError:
        return None
    bridge_cls = getattr(cv_bridge, "CvBridge", None)
    if bridge_cls is None or not callable(getattr(bridge_cls, "imgmsg_to_cv2", None)):
        return None
    try:
        bridge = bridge_cls()
    except (ImportError, OSError):
        # Its compiled boost helper can be missing from a partial install.
        return None
    error_type = getattr(cv_bridge, "CvBridgeError", None)
    if not (isinstance(error_type, type) and issubclass(error_type, BaseException)):
        error_type = RuntimeError
    return bridge, error_type


_CV_BRIDGE = _load_ros_cv_bridge()


def image_backend() -> str:
    """'cv_bridge' when ROS cv_bridge converts images, else 'numpy' (for diagnostics)."""
    return "numpy" if _CV_BRIDGE is None else "cv_bridge"


def _unsupported_encoding(encoding: str) -> ImageConversionError:
    supported = ", ".join(SUPPORTED_ENCODINGS)
    if encoding in _WIDE_ENCODINGS:
        return ImageConversionError(
            f"image encoding '{encoding}' is a 16/32-bit (depth or mono16) format, which the policy "
            f"cannot use; subscribe to a color or mono8 stream instead (supported: {supported})"
        )
    return ImageConversionError(f"unsupported image encoding '{encoding}'; supported: {supported}")


def _buffer_as_uint8(data: object) -> np.ndarray:
    """View a message's uint8[] field as a numpy array without copying where possible."""
    try:
        return np.frombuffer(data, dtype=np.uint8)  # type: ignore[call-overload]
    except TypeError:
        # A plain list (a message built by hand before rosidl converted it).
        return np.asarray(data, dtype=np.uint8)


def _check_image_layout(msg: Image) -> int:
    """Validate encoding, size, step and data length; return the channel count."""
    if msg.encoding not in _ENCODINGS:
        raise _unsupported_encoding(msg.encoding)
    channels = _ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height < 1 or width < 1:
        raise ImageConversionError(f"image ({msg.encoding}) is empty: {width}x{height} pixels")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            f"image ({msg.encoding}, {width}x{height}) has step {step} bytes; a row needs at least "
            f"width*channels = {row_bytes}"
        )
    size = len(msg.data)
    if size != step * height:
        raise ImageConversionError(
            f"image ({msg.encoding}, {width}x{height}, step {step}) has {size} data bytes; "
            f"expected step*height = {step * height}"
        )
    return channels


def _image_to_rgb_numpy(msg: Image, channels: int) -> np.ndarray:
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    rows = _buffer_as_uint8(msg.data).reshape(height, step)
    pixels = rows[:, : width * channels].reshape(height, width, channels)
    if msg.encoding == "rgb8":
        # The copy detaches the result from the message buffer.
        return np.array(pixels, dtype=np.uint8, order="C", copy=True)
    # OpenCV's channel shuffles are exact for 8-bit data, write a fresh array
    # and are several times faster than numpy fancy indexing on full frames.
    return cv2.cvtColor(pixels, _CV2_TO_RGB[msg.encoding])


def _image_to_rgb_cv_bridge(msg: Image) -> np.ndarray:
    assert _CV_BRIDGE is not None
    bridge, error_type = _CV_BRIDGE
    try:
        converted = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")  # type: ignore[attr-defined]
    except error_type as exc:
        raise ImageConversionError(f"cv_bridge could not convert '{msg.encoding}' to rgb8: {exc}") from exc
    # cv_bridge can hand back a view into the message buffer (rgb8 -> rgb8).
    return np.array(converted, dtype=np.uint8, order="C", copy=True)


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode a sensor_msgs/Image into a fresh uint8 (H, W, 3) RGB array.

    Supports rgb8, bgr8, mono8 (replicated to 3 channels), rgba8 and bgra8
    (alpha dropped). Row padding (`step` > width * channels) is skipped.

    Raises:
        ImageConversionError: unsupported encoding (naming it and the supported
            list), empty image, step smaller than a row, or data length other
            than step * height.
    """
    channels = _check_image_layout(msg)
    # ROS cv_bridge views rows as whole pixels (step / channels), which
    # misplaces rows when the padding is not a multiple of the pixel size, and
    # its byte-swap branch (taken when the message byte order differs from the
    # host's) uses an API numpy 2 removed. Byte order means nothing for 8-bit
    # data, so numpy handles both cases.
    native_order = bool(msg.is_bigendian) == (sys.byteorder == "big")
    if _CV_BRIDGE is not None and msg.step % channels == 0 and native_order:
        return _image_to_rgb_cv_bridge(msg)
    return _image_to_rgb_numpy(msg, channels)


def _compressed_codec(fmt: str) -> str:
    """The codec named by a CompressedImage.format string ('' if it names none).

    image_transport writes '<original encoding>; <codec> compressed <encoding>'
    (e.g. 'rgb8; jpeg compressed bgr8'); other publishers write just 'jpeg'.
    """
    text = fmt.strip().lower()
    if ";" in text:
        text = text.split(";", 1)[1].strip()
    return text.split(" ", 1)[0] if text else ""


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a JPEG or PNG sensor_msgs/CompressedImage into uint8 (H, W, 3) RGB.

    Grayscale images are replicated to 3 channels and alpha is dropped. An
    empty format string is accepted (the data is sniffed by OpenCV).

    Raises:
        ImageConversionError: a format other than jpeg/png (e.g.
            compressedDepth), empty, truncated or corrupt data, or a 16-bit PNG.
    """
    fmt = msg.format
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(
            f"compressed image format '{fmt}' is a depth stream; subscribe to a color stream "
            f"(supported: {', '.join(_COMPRESSED_CODECS)})"
        )
    codec = _compressed_codec(fmt)
    if codec and codec not in _COMPRESSED_CODECS:
        raise ImageConversionError(
            f"unsupported compressed image format '{fmt}'; supported: {', '.join(_COMPRESSED_CODECS)}"
        )
    data = _buffer_as_uint8(msg.data)
    if data.size == 0:
        raise ImageConversionError(f"compressed image ('{fmt}') has no data")
    head = data[:2].tobytes()
    # Some libjpeg builds decode a truncated stream into a partly grey frame
    # instead of failing; a JPEG must end with the EOI marker (cameras may pad
    # with zeros after it).
    if head == _JPEG_START and not np.trim_zeros(data, "b")[-2:].tobytes() == _JPEG_END:
        raise ImageConversionError(f"compressed image ('{fmt}'): JPEG data is truncated (no end marker)")
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageConversionError(f"compressed image ('{fmt}') could not be decoded: {exc}") from exc
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            f"compressed image ('{fmt}', {data.size} bytes) could not be decoded: corrupt or not jpeg/png"
        )
    if decoded.dtype != np.uint8:
        raise ImageConversionError(
            f"compressed image ('{fmt}') decodes to {decoded.dtype} pixels; only 8-bit images are supported"
        )
    if decoded.ndim == 2 or decoded.shape[2] == 1:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _check_rgb(rgb: np.ndarray, allowed_channels: tuple[int, ...] = (3,)) -> np.ndarray:
    array = np.asarray(rgb)
    channels = 1 if array.ndim == 2 else (array.shape[2] if array.ndim == 3 else -1)
    empty = array.ndim < 2 or array.shape[0] < 1 or array.shape[1] < 1
    if array.dtype != np.uint8 or channels not in allowed_channels or empty:
        raise ValueError(
            f"expected a non-empty uint8 image with {allowed_channels} channel(s); "
            f"got {array.dtype} array of shape {array.shape}"
        )
    return array if array.ndim == 3 else array[:, :, None]


def rgb_to_image_msg(
    rgb: np.ndarray,
    encoding: str = "rgb8",
    stamp: Time | float | None = None,
    frame_id: str = "",
    *,
    row_padding: int = 0,
) -> Image:
    """Encode an RGB array as a sensor_msgs/Image in `encoding`.

    rgb: uint8 (H, W, 3) RGB; (H, W, 4) RGBA is also accepted (alpha kept for
        rgba8/bgra8, else dropped) and (H, W) gray for mono8. A 3-channel
        image written as mono8 is converted with OpenCV's RGB2GRAY; written as
        rgba8/bgra8 it gets alpha 255.
    stamp: header stamp as a Time or seconds; None -> zero.
    row_padding: extra bytes at the end of each row (step = W*C + row_padding),
        filled with zeros, to produce messages like drivers with aligned rows.
    """
    if encoding not in _ENCODINGS:
        raise _unsupported_encoding(encoding)
    if row_padding < 0:
        raise ValueError(f"row_padding must be >= 0, got {row_padding}")
    image = _check_rgb(rgb, (1, 3, 4))
    height, width, in_channels = image.shape
    channels = _ENCODINGS[encoding]
    if channels == 1:
        if in_channels == 1:
            pixels = image
        else:
            pixels = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        if in_channels == 1:
            image = np.repeat(image, 3, axis=2)
        rgb3 = image[:, :, :3]
        pixels = rgb3 if encoding in ("rgb8", "rgba8") else rgb3[:, :, ::-1]
        if channels == 4:
            alpha = image[:, :, 3:4] if in_channels == 4 else np.full((height, width, 1), 255, np.uint8)
            pixels = np.concatenate([pixels, alpha], axis=2)
    row_bytes = width * channels
    rows = np.zeros((height, row_bytes + row_padding), dtype=np.uint8)
    rows[:, :row_bytes] = pixels.reshape(height, row_bytes)

    msg = Image()
    msg.header.stamp = as_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = row_bytes + row_padding
    msg.data = rows.tobytes()
    return msg


def rgb_to_compressed_msg(
    rgb: np.ndarray,
    fmt: str = "jpeg",
    quality: int = 90,
    stamp: Time | float | None = None,
    frame_id: str = "",
) -> CompressedImage:
    """Encode a uint8 (H, W, 3) RGB array as a 'jpeg' or 'png' CompressedImage.

    quality: JPEG quality 1..100 (ignored for PNG, which is lossless).
    """
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got '{fmt}'")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    image = _check_rgb(rgb)
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    msg = CompressedImage()
    msg.header.stamp = as_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.format = fmt
    msg.data = encoded.tobytes()
    return msg
