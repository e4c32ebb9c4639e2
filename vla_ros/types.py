"""The two records that cross every layer: what the robot saw, what the policy proposes."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math

import numpy as np

# Camera keys in the order the model consumes them (docs/preprocessing.md, "Cameras").
CAMERA_KEYS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class RawObservation:
    """One synchronised observation in robot units, before any model preprocessing.

    images: camera key -> uint8 RGB array (H, W, 3) of any size; a key that is
        absent means the camera is missing (the model masks it).
    state: float32 joint positions (D,) in the robot's own order and units.
    prompt: the language instruction.
    timestamp: seconds (ROS time) at which the observation was taken; action
        chunks are indexed from it.
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    prompt: str
    timestamp: float = 0.0


@dataclasses.dataclass(frozen=True)
class ActionChunk:
    """A chunk of future actions in robot units.

    actions: float32 (H, D); action k is meant for time timestamp + k * dt,
        where dt is the robot's control period of the training data.
    timestamp: the observation time the chunk was computed from.
    timings: stage name -> seconds (preprocess, prefix, suffix or decode, postprocess, total).
    tokens: decode models (pi0-FAST): the generated token ids, the stop token included.
    samples: policy.num_samples > 1: all K chunks (K, H, D) in robot units
        (`actions` is their aggregate, policy.sample_aggregate).
    spread: with samples, their RMS distance from their mean in normalized
        units, an uncertainty signal.
    """

    actions: np.ndarray
    timestamp: float
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)
    tokens: np.ndarray | None = None
    samples: np.ndarray | None = None
    spread: float | None = None


# Real-Time Chunking (docs/rtc.md): the soft-mask schedules, the two loops, the two Jacobians.
RTC_SCHEDULES: tuple[str, ...] = ("zeros", "ones", "linear", "exp")
RTC_MODES: tuple[str, ...] = ("guided", "trained")
RTC_JACOBIANS: tuple[str, ...] = ("identity", "vjp")


@dataclasses.dataclass(frozen=True)
class RTCSettings:
    """How a chunk is guided toward the previous one (defaults: LeRobot 0.6.1's RTCConfig).

    execution_horizon: end of the guided region, in chunk rows (LeRobot's
        `execution_horizon`, the paper's H - s); rows from there on are free.
    schedule: the soft mask between the first `delay` rows (weight 1) and
        the end of the guided region: "zeros", "ones", "linear" or "exp".
    max_guidance_weight: clip of the per-step guidance weight (>= 0; 0 is
        the unguided loop, exactly).
    mode: "guided" (the paper's / LeRobot's guidance at every Euler step)
        or "trained" (training-time RTC: the first `delay` rows clamped to
        the previous chunk, marked clean; for checkpoints trained that way).
    jacobian: "identity" (LeRobot 0.6.1: the estimate's Jacobian taken as
        the identity, no backward pass) or "vjp" (the paper: a true
        vector-Jacobian product through the denoiser; reference engine only).
    """

    execution_horizon: int = 10
    schedule: str = "linear"
    max_guidance_weight: float = 10.0
    mode: str = "guided"
    jacobian: str = "identity"

    def __post_init__(self) -> None:
        from vla_ros.errors import ConfigError

        if isinstance(self.execution_horizon, bool) or not isinstance(self.execution_horizon, int) \
                or self.execution_horizon < 0:
            raise ConfigError("rtc.execution_horizon", f"expected a whole number of rows >= 0, "
                                                       f"got {self.execution_horizon!r}")
        choices = (("schedule", self.schedule, RTC_SCHEDULES), ("mode", self.mode, RTC_MODES),
                   ("jacobian", self.jacobian, RTC_JACOBIANS))
        for name, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"rtc.{name}",
                                  f"unknown value {value!r}; choose one of {', '.join(allowed)}")
        weight = self.max_guidance_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError("rtc.max_guidance_weight", f"expected a finite number >= 0, got {weight!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class ChunkGuidance:
    """Real-Time Chunking inputs for one inference.

    previous: float32 (K, D), K >= 1: the actions the robot will execute from
        the current plan, in the units the policy returns (robot units, the
        policy's own action space), shifted so that row k is the action for
        the new observation's time + k * dt. Rows past K are not guided
        (the guided region ends at min(execution_horizon, K)).
    delay: d, how many actions of the new chunk the robot still takes from
        the current plan (the inference delay in actions, >= 0).
    settings: schedule, horizon, weight, mode, Jacobian.
    """

    previous: np.ndarray
    delay: int
    settings: RTCSettings = RTCSettings()

    def __post_init__(self) -> None:
        from vla_ros.errors import ObservationError

        previous = np.asarray(self.previous, dtype=np.float32)
        if previous.ndim != 2 or previous.shape[0] == 0 or previous.shape[1] == 0:
            raise ObservationError(
                f"the previous chunk must be a non-empty (K, D) array, got {previous.shape}")
        if not np.isfinite(previous).all():
            raise ObservationError("the previous chunk has NaN/inf actions")
        if isinstance(self.delay, bool) or not isinstance(self.delay, (int, np.integer)) or self.delay < 0:
            raise ObservationError(
                f"the inference delay must be a whole number of actions >= 0, got {self.delay!r}")
        object.__setattr__(self, "previous", previous)
        object.__setattr__(self, "delay", int(self.delay))
