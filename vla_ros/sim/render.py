"""OpenCV rendering of the planar arm scene: a top view and a wrist-like view.

Both cameras look straight down at the table (orthographic), so a camera is a
2-D view transform: the world point at the image centre, the world direction
that points up in the image, and a scale in pixels per metre. The top camera
is fixed over the workspace with the arm's forward (+x) up; the wrist camera
rides on the end effector, centred a little ahead of it and turning with its
heading, so the target grows and drifts to the centre as the gripper reaches
it. The scene is a table with a 10 cm grid (texture for the wrist view), the
target ball, and the arm drawn over it (links, joints, the two fingers whose
gap follows the gripper joint).

`View.project` is the projection the renderer uses: tests check that the
target's pixels are where it says.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

TABLE = (205, 195, 175)
GRID = (185, 175, 155)
BASE = (70, 70, 80)
LINKS = ((90, 90, 105), (110, 110, 125), (130, 130, 145))
JOINT = (50, 50, 60)
FINGER = (40, 40, 45)
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel positions
_ONE = 1 << _SHIFT


@dataclasses.dataclass(frozen=True)
class View:
    """An orthographic top-down camera: image centre, heading (world 'up'), pixels per metre, size."""

    width: int
    height: int
    center: tuple[float, float]
    heading: float
    scale: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """World (N, 2) or (2,) metres -> pixel (u, v) floats.

        u right, v down, (0, 0) the centre of the top-left pixel.
        """
        p = np.asarray(points, dtype=np.float64) - np.asarray(self.center)
        up = np.array([math.cos(self.heading), math.sin(self.heading)])
        right = np.array([math.sin(self.heading), -math.cos(self.heading)])
        u = (self.width - 1) / 2.0 + self.scale * (p @ right)
        v = (self.height - 1) / 2.0 - self.scale * (p @ up)
        return np.stack([u, v], axis=-1)


def top_view(width: int, height: int, base: tuple[float, float], reach: float, extent: float) -> View:
    """The fixed top camera: `extent` metres across the image width, the base near the bottom."""
    scale = width / extent
    # put the base 12 % of the height above the bottom edge, the arm pointing up (+x)
    center_x = base[0] - (0.12 * height - height / 2.0) / scale
    return View(width, height, (center_x, base[1]), 0.0, scale)


def wrist_view(width: int, height: int, ee_pose: np.ndarray, extent: float) -> View:
    """The wrist camera: centred `extent / 3` ahead of the end effector, turning with its heading."""
    x, y, phi = (float(v) for v in ee_pose)
    ahead = extent / 3.0
    return View(width, height, (x + ahead * math.cos(phi), y + ahead * math.sin(phi)), phi, width / extent)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * _ONE).astype(np.int32)


def render(
    view: View,
    joint_points: np.ndarray,
    ee_heading: float,
    gripper_opening: float,
    target: tuple[float, float] | None,
    target_radius: float,
    target_rgb: tuple[int, int, int],
    link_width: float = 0.035,
) -> np.ndarray:
    """Draw the scene into a uint8 (H, W, 3) RGB image.

    joint_points: (n + 1, 2) base, joints and end effector (PlanarArm.joint_points).
    gripper_opening: 0 (closed) .. 1 (open).
    """
    image = np.empty((view.height, view.width, 3), np.uint8)
    image[...] = TABLE
    # grid lines every 10 cm, over the part of the table in view (projected in one go)
    half = 0.5 * max(view.width, view.height) / view.scale * 1.5
    cx, cy = view.center
    ends = []
    for k in range(math.floor((cx - half) / 0.1), math.ceil((cx + half) / 0.1) + 1):
        ends += [(0.1 * k, cy - half), (0.1 * k, cy + half)]
    for k in range(math.floor((cy - half) / 0.1), math.ceil((cy + half) / 0.1) + 1):
        ends += [(cx - half, 0.1 * k), (cx + half, 0.1 * k)]
    pixels = _fixed(view.project(np.asarray(ends))).tolist()
    for a, b in zip(pixels[0::2], pixels[1::2]):
        cv2.line(image, tuple(a), tuple(b), GRID, 1, cv2.LINE_AA, _SHIFT)
    if target is not None:
        center = _fixed(view.project(np.asarray(target)))
        radius = int(round(target_radius * view.scale * _ONE))
        cv2.circle(image, (int(center[0]), int(center[1])), radius, target_rgb, -1, cv2.LINE_AA, _SHIFT)
    pixels = view.project(joint_points)
    width_px = max(1, int(round(link_width * view.scale)))
    base = _fixed(pixels[0])
    cv2.circle(image, (int(base[0]), int(base[1])), int(1.2 * width_px * _ONE), BASE, -1, cv2.LINE_AA, _SHIFT)
    for i in range(len(pixels) - 1):
        a, b = _fixed(pixels[i]), _fixed(pixels[i + 1])
        cv2.line(image, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), LINKS[i % len(LINKS)], width_px,
                 cv2.LINE_AA, _SHIFT)
    for p in pixels[:-1]:
        c = _fixed(p)
        cv2.circle(image, (int(c[0]), int(c[1])), int(0.35 * width_px * _ONE), JOINT, -1, cv2.LINE_AA, _SHIFT)
    # two fingers at the tip, 4 cm long, their gap 1..7 cm with the gripper
    tip = np.asarray(joint_points[-1], dtype=np.float64)
    forward = np.array([math.cos(ee_heading), math.sin(ee_heading)])
    side = np.array([-forward[1], forward[0]])
    gap = 0.01 + 0.06 * min(1.0, max(0.0, float(gripper_opening)))
    finger_px = max(1, width_px // 3)
    for sign in (1.0, -1.0):
        root = tip + sign * 0.5 * gap * side
        a, b = _fixed(view.project(np.stack([root, root + 0.04 * forward])))
        cv2.line(image, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), FINGER, finger_px, cv2.LINE_AA,
                 _SHIFT)
    a, b = _fixed(view.project(np.stack([tip + 0.5 * gap * side, tip - 0.5 * gap * side])))
    cv2.line(image, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), FINGER, finger_px, cv2.LINE_AA, _SHIFT)
    return image
