"""Latest-only sensor buffers and the assembly of one synchronised observation.

Subscriber callbacks (any thread) write the newest camera frames, joint state
and instruction here; the inference loop calls `ObservationAssembler.assemble`
to get a RawObservation, or the reason it cannot have one right now. Nothing
here knows about ROS: stamps and `now` are plain float seconds on one clock
(the node's clock, so sim time works too).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
import threading
import types
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.types import CAMERA_KEYS, RawObservation

T = TypeVar("T")

JOINT_STATE = "joint_state"
MISSING_CAMERA_POLICIES = ("mask", "pause")


class Stamped(NamedTuple):
    # Not Generic: generic NamedTuples need Python 3.11 and the package supports 3.10.
    value: Any
    stamp: float  # header stamp, or receipt time when the header stamp was zero
    receipt_time: float


class LatestValue(Generic[T]):
    """Thread-safe holder of the newest (value, stamp, receipt_time).

    A zero (or negative / NaN) stamp means the publisher did not fill in its
    header; the receipt time stands in and `zero_stamps` counts it so the node
    can warn. A stamp older than the one held is an out-of-order message: it is
    rejected (update returns False) and counted in `out_of_order`, so a late
    frame can never replace a newer one. An equal stamp replaces the value.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Stamped | None = None
        self._zero_stamps = 0
        self._out_of_order = 0

    def update(self, value: T, stamp: float, receipt_time: float) -> bool:
        """Store `value`; return False (and store nothing) if it is out of order."""
        with self._lock:
            if not stamp > 0.0:
                stamp = receipt_time
                self._zero_stamps += 1
            if self._held is not None and stamp < self._held.stamp:
                self._out_of_order += 1
                return False
            self._held = Stamped(value, float(stamp), float(receipt_time))
            return True

    def get(self) -> Stamped | None:
        with self._lock:
            return self._held

    def reset(self) -> None:
        """Forget the value and the counters (e.g. after the clock jumped back)."""
        with self._lock:
            self._held = None
            self._zero_stamps = 0
            self._out_of_order = 0

    @property
    def zero_stamps(self) -> int:
        with self._lock:
            return self._zero_stamps

    @property
    def out_of_order(self) -> int:
        with self._lock:
            return self._out_of_order


def _check_limit(value: object, parameter: str) -> float:
    """A positive number of seconds; .inf is allowed and disables the check."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(parameter, f"expected a positive number of seconds, got {value!r}")
    number = float(value)
    if math.isnan(number) or number <= 0.0:
        raise ConfigError(parameter, f"expected a positive number of seconds (.inf disables), got {value!r}")
    return number


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """When buffered inputs are recent and consistent enough to form an observation.

    camera_keys: the cameras the node subscribes to (subset of CAMERA_KEYS).
    max_staleness: seconds a camera frame may age (now - stamp) before it is
        stale; one number for all cameras, or a mapping with an entry for
        every camera key. Stored as a read-only mapping key -> seconds.
    max_skew: seconds allowed between the oldest and newest stamp of the
        cameras used in one observation.
    joint_max_staleness: seconds the joint state may age.
    missing_camera_policy: 'mask' leaves stale/missing cameras out (the
        model masks them) as long as one camera is fresh; 'pause' produces no
        observation while any camera is stale or missing.
    """

    camera_keys: tuple[str, ...] = CAMERA_KEYS
    max_staleness: float | Mapping[str, float] = 0.2
    max_skew: float = 0.05
    joint_max_staleness: float = 0.1
    missing_camera_policy: str = "mask"

    def __post_init__(self) -> None:
        keys = self.camera_keys
        if not isinstance(keys, (tuple, list)) or not all(isinstance(k, str) for k in keys):
            raise ConfigError("sync.camera_keys", f"expected a list of camera key strings, got {keys!r}")
        keys = tuple(keys)
        unknown = [k for k in keys if k not in CAMERA_KEYS]
        if unknown:
            raise ConfigError(
                "sync.camera_keys", f"unknown camera keys {unknown}; expected keys from {list(CAMERA_KEYS)}"
            )
        if len(set(keys)) != len(keys):
            raise ConfigError("sync.camera_keys", f"camera keys must be unique, got {list(keys)}")
        object.__setattr__(self, "camera_keys", keys)

        if isinstance(self.max_staleness, Mapping):
            extra = sorted(set(self.max_staleness) - set(keys))
            if extra:
                raise ConfigError(
                    "sync.max_staleness",
                    f"entries for unconfigured cameras {extra}; cameras are {list(keys)}",
                )
            absent = [k for k in keys if k not in self.max_staleness]
            if absent:
                raise ConfigError(
                    "sync.max_staleness",
                    f"no entry for cameras {absent}; give one per camera or a single number",
                )
            limits = {k: _check_limit(self.max_staleness[k], f"sync.max_staleness.{k}") for k in keys}
        else:
            scalar = _check_limit(self.max_staleness, "sync.max_staleness")
            limits = {k: scalar for k in keys}
        object.__setattr__(self, "max_staleness", types.MappingProxyType(limits))

        object.__setattr__(self, "max_skew", _check_limit(self.max_skew, "sync.max_skew"))
        object.__setattr__(
            self, "joint_max_staleness", _check_limit(self.joint_max_staleness, "sync.joint_max_staleness")
        )
        if self.missing_camera_policy not in MISSING_CAMERA_POLICIES:
            raise ConfigError(
                "sync.missing_camera_policy",
                f"expected one of {list(MISSING_CAMERA_POLICIES)}, got {self.missing_camera_policy!r}",
            )

    def staleness_limit(self, key: str) -> float:
        return self.max_staleness[key]  # type: ignore[index]


@dataclasses.dataclass(frozen=True)
class CameraStatus:
    """One camera's state at assembly time, for diagnostics.

    state: 'fresh' (used), 'stale' or 'missing' (never received), or 'masked'
        (stale or missing but left out under the 'mask' policy while the
        observation was still produced from other cameras).
    age: now - stamp in seconds; None if no frame was ever received.
    detail: '' when fresh, else e.g. 'stale (0.52 s > 0.20 s)' or
        'missing (never received)'.
    """

    state: str
    age: float | None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class AssemblyResult:
    """An observation, or None and the reason there is none."""

    observation: RawObservation | None
    reason: str
    cameras: Mapping[str, CameraStatus]
    joint_age: float | None

    @property
    def ok(self) -> bool:
        return self.observation is not None


def _stale_detail(age: float, limit: float) -> str:
    return f"stale ({age:.2f} s > {limit:.2f} s)"


class ObservationAssembler:
    """Buffers the latest inputs and assembles synchronised RawObservations.

    Counters: `rejected` (reason -> count: 'out_of_order:<source>',
    'empty_prompt', 'invalid_image:<key>', 'invalid_state') and `zero_stamps`
    (source -> count of stamps replaced by the receipt time), where source is
    a camera key or 'joint_state'.
    """

    def __init__(self, config: SyncConfig):
        self._config = config
        self._images: dict[str, LatestValue[np.ndarray]] = {k: LatestValue() for k in config.camera_keys}
        self._state: LatestValue[np.ndarray] = LatestValue()
        self._lock = threading.Lock()
        self._prompt: str | None = None
        self._rejected: dict[str, int] = {}

    @property
    def config(self) -> SyncConfig:
        return self._config

    @property
    def prompt(self) -> str | None:
        with self._lock:
            return self._prompt

    @property
    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    @property
    def zero_stamps(self) -> dict[str, int]:
        counts = {k: buf.zero_stamps for k, buf in self._images.items()}
        counts[JOINT_STATE] = self._state.zero_stamps
        return {k: n for k, n in counts.items() if n}

    def _count(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def reset(self, keep_prompt: bool = True) -> None:
        """Drop buffered frames, joint state and counters.

        The prompt is kept by default: it is set by an operator, not streamed,
        and a reset after a clock jump must not make the robot forget its task.
        """
        for buf in self._images.values():
            buf.reset()
        self._state.reset()
        with self._lock:
            self._rejected.clear()
            if not keep_prompt:
                self._prompt = None

    def update_image(self, key: str, rgb: np.ndarray, stamp: float, receipt_time: float) -> bool:
        """Buffer a uint8 (H, W, 3) RGB frame; False if it was out of order.

        The buffer keeps a read-only view, not a copy: the caller hands the
        array over. Read-only because the same frame can go into several
        observations, and an in-place edit downstream would corrupt them all.

        Raises:
            ObservationError: unknown camera key or not a non-empty uint8 (H, W, 3) array.
        """
        buf = self._images.get(key)
        if buf is None:
            raise ObservationError(
                f"camera '{key}' is not configured; cameras are {list(self._config.camera_keys)}"
            )
        if (
            not isinstance(rgb, np.ndarray)
            or rgb.dtype != np.uint8
            or rgb.ndim != 3
            or rgb.shape[2] != 3
            or rgb.shape[0] == 0
            or rgb.shape[1] == 0
        ):
            self._count(f"invalid_image:{key}")
            shape = getattr(rgb, "shape", None)
            raise ObservationError(
                f"camera '{key}': expected a non-empty uint8 (H, W, 3) RGB array, "
                f"got {type(rgb).__name__} {getattr(rgb, 'dtype', '')} {shape}"
            )
        frame = rgb.view()
        frame.flags.writeable = False
        if not buf.update(frame, stamp, receipt_time):
            self._count(f"out_of_order:{key}")
            return False
        return True

    def update_state(self, positions: np.ndarray, stamp: float, receipt_time: float) -> bool:
        """Buffer joint positions (D,); False if out of order.

        Raises:
            ObservationError: not a non-empty 1-D array of finite numbers.
        """
        try:
            state = np.array(positions, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as exc:
            self._count("invalid_state")
            raise ObservationError(f"joint state: expected a 1-D array of numbers: {exc}") from exc
        if state.ndim != 1 or state.size == 0 or not np.all(np.isfinite(state)):
            self._count("invalid_state")
            raise ObservationError(
                f"joint state: expected a non-empty 1-D array of finite numbers, got {state!r}"
            )
        if not self._state.update(state, stamp, receipt_time):
            self._count(f"out_of_order:{JOINT_STATE}")
            return False
        return True

    def update_prompt(self, text: str) -> bool:
        """Set the instruction; empty or whitespace-only text is rejected (the old one stays)."""
        if not isinstance(text, str) or not text.strip():
            self._count("empty_prompt")
            return False
        with self._lock:
            self._prompt = text.strip()
        return True

    def _camera_statuses(self, now: float) -> tuple[dict[str, Stamped], dict[str, CameraStatus]]:
        fresh: dict[str, Stamped] = {}
        statuses: dict[str, CameraStatus] = {}
        for key, buf in self._images.items():
            held = buf.get()
            if held is None:
                statuses[key] = CameraStatus("missing", None, "missing (never received)")
                continue
            age = now - held.stamp
            limit = self._config.staleness_limit(key)
            if age > limit:
                statuses[key] = CameraStatus("stale", age, _stale_detail(age, limit))
            else:
                statuses[key] = CameraStatus("fresh", age)
                fresh[key] = held
        return fresh, statuses

    def assemble(self, now: float) -> AssemblyResult:
        """Build an observation from the buffered inputs as of `now` (seconds).

        Checks, in order: prompt set, joint state present and fresh, cameras
        (per policy), skew among the cameras used. The observation's timestamp
        is the newest stamp among the cameras used, or the joint state stamp
        when no camera is configured; its state is float32.
        """
        config = self._config
        fresh, statuses = self._camera_statuses(now)
        unavailable = [k for k in config.camera_keys if k not in fresh]
        if config.missing_camera_policy == "mask" and fresh:
            for key in unavailable:
                statuses[key] = dataclasses.replace(statuses[key], state="masked")

        state = self._state.get()
        joint_age = None if state is None else now - state.stamp
        prompt = self.prompt

        def fail(reason: str) -> AssemblyResult:
            return AssemblyResult(None, reason, types.MappingProxyType(statuses), joint_age)

        if prompt is None:
            return fail("no prompt yet")
        if state is None:
            return fail("no joint state yet")
        if joint_age is not None and joint_age > config.joint_max_staleness:
            return fail(f"joint state {_stale_detail(joint_age, config.joint_max_staleness)}")
        if unavailable and (config.missing_camera_policy == "pause" or not fresh):
            details = [f"camera {k} {statuses[k].detail}" for k in unavailable]
            if not fresh:
                return fail("all cameras unavailable: " + "; ".join(details))
            return fail(details[0])

        stamps = [held.stamp for held in fresh.values()]
        if stamps:
            skew = max(stamps) - min(stamps)
            if skew > config.max_skew:
                return fail(f"camera skew {skew:.2f} s > {config.max_skew:.2f} s")
            timestamp = max(stamps)
        else:
            timestamp = state.stamp

        observation = RawObservation(
            images={k: held.value for k, held in fresh.items()},
            state=state.value.astype(np.float32),
            prompt=prompt,
            timestamp=timestamp,
        )
        return AssemblyResult(observation, "", types.MappingProxyType(statuses), joint_age)
