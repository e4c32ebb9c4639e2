"""Camera images -> the fixed-size, fixed-order image batch the policy consumes.

pi0 and pi0.5 were trained on images letterboxed to 224x224 (aspect ratio
kept, black bars), so a camera frame of any size has to go through exactly the
same resize-and-pad to look like the training data (docs/preprocessing.md, "Resize with pad").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from vla_ros.errors import ObservationError
from vla_ros.types import CAMERA_KEYS

MODEL_IMAGE_SIZE = 224


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


def resize_with_pad(
    image: np.ndarray, height: int = MODEL_IMAGE_SIZE, width: int = MODEL_IMAGE_SIZE
) -> np.ndarray:
    """Letterbox an RGB image to (height, width, 3) without distorting it.

    The image is scaled by 1/ratio with ratio = max(w / width, h / height), the
    scaled size truncated to int, with bilinear interpolation; the rest is
    filled with black, split evenly with the odd pixel going to the bottom /
    right. uint8 images are padded with 0; float32 images, which must already
    be in the model range [-1, 1], are padded with -1 (black in that range).

    An image that already has the target size is returned unchanged (not
    copied).

    Raises:
        ObservationError: if `image` is not a non-empty (H, W, 3) uint8 or
            float32 array.
    """
    image = _check_image(image)
    if height < 1 or width < 1:
        raise ObservationError(f"target size {height}x{width}: expected height, width >= 1")
    cur_h, cur_w = image.shape[:2]
    if (cur_h, cur_w) == (height, width):
        return image

    ratio = max(cur_w / width, cur_h / height)
    # A sliver (e.g. 1x1000) would truncate to 0 rows, which cv2 refuses; keep
    # at least one so the frame still yields something.
    new_h = max(1, int(cur_h / ratio))
    new_w = max(1, int(cur_w / ratio))

    if (new_h, new_w) != (cur_h, cur_w):
        # cv2 rejects negative strides (e.g. a BGR->RGB view made with [..., ::-1]).
        resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    else:
        resized = image
    if image.dtype == np.float32:
        resized = np.clip(resized, -1.0, 1.0)
        pad_value: float = -1.0
    else:
        pad_value = 0

    # Integer halving puts the odd pixel of padding at the bottom / right.
    top = (height - new_h) // 2
    left = (width - new_w) // 2
    out = np.full((height, width, 3), pad_value, dtype=image.dtype)
    out[top : top + new_h, left : left + new_w] = resized
    return out


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
) -> tuple[np.ndarray, np.ndarray]:
    """Stack camera frames into the model's image batch, in `camera_keys` order.

    Args:
        images: camera key -> uint8 (H, W, 3) RGB frame of any size. A key that
            is absent means the camera is missing.
        camera_keys: the model's camera slots, in the order it consumes them.
        size: side of the square model image.

    Returns:
        (images, mask): uint8 (N, size, size, 3) with N = len(camera_keys), and
        bool (N,). A missing camera is an all-zero image (-1 after
        `to_model_range`) with mask False, so the model treats its tokens as
        padding. No camera at all is allowed: every slot is then masked.

    Raises:
        ObservationError: for a key not in `camera_keys` (a typo or a camera the
            robot transform did not rename) or a frame that is not uint8 HxWx3.
    """
    unknown = sorted(set(images) - set(camera_keys))
    if unknown:
        raise ObservationError(
            f"unknown camera key(s) {unknown}; expected a subset of {list(camera_keys)}"
            " (check the robot transform's camera renames)"
        )
    batch = np.zeros((len(camera_keys), size, size, 3), dtype=np.uint8)
    mask = np.zeros((len(camera_keys),), dtype=bool)
    for i, key in enumerate(camera_keys):
        if key not in images:
            continue
        frame = _check_image(images[key], name=f"camera '{key}'")
        if frame.dtype != np.uint8:
            raise ObservationError(f"camera '{key}': got dtype {frame.dtype}; expected uint8 RGB")
        batch[i] = resize_with_pad(frame, size, size)
        mask[i] = True
    return batch, mask
