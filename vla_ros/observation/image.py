"""Camera images -> the fixed-size, fixed-order image batch the policy consumes.

pi0 and pi0.5 were trained on images letterboxed to 224x224 (aspect ratio
kept, black bars), so a camera frame of any size has to go through the same
resize-and-pad as the training data did. The two code bases that train these
checkpoints do it differently (docs/preprocessing.md, "Resize with pad"), so
the convention is a choice, `method`:

- ``"openpi"``: openpi's ``resize_with_pad`` (openpi-client ``image_tools``):
  Pillow's bilinear filter on the uint8 frame, which averages over the whole
  footprint of an output pixel when shrinking (antialiasing); black padding;
  the scaling to [-1, 1] comes after, on the uint8 result.
- ``"lerobot"``: LeRobot's ``resize_with_pad_torch`` inside ``PI0Policy``: the
  frame is first scaled to float [0, 1], resized with
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
  (samples 2x2 neighbours, no antialiasing), clamped to [0, 1], padded with 0,
  then mapped to [-1, 1].
- ``"smolvla"``: LeRobot's ``resize_with_pad`` inside ``SmolVLAPolicy``: the
  same float bilinear resize, but the padding goes on the LEFT and TOP (the
  frame sits in the bottom-right corner) and nothing is clamped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.types import CAMERA_KEYS

MODEL_IMAGE_SIZE = 224

#: Resize-with-pad conventions, named after the code base whose checkpoints use them.
RESIZE_METHODS = ("openpi", "lerobot", "smolvla")
#: The methods that resize in float [0, 1] (LeRobot's), whose unrounded result the model takes.
FLOAT_RESIZE_METHODS = ("lerobot", "smolvla")
#: The convention of openpi checkpoints (the pi0 / pi0.5 base models and their fine-tunes).
DEFAULT_RESIZE_METHOD = "openpi"


def check_resize_method(method: str) -> str:
    """Return `method` if it is one of `RESIZE_METHODS`.

    Raises:
        ConfigError("policy.image_resize", ...): any other value; the message
            names the choices.
    """
    if not isinstance(method, str) or method not in RESIZE_METHODS:
        raise ConfigError(
            "policy.image_resize",
            f"unknown image resize method {method!r}; expected one of {', '.join(map(repr, RESIZE_METHODS))}",
        )
    return method


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return `image` as an array if it is a non-empty HxWx3 uint8/float32 image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ObservationError(
            f"{name}: got an array of shape {image.shape}; expected (height, width, 3) RGB"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ObservationError(
            f"{name}: got an empty image of shape {image.shape}; expected height, width >= 1"
        )
    if image.dtype not in (np.uint8, np.float32):
        raise ObservationError(
            f"{name}: got dtype {image.dtype}; expected uint8 in [0, 255] or float32 in [-1, 1]"
        )
    return image


def _scaled_size(cur_h: int, cur_w: int, height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of the frame inside the letterbox, as both references compute it."""
    ratio = max(cur_w / width, cur_h / height)
    # A sliver (e.g. 1x1000) would truncate to 0 rows, which neither Pillow nor
    # torch can produce; keep at least one so the frame still yields something.
    return max(1, int(cur_h / ratio)), max(1, int(cur_w / ratio))


def _pad(resized: np.ndarray, height: int, width: int, value: float, corner: bool = False) -> np.ndarray:
    """Centre `resized` on a (height, width, 3) canvas of `value`; odd pixel bottom / right.

    corner: put it in the bottom-right corner instead (all padding left / top, SmolVLA's).
    """
    new_h, new_w = resized.shape[:2]
    top = height - new_h if corner else (height - new_h) // 2
    left = width - new_w if corner else (width - new_w) // 2
    out = np.full((height, width, 3), value, dtype=resized.dtype)
    out[top : top + new_h, left : left + new_w] = resized
    return out


def _openpi_resize(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Pillow bilinear resize of an (H, W, 3) uint8 or float32 array to (new_h, new_w, 3)."""
    if image.shape[:2] == (new_h, new_w):
        return image
    image = np.ascontiguousarray(image)
    if image.dtype == np.uint8:
        pil = Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
        return np.asarray(pil)
    # Pillow has no 3-channel float mode: resize each channel as a mode "F"
    # image, with the same filter computed in floating point.
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
            (new_w, new_h), resample=Image.Resampling.BILINEAR))
        for c in range(3)
    ]
    return np.stack(channels, axis=-1).astype(np.float32, copy=False)


def _lerobot_resize(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """torch bilinear (align_corners=False, no antialiasing) resize of a float32 (H, W, 3) array."""
    if image.shape[:2] == (new_h, new_w):
        return image
    import torch
    import torch.nn.functional as F

    # The (H, W, 3) frame as an NCHW view in channels-last memory, no copy: torch's
    # channels-last bilinear kernel gives the same bits as on the contiguous
    # channels-first batch LeRobot has there, about 4x faster than copying first.
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _lerobot_unit_range(
    frame_uint8: np.ndarray, height: int, width: int, method: str = "lerobot"
) -> np.ndarray:
    """LeRobot's letterbox of a uint8 frame, float32 in [0, 1] (padding 0), before `* 2 - 1`.

    "lerobot" (pi0 family): clamped, centred; "smolvla": unclamped, padded left / top.
    """
    unit = frame_uint8.astype(np.float32) / np.float32(255.0)
    if frame_uint8.shape[:2] == (height, width):
        return unit
    new_h, new_w = _scaled_size(*frame_uint8.shape[:2], height, width)
    resized = _lerobot_resize(unit, new_h, new_w)
    if method == "smolvla":
        return _pad(resized, height, width, 0.0, corner=True)
    return _pad(np.clip(resized, 0.0, 1.0), height, width, 0.0)


def resize_with_pad(
    image: np.ndarray,
    height: int = MODEL_IMAGE_SIZE,
    width: int = MODEL_IMAGE_SIZE,
    method: str = DEFAULT_RESIZE_METHOD,
) -> np.ndarray:
    """Letterbox an RGB image to (height, width, 3) without distorting it.

    Both methods scale by 1/ratio with ratio = max(w / width, h / height), the
    scaled size truncated to int (never below 1), and fill the rest with
    black, split evenly with the odd pixel going to the bottom / right. They
    differ in the interpolation (module docstring):

    - ``"openpi"``: Pillow ``Image.resize(..., BILINEAR)`` (antialiased when
      shrinking), straight on uint8, as openpi's ``resize_with_pad`` does;
      the result is exactly openpi's.
    - ``"lerobot"``: ``F.interpolate(bilinear, align_corners=False)`` on
      x / 255 in float32, clamped to [0, 1], padded with 0, as LeRobot's
      ``resize_with_pad_torch`` does; the uint8 result is that rounded to the
      nearest level (off by at most half a level; `prepare_images(...,
      model_range=True)` gives the unrounded values).
    - ``"smolvla"``: as ``"lerobot"`` without the clamp, and all the padding
      on the left / top, as LeRobot's SmolVLA ``resize_with_pad`` does.

    uint8 images give uint8 (padding 0). float32 images, which must already be
    in the model range [-1, 1], are resized in that range with the same filter,
    clipped to [-1, 1] and padded with -1 (black in that range).

    An image that already has the target size is returned unchanged (not
    copied).

    Raises:
        ObservationError: if `image` is not a non-empty (H, W, 3) uint8 or
            float32 array.
        ConfigError: if `method` is not one of `RESIZE_METHODS`.
    """
    method = check_resize_method(method)
    image = _check_image(image)
    if height < 1 or width < 1:
        raise ObservationError(f"target size {height}x{width}: expected height, width >= 1")
    if image.shape[:2] == (height, width):
        return image

    if method in FLOAT_RESIZE_METHODS and image.dtype == np.uint8:
        unit = _lerobot_unit_range(image, height, width, method)
        return np.rint(np.clip(unit, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)

    new_h, new_w = _scaled_size(*image.shape[:2], height, width)
    resize = _openpi_resize if method == "openpi" else _lerobot_resize
    resized = resize(image, new_h, new_w)
    corner = method == "smolvla"
    if image.dtype == np.float32:
        return _pad(np.clip(resized, -1.0, 1.0), height, width, -1.0, corner)
    return _pad(resized, height, width, 0, corner)


def to_model_range(image_uint8: np.ndarray) -> np.ndarray:
    """Map uint8 pixels [0, 255] to the float32 model range [-1, 1] (x / 255 * 2 - 1).

    Works on any shape (a single image or a batch).
    """
    image_uint8 = np.asarray(image_uint8)
    if image_uint8.dtype != np.uint8:
        raise ObservationError(f"to_model_range: got dtype {image_uint8.dtype}; expected uint8")
    return image_uint8.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)


def prepare_images(
    images: Mapping[str, np.ndarray],
    camera_keys: Sequence[str] = CAMERA_KEYS,
    size: int = MODEL_IMAGE_SIZE,
    method: str = DEFAULT_RESIZE_METHOD,
    *,
    model_range: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack camera frames into the model's image batch, in `camera_keys` order.

    Args:
        images: camera key -> uint8 (H, W, 3) RGB frame of any size. A key that
            is absent means the camera is missing.
        camera_keys: the model's camera slots, in the order it consumes them.
        size: side of the square model image.
        method: the checkpoint's resize convention, one of `RESIZE_METHODS`
            (see `resize_with_pad`).
        model_range: False (the default) gives the uint8 batch the engines
            take (they scale it with x / 255 * 2 - 1 themselves). True gives
            float32 in [-1, 1], exactly what the reference feeds its model:
            openpi scales after resizing, so this is `to_model_range` of the
            uint8 batch, bit for bit; LeRobot scales before resizing, so this
            is its unrounded float result, which the uint8 batch matches to
            within one uint8 level (1/255 in [-1, 1] units).

    Returns:
        (images, mask): (N, size, size, 3) with N = len(camera_keys), uint8
        (or float32 with `model_range`), and bool (N,). A missing camera is an
        all-black image (0, i.e. -1 after scaling) with mask False, so the
        model treats its tokens as padding. No camera at all is allowed: every
        slot is then masked.

    Raises:
        ObservationError: for a key not in `camera_keys` (a typo or a camera the
            robot transform did not rename) or a frame that is not uint8 HxWx3.
        ConfigError: if `method` is not one of `RESIZE_METHODS`.
    """
    method = check_resize_method(method)
    unknown = sorted(set(images) - set(camera_keys))
    if unknown:
        raise ObservationError(
            f"unknown camera key(s) {unknown}; expected a subset of {list(camera_keys)}"
            " (check the robot transform's camera renames)"
        )
    if model_range:
        batch = np.full((len(camera_keys), size, size, 3), -1.0, dtype=np.float32)
    else:
        batch = np.zeros((len(camera_keys), size, size, 3), dtype=np.uint8)
    mask = np.zeros((len(camera_keys),), dtype=bool)
    for i, key in enumerate(camera_keys):
        if key not in images:
            continue
        frame = _check_image(images[key], name=f"camera '{key}'")
        if frame.dtype != np.uint8:
            raise ObservationError(f"camera '{key}': got dtype {frame.dtype}; expected uint8 RGB")
        if not model_range:
            batch[i] = resize_with_pad(frame, size, size, method)
        elif method == "openpi":
            batch[i] = to_model_range(resize_with_pad(frame, size, size, method))
        else:
            batch[i] = _lerobot_unit_range(frame, size, size, method) * np.float32(2.0) - np.float32(1.0)
        mask[i] = True
    return batch, mask
