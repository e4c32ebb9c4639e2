"""Robot-specific conversions between the robot's conventions and the policy's.

A transform runs on robot-unit data: `inputs` before normalization (joint
signs, gripper units, camera names), `outputs` after unnormalization, so the
statistics in a checkpoint always describe the policy-side convention.

ALOHA follows openpi's `adapt_to_pi` behaviour (docs/preprocessing.md, "ALOHA"): the
pi base models were trained on an internal runtime whose joint signs and
gripper units differ from the public ALOHA / Interbotix stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from vla_ros.errors import ConfigError, ObservationError

Images = Mapping[str, np.ndarray]


@runtime_checkable
class RobotTransform(Protocol):
    """Robot <-> policy conventions. Both methods take and return robot-side numpy arrays."""

    def inputs(self, state: np.ndarray, images: Images) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Robot state (D,) and camera frames -> policy-convention state and model camera keys."""
        ...

    def outputs(self, actions: np.ndarray) -> np.ndarray:
        """Policy-convention actions (..., D) -> robot convention."""
        ...

    def actions_to_pi(self, actions: np.ndarray) -> np.ndarray:
        """The inverse of `outputs`: robot-convention actions (..., D) -> policy convention."""
        ...


@dataclasses.dataclass(frozen=True)
class IdentityTransform:
    """For robots recorded in the policy's own conventions, with cameras already named by model key."""

    def inputs(self, state: np.ndarray, images: Images) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.asarray(state), dict(images)

    def outputs(self, actions: np.ndarray) -> np.ndarray:
        return np.asarray(actions)

    def actions_to_pi(self, actions: np.ndarray) -> np.ndarray:
        return np.asarray(actions)


# --- ALOHA -------------------------------------------------------------------

ALOHA_DIM = 14
ALOHA_GRIPPER_DIMS = (6, 13)
# Per arm: waist, shoulder, elbow, forearm roll, wrist angle, wrist rotate,
# gripper. The pi runtime counts shoulder and elbow the other way round.
ALOHA_JOINT_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1], dtype=np.float64)

# ALOHA reports the gripper as a normalized linear finger position between
# these Interbotix limits (metres; PUPPET_GRIPPER_POSITION_CLOSE / _OPEN).
_LINEAR_CLOSED = 0.01844
_LINEAR_OPEN = 0.05800
# Interbotix gripper linkage (metres): the servo horn and the connecting arm.
_HORN_RADIUS = 0.022
_ARM_LENGTH = 0.036
# The pi runtime normalizes the gripper servo angle (rad) over this range
# (encoder counts 2405..3110 of 4096 around a zero at 2048).
_PI_ANGLE_LOW = 0.5476
_PI_ANGLE_HIGH = 1.6296
# ALOHA's gripper joint command range (rad; PUPPET_GRIPPER_JOINT_CLOSE / _OPEN).
_JOINT_CLOSED = -0.6213
_JOINT_OPEN = 1.4910


def gripper_linear_to_angular(value: np.ndarray) -> np.ndarray:
    """ALOHA normalized linear gripper position -> pi-runtime normalized servo angle (state path)."""
    linear = np.asarray(value, dtype=np.float64) * (_LINEAR_OPEN - _LINEAR_CLOSED) + _LINEAR_CLOSED
    # Law of cosines on the horn/arm linkage gives sin(angle); clip because
    # positions outside the calibrated range would leave arcsin's domain.
    sine = (_HORN_RADIUS**2 + linear**2 - _ARM_LENGTH**2) / (2.0 * _HORN_RADIUS * linear)
    angle = np.arcsin(np.clip(sine, -1.0, 1.0))
    return (angle - _PI_ANGLE_LOW) / (_PI_ANGLE_HIGH - _PI_ANGLE_LOW)


def gripper_angular_to_linear(value: np.ndarray) -> np.ndarray:
    """Inverse of `gripper_linear_to_angular` (exact where that one did not clip)."""
    angle = np.asarray(value, dtype=np.float64) * (_PI_ANGLE_HIGH - _PI_ANGLE_LOW) + _PI_ANGLE_LOW
    sine = np.sin(angle)
    # Positive root of x^2 - 2 r sin(a) x + (r^2 - L^2) = 0; the other root is
    # negative because the arm is longer than the horn.
    linear = _HORN_RADIUS * sine + np.sqrt(_ARM_LENGTH**2 - (_HORN_RADIUS * np.cos(angle)) ** 2)
    return (linear - _LINEAR_CLOSED) / (_LINEAR_OPEN - _LINEAR_CLOSED)


def gripper_from_angular(value: np.ndarray) -> np.ndarray:
    """Policy gripper action -> ALOHA normalized gripper joint command (action path).

    The policy's gripper actions are servo angles offset by the pi runtime's
    range start; ALOHA wants the angle normalized over its joint limits.
    """
    angle = np.asarray(value, dtype=np.float64) + _PI_ANGLE_LOW
    return (angle - _JOINT_CLOSED) / (_JOINT_OPEN - _JOINT_CLOSED)


def gripper_to_angular_action(value: np.ndarray) -> np.ndarray:
    """Inverse of `gripper_from_angular`: ALOHA gripper command -> policy gripper action."""
    angle = np.asarray(value, dtype=np.float64) * (_JOINT_OPEN - _JOINT_CLOSED) + _JOINT_CLOSED
    return angle - _PI_ANGLE_LOW


def _same_float_dtype(result: np.ndarray, like: np.ndarray) -> np.ndarray:
    dtype = like.dtype if np.issubdtype(like.dtype, np.floating) else np.float32
    return result.astype(dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class AlohaTransform:
    """Bimanual ALOHA (14 dims: per arm 6 joints + gripper) <-> pi base models.

    adapt_to_pi: convert joint signs and gripper units between ALOHA and the pi
        runtime the base models were trained on (openpi's `adapt_to_pi`).
        Fine-tunes trained on raw ALOHA data (adapt_to_pi=False in their
        config) must set it False; cameras are renamed either way.

    Cameras: cam_high -> base_0_rgb, cam_left_wrist -> left_wrist_0_rgb,
    cam_right_wrist -> right_wrist_0_rgb; cam_low is dropped because the
    models have only these three camera slots.
    """

    adapt_to_pi: bool = True

    CAMERA_RENAMES: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "cam_high": "base_0_rgb",
            "cam_left_wrist": "left_wrist_0_rgb",
            "cam_right_wrist": "right_wrist_0_rgb",
        }
    )
    DROPPED_CAMERAS: ClassVar[tuple[str, ...]] = ("cam_low",)

    def __post_init__(self) -> None:
        if not isinstance(self.adapt_to_pi, (bool, np.bool_)):
            raise ConfigError("adapt_to_pi", f"got {self.adapt_to_pi!r}; expected true or false")

    def _rename_cameras(self, images: Images) -> dict[str, np.ndarray]:
        # Robot names (cam_high, ...) are renamed; model slots (base_0_rgb, ...), which the
        # node already keys its cameras by, pass through.
        model_keys = tuple(self.CAMERA_RENAMES.values())
        known = tuple(self.CAMERA_RENAMES) + self.DROPPED_CAMERAS + model_keys
        unknown = sorted(set(images) - set(known))
        if unknown:
            raise ObservationError(
                f"ALOHA camera key(s) {unknown} unknown; expected a subset of {list(known)}"
            )
        kept = [k for k in images if k not in self.DROPPED_CAMERAS]
        renamed = {self.CAMERA_RENAMES.get(k, k): images[k] for k in kept}
        if len(renamed) < len(kept):
            raise ObservationError(f"ALOHA cameras {sorted(images)} name the same model slot twice")
        return renamed

    def state_to_pi(self, state: np.ndarray) -> np.ndarray:
        """ALOHA state (..., 14) -> pi-runtime state."""
        state = np.asarray(state)
        if state.ndim == 0 or state.shape[-1] != ALOHA_DIM:
            raise ObservationError(f"ALOHA state: got shape {state.shape}; expected (..., {ALOHA_DIM})")
        if not self.adapt_to_pi:
            return state
        out = state.astype(np.float64) * ALOHA_JOINT_FLIP
        grippers = list(ALOHA_GRIPPER_DIMS)
        out[..., grippers] = gripper_linear_to_angular(out[..., grippers])
        return _same_float_dtype(out, state)

    def state_from_pi(self, state: np.ndarray) -> np.ndarray:
        """Inverse of `state_to_pi` (within the calibrated gripper range); for tests and replay."""
        state = np.asarray(state)
        if not self.adapt_to_pi:
            return state
        out = state.astype(np.float64)
        grippers = list(ALOHA_GRIPPER_DIMS)
        out[..., grippers] = gripper_angular_to_linear(out[..., grippers])
        return _same_float_dtype(out * ALOHA_JOINT_FLIP, state)

    def inputs(self, state: np.ndarray, images: Images) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.state_to_pi(state), self._rename_cameras(images)

    def outputs(self, actions: np.ndarray) -> np.ndarray:
        """Policy actions (..., D >= 14) -> ALOHA commands; dims past 14 pass unchanged."""
        return self._convert_actions(actions, gripper_from_angular)

    def actions_to_pi(self, actions: np.ndarray) -> np.ndarray:
        """Inverse of `outputs`: recorded ALOHA actions -> policy convention (for evaluation)."""
        return self._convert_actions(actions, gripper_to_angular_action)

    def _convert_actions(
        self, actions: np.ndarray, gripper_map: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        # The joint flips are their own inverse: both directions differ only in the gripper map.
        actions = np.asarray(actions)
        if actions.ndim == 0 or actions.shape[-1] < ALOHA_DIM:
            raise ObservationError(
                f"ALOHA actions: got shape {actions.shape}; expected (..., >= {ALOHA_DIM})"
            )
        if not self.adapt_to_pi:
            return actions
        out = actions.astype(np.float64)
        out[..., :ALOHA_DIM] *= ALOHA_JOINT_FLIP
        grippers = list(ALOHA_GRIPPER_DIMS)
        out[..., grippers] = gripper_map(out[..., grippers])
        return _same_float_dtype(out, actions)


_TRANSFORMS: dict[str, type] = {"identity": IdentityTransform, "aloha": AlohaTransform}
TRANSFORM_NAMES: tuple[str, ...] = tuple(_TRANSFORMS)


def make_transform(name: str, **options: Any) -> RobotTransform:
    """Build a robot transform by name ("identity", "aloha").

    `options` go to the transform's constructor (e.g. `adapt_to_pi=False` for
    "aloha").

    Raises:
        ConfigError('robot_transform', ...): unknown name or option.
    """
    if name not in _TRANSFORMS:
        raise ConfigError("robot_transform", f"got {name!r}; expected one of {list(TRANSFORM_NAMES)}")
    cls = _TRANSFORMS[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            "robot_transform", f"{name!r} takes options {sorted(allowed)}; got unknown {unknown}"
        )
    return cls(**options)
