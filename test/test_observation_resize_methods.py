"""The two resize-with-pad conventions against references written from openpi's and LeRobot's sources.

Each method is checked twice: against a transcription of the reference's own
code calling the same library (openpi-client ``image_tools._resize_with_pad_pil``;
LeRobot 0.6.1 ``PI0Policy._preprocess_images`` + ``resize_with_pad_torch``),
and against a plain-numpy version of the filter itself (Pillow's antialiased
triangle filter from ``Resample.c``; torch's pixel-centre bilinear sampling),
so that calling the library with the wrong options is caught too.
"""

import re

import numpy as np
import pytest
from PIL import Image
import torch
import torch.nn.functional as F

from vla_ros.errors import ConfigError
from vla_ros.observation.image import (
    DEFAULT_RESIZE_METHOD,
    prepare_images,
    RESIZE_METHODS,
    resize_with_pad,
    to_model_range,
)

LEVEL = 1.0 / 255.0  # one uint8 intensity level in [0, 1] units

# (height, width) of a frame -> (top padding, rows, left padding, columns) in the
# 224x224 letterbox, worked out by hand: ratio = max(w / 224, h / 224), the
# scaled size truncated, the odd pixel of padding at the bottom / right.
SIZES = {
    (480, 640): (28, 168, 0, 224),  # shrink: 640/224 = 2.857, 480/2.857 = 168
    (720, 1280): (49, 126, 0, 224),  # shrink: 720/5.714 = 126
    (120, 160): (28, 168, 0, 224),  # enlarge: 160/224 = 0.714, 120/0.714 = 168
    (201, 333): (44, 135, 0, 224),  # odd: 201/1.487 = 135.2 -> 135; 89 rows = 44 + 45
    (333, 201): (0, 224, 44, 135),  # the same, tall: 44 columns left, 45 right
    (300, 300): (0, 224, 0, 224),  # square, shrunk, no padding
    (224, 100): (0, 224, 62, 100),  # ratio 1: not resized, only padded
    (224, 224): (0, 224, 0, 224),  # already the model size
}


def _frame(h: int, w: int, seed: int = 0, low: int = 10) -> np.ndarray:
    """Random uint8 RGB frame with values in [low, 255], so padding (0) is recognisable."""
    return np.random.default_rng(seed).integers(low, 256, (h, w, 3), dtype=np.uint8)


# --- references transcribed from the sources ------------------------------------------------------------


def _openpi_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """openpi-client image_tools.resize_with_pad / _resize_with_pad_pil, one uint8 image."""
    if image.shape[-3:-1] == (height, width):
        return image
    pil = Image.fromarray(image)
    cur_width, cur_height = pil.size
    ratio = max(cur_width / width, cur_height / height)
    resized_height = int(cur_height / ratio)
    resized_width = int(cur_width / ratio)
    resized_image = pil.resize((resized_width, resized_height), resample=Image.BILINEAR)
    zero_image = Image.new(resized_image.mode, (width, height), 0)
    pad_height = max(0, int((height - resized_height) / 2))
    pad_width = max(0, int((width - resized_width) / 2))
    zero_image.paste(resized_image, (pad_width, pad_height))
    return np.asarray(zero_image)


def _lerobot_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """LeRobot 0.6.1: uint8 HWC -> what PI0Policy feeds SigLIP, float32 HWC in [-1, 1]."""
    # prepare_observation_for_inference: /255, HWC -> CHW, batch of one.
    img = torch.from_numpy(image).type(torch.float32) / 255
    img = img.permute(2, 0, 1).contiguous().unsqueeze(0)
    # _preprocess_images: channels-first -> channels-last, resize if needed, * 2 - 1.
    img = img.permute(0, 2, 3, 1)
    if img.shape[1:3] != (height, width):
        # resize_with_pad_torch (channels-last branch).
        img = img.permute(0, 3, 1, 2)
        cur_height, cur_width = img.shape[2:]
        ratio = max(cur_width / width, cur_height / height)
        resized_height = int(cur_height / ratio)
        resized_width = int(cur_width / ratio)
        resized = F.interpolate(
            img, size=(resized_height, resized_width), mode="bilinear", align_corners=False
        )
        resized = resized.clamp(0.0, 1.0)
        pad_h0, remainder_h = divmod(height - resized_height, 2)
        pad_w0, remainder_w = divmod(width - resized_width, 2)
        padded = F.pad(resized, (pad_w0, pad_w0 + remainder_w, pad_h0, pad_h0 + remainder_h), value=0.0)
        img = padded.permute(0, 2, 3, 1)
    img = img * 2.0 - 1.0
    return img[0].numpy()


# --- the filters themselves in numpy ---------------------------------------------------------------------


def _pil_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of Pillow's BILINEAR resample (Resample.c, precompute_coeffs).

    Triangle filter of support 1 widened by the scale when shrinking
    (antialiasing), taps normalized to sum 1.
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    weights = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        x = np.arange(xmin, xmax)
        w = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
        weights[xx, xmin:xmax] = w / w.sum()
    return weights


def _torch_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear, align_corners=False: two taps at src = (i + 0.5) * scale - 0.5."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), i1), frac)
    return weights


def _separable(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Apply (out_h, in_h) and (out_w, in_w) weights to a float (H, W, 3) image."""
    image = image.astype(np.float64)
    return np.stack([rows @ image[..., c] @ cols.T for c in range(image.shape[2])], axis=-1)


def _numpy_letterbox(image: np.ndarray, weights, pad: float) -> np.ndarray:
    h, w = image.shape[:2]
    top, rows, left, cols = SIZES[(h, w)]
    out = np.full((224, 224, 3), pad)
    if (rows, cols) == (h, w):
        out[top : top + rows, left : left + cols] = image
    else:
        out[top : top + rows, left : left + cols] = _separable(image, weights(h, rows), weights(w, cols))
    return out


# --- openpi ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SIZES))
def test_openpi_matches_openpi_client(shape):
    frame = _frame(*shape)
    out = resize_with_pad(frame, 224, 224, method="openpi")
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, _openpi_reference(frame, 224, 224))


@pytest.mark.parametrize("shape", list(SIZES))
def test_openpi_is_pillows_antialiased_triangle_filter(shape):
    frame = _frame(*shape, seed=1)
    out = resize_with_pad(frame, 224, 224, method="openpi").astype(np.float64)
    expected = _numpy_letterbox(frame, _pil_bilinear_weights, 0.0)
    # Pillow works in fixed point and rounds between its two passes: at most one level off.
    assert np.abs(out - expected).max() <= 1.0


# --- LeRobot --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SIZES))
def test_lerobot_model_range_matches_lerobot_pipeline(shape):
    frame = _frame(*shape)
    batch, mask = prepare_images(
        {"base_0_rgb": frame}, ["base_0_rgb"], 224, method="lerobot", model_range=True
    )
    assert batch.dtype == np.float32 and batch.shape == (1, 224, 224, 3) and mask.tolist() == [True]
    np.testing.assert_allclose(batch[0], _lerobot_reference(frame, 224, 224), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", list(SIZES))
def test_lerobot_is_pixel_centre_bilinear_without_antialiasing(shape):
    frame = _frame(*shape, seed=2)
    batch, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], 224, method="lerobot", model_range=True)
    expected = _numpy_letterbox(frame.astype(np.float64) / 255.0, _torch_bilinear_weights, 0.0) * 2.0 - 1.0
    # torch computes the source coordinates in float32: a few 1e-5 off, far below a level (7.8e-3 here).
    np.testing.assert_allclose(batch[0], expected, rtol=0, atol=2.5e-4)


@pytest.mark.parametrize("shape", list(SIZES))
def test_lerobot_uint8_is_the_float_result_rounded(shape):
    frame = _frame(*shape, seed=3)
    out = resize_with_pad(frame, 224, 224, method="lerobot")
    assert out.dtype == np.uint8
    unit = (_lerobot_reference(frame, 224, 224).astype(np.float64) + 1.0) / 2.0
    # Rounded to the nearest level: never more than half a level from LeRobot's float.
    assert np.abs(out / 255.0 - unit).max() <= 0.5 * LEVEL + 1e-6
    # ... so what the engines make of it (x / 255 * 2 - 1) is within one level (2/255 in [-1, 1]).
    batch, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], 224, method="lerobot")
    assert np.abs(to_model_range(batch[0]) - (unit * 2.0 - 1.0)).max() <= 2.0 * LEVEL


# Up and down, odd and degenerate: (frame height, width, target height, width).
EXACT_SIZES = [
    (480, 640, 224, 224), (720, 1280, 224, 224), (120, 160, 224, 224), (201, 333, 224, 224),
    (333, 201, 224, 224), (7, 13, 224, 224), (481, 641, 96, 160), (1, 1000, 224, 224), (300, 200, 50, 300),
]


def _channels_first_resize(unit: np.ndarray, h: int, w: int) -> np.ndarray:
    """The earlier implementation: a contiguous channels-first copy, as LeRobot's batch is, into torch."""
    tensor = torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1))).unsqueeze(0)
    out = F.interpolate(tensor, size=(h, w), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _channels_first_letterbox(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """LeRobot's letterbox of a uint8 frame in [0, 1], resized channels-first."""
    unit = frame.astype(np.float32) / np.float32(255.0)
    ratio = max(frame.shape[1] / width, frame.shape[0] / height)
    rows, cols = max(1, int(frame.shape[0] / ratio)), max(1, int(frame.shape[1] / ratio))
    if (rows, cols) != frame.shape[:2]:
        unit = np.clip(_channels_first_resize(unit, rows, cols), 0.0, 1.0)
    out = np.zeros((height, width, 3), np.float32)
    top, left = (height - rows) // 2, (width - cols) // 2
    out[top : top + rows, left : left + cols] = unit
    return out


@pytest.mark.parametrize("size", EXACT_SIZES, ids=lambda s: "%dx%d-%dx%d" % s)
def test_lerobot_resize_is_bit_identical_to_the_channels_first_batch(size):
    # The channels-last view (no copy) must give exactly the bits of the contiguous channels-first batch.
    h, w, height, width = size
    frame = _frame(h, w, seed=h + w, low=0)
    expected = _channels_first_letterbox(frame, height, width)
    out = resize_with_pad(frame, height, width, method="lerobot")
    np.testing.assert_array_equal(out, np.rint(expected * np.float32(255.0)).astype(np.uint8))
    if height == width:
        batch, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], height, "lerobot", model_range=True)
        np.testing.assert_array_equal(batch[0], expected * np.float32(2.0) - np.float32(1.0))
    # Float frames in [-1, 1] take the same filter.
    unit = to_model_range(frame)
    ratio = max(w / width, h / height)
    rows, cols = max(1, int(h / ratio)), max(1, int(w / ratio))
    resized = resize_with_pad(unit, height, width, method="lerobot")
    top, left = (height - rows) // 2, (width - cols) // 2
    inside = unit if (rows, cols) == (h, w) else np.clip(_channels_first_resize(unit, rows, cols), -1.0, 1.0)
    np.testing.assert_array_equal(resized[top : top + rows, left : left + cols], inside)


@pytest.mark.parametrize("shape", list(SIZES))
def test_lerobot_model_range_is_bit_identical_to_lerobot(shape):
    frame = _frame(*shape, seed=7)
    batch, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], 224, method="lerobot", model_range=True)
    np.testing.assert_array_equal(batch[0], _lerobot_reference(frame, 224, 224))


def test_lerobot_resize_feeds_torch_a_channels_last_view_without_copying(monkeypatch):
    seen = []
    interpolate = F.interpolate

    def spy(tensor, *args, **kwargs):
        seen.append(tensor)
        return interpolate(tensor, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    frame = to_model_range(_frame(480, 640))
    resize_with_pad(frame, 224, 224, method="lerobot")
    assert len(seen) == 1
    tensor = seen[0]
    assert tensor.shape == (1, 3, 480, 640)
    assert tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
    assert tensor.data_ptr() == frame.ctypes.data  # the frame's own memory: no channels-first copy


# --- both -----------------------------------------------------------------------------------------------

# The pi0-family methods centre the frame; "smolvla" puts it in the corner (test_smolvla_pads_left_and_top).
CENTRED_METHODS = ("openpi", "lerobot")


@pytest.mark.parametrize("method", CENTRED_METHODS)
@pytest.mark.parametrize("shape", list(SIZES))
def test_padding_placement_is_exact(method, shape):
    top, rows, left, cols = SIZES[shape]
    frame = _frame(*shape, seed=4, low=10)
    inside = np.zeros((224, 224), bool)
    inside[top : top + rows, left : left + cols] = True

    out = resize_with_pad(frame, 224, 224, method=method)
    assert (out[~inside] == 0).all()
    assert (out[inside] >= 10).all()  # content keeps the frame's minimum: no stray black row or column

    batch, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], 224, method=method, model_range=True)
    assert (batch[0][~inside] == -1.0).all()
    assert (batch[0][inside] >= 10 / 255 * 2 - 1 - 1e-6).all()


@pytest.mark.parametrize("method", CENTRED_METHODS)
def test_non_square_target_and_odd_padding(method):
    # 201x333 -> 100x150: ratio = max(333/150, 201/100) = 2.22 -> 90 rows (int(90.5)) x 150;
    # 10 rows of padding, 5 + 5. 333x201 -> 151x100: ratio = max(201/100, 333/151) = 2.205 -> 151 x 91,
    # 9 columns of padding, 4 left, 5 right.
    out = resize_with_pad(_frame(201, 333), 100, 150, method=method)
    assert out.shape == (100, 150, 3)
    assert (out[:5] == 0).all() and (out[95:] == 0).all() and (out[5:95] >= 10).all()
    out = resize_with_pad(_frame(333, 201), 151, 100, method=method)
    assert out.shape == (151, 100, 3)
    assert (out[:, :4] == 0).all() and (out[:, 95:] == 0).all() and (out[:, 4:95] >= 10).all()


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_already_model_size_is_unchanged(method):
    frame = _frame(224, 224)
    assert resize_with_pad(frame, 224, 224, method=method) is frame
    batch, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], 224, method=method, model_range=True)
    np.testing.assert_array_equal(batch[0], to_model_range(frame))


def test_openpi_model_range_is_scaled_after_resizing():
    frame = _frame(480, 640)
    images = {"base_0_rgb": frame, "right_wrist_0_rgb": _frame(120, 160, seed=9)}
    uint8_batch, mask = prepare_images(images, method="openpi")
    float_batch, float_mask = prepare_images(images, method="openpi", model_range=True)
    np.testing.assert_array_equal(float_batch, to_model_range(uint8_batch))  # bit for bit
    np.testing.assert_array_equal(mask, [True, False, True])
    np.testing.assert_array_equal(float_mask, mask)
    assert (float_batch[1] == -1.0).all()  # a missing camera is black


@pytest.mark.parametrize("method", CENTRED_METHODS)
def test_float_input_uses_the_same_filter(method):
    # A float32 frame in [-1, 1] goes through the same filter, clipped and padded with -1.
    frame = _frame(480, 640, seed=5)
    out = resize_with_pad(to_model_range(frame), 224, 224, method=method)
    assert out.dtype == np.float32
    expected, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], 224, method=method, model_range=True)
    assert np.abs(out - expected[0]).max() <= 2.0 * LEVEL
    assert (out[:28] == -1.0).all() and (out[196:] == -1.0).all()


def test_default_method_is_openpi():
    assert DEFAULT_RESIZE_METHOD == "openpi" and RESIZE_METHODS == ("openpi", "lerobot", "smolvla")
    frame = _frame(480, 640)
    np.testing.assert_array_equal(resize_with_pad(frame), resize_with_pad(frame, method="openpi"))
    np.testing.assert_array_equal(prepare_images({"base_0_rgb": frame})[0],
                                  prepare_images({"base_0_rgb": frame}, method="openpi")[0])


def _stripes(h: int = 480, w: int = 640) -> np.ndarray:
    """One-pixel black / white vertical stripes with a slow horizontal ramp in green."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, 1::2, 0] = 255
    frame[..., 1] = (np.arange(w) * 255 // (w - 1)).astype(np.uint8)[None, :]
    frame[..., 2] = 128
    return frame


def test_methods_differ_on_fine_detail_not_on_smooth_content():
    frame = _stripes()
    a, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], method="openpi", model_range=True)
    b, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], method="lerobot", model_range=True)
    red_a, red_b = a[0, 28:196, :, 0], b[0, 28:196, :, 0]
    # Pillow averages the stripes to grey; two-tap bilinear samples them and aliases.
    assert np.abs(red_a - red_b).mean() > 0.2
    assert red_a.std() < red_b.std() / 2
    # The smooth channels agree to within about a level: the difference is the antialiasing, not the geometry.
    assert np.abs(a[0, ..., 1:] - b[0, ..., 1:]).max() <= 3.0 * LEVEL


def test_methods_differ_on_a_noisy_camera_frame():
    frame = _frame(480, 640, seed=6, low=0)
    a, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], method="openpi", model_range=True)
    b, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], method="lerobot", model_range=True)
    assert np.abs(a - b).mean() > 0.1


@pytest.mark.parametrize("bad", ["opencv", "OpenPI", "auto", "", None])
def test_unknown_method_is_a_config_error(bad):
    frame = _frame(10, 10)
    with pytest.raises(ConfigError, match=re.escape("'openpi', 'lerobot'")) as err:
        resize_with_pad(frame, 4, 4, method=bad)
    assert err.value.parameter == "policy.image_resize"
    with pytest.raises(ConfigError, match="policy.image_resize"):
        prepare_images({"base_0_rgb": frame}, method=bad)
    with pytest.raises(ConfigError, match="policy.image_resize"):
        prepare_images({}, method=bad)  # checked even with no camera


def test_smolvla_pads_left_and_top():
    # LeRobot's SmolVLA: the lerobot filter, the frame in the corner (480x640 -> 384x512).
    frame = _frame(480, 640, seed=7)
    smol, _ = prepare_images({"base_0_rgb": frame}, ["base_0_rgb"], 512, method="smolvla", model_range=True)
    centred, _ = prepare_images(
        {"base_0_rgb": frame}, ["base_0_rgb"], 512, method="lerobot", model_range=True
    )
    assert (smol[0, :128] == -1.0).all()
    np.testing.assert_array_equal(smol[0, 128:], centred[0, 64:448])
    tall = _frame(96, 70, seed=8)  # 96x70 -> 512x373: 139 columns of padding on the left
    out = resize_with_pad(tall, 512, 512, method="smolvla")
    assert out.dtype == np.uint8 and (out[:, :139] == 0).all() and out[:, 139:].any()
