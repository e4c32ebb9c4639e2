"""Last line of defence between a policy's proposal and the joint commands.

A learned policy can output anything: NaN after a numerical blow-up, a
position outside the joint range, or a jump to a chunk that disagrees with
the previous one. ``SafetyFilter`` bounds every command before it reaches
the controller, using only per-joint limits and the previous command, so it
costs a handful of numpy calls per point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math

import numpy as np

from vla_ros.errors import ConfigError

# Constraint kinds, in the order the filter applies them. CONFLICT is not a
# clamp of its own: it marks joints where the distance bound could not be met
# (or the measured position lay outside the position limits), so the command
# moved toward safety instead, and diagnostics must say so.
NON_FINITE = "non_finite"
POSITION = "position"
VELOCITY = "velocity"
DISTANCE = "distance"
CONFLICT = "conflict"
CONSTRAINT_KINDS: tuple[str, ...] = (NON_FINITE, POSITION, VELOCITY, DISTANCE, CONFLICT)


def _float_tuple(parameter: str, values: Sequence[float], size: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(parameter, f"must be a list of {size} numbers, got {values!r}") from None
    if len(out) != size:
        raise ConfigError(parameter, f"must have one value per joint ({size}), got {len(out)}")
    for i, v in enumerate(out):
        if math.isnan(v):
            raise ConfigError(f"{parameter}[{i}]", "must be a number, got NaN")
    return out


@dataclasses.dataclass(frozen=True)
class JointLimits:
    """Per-joint bounds, in the joint order of the commands.

    joint_names: the controller's joints, in command order.
    lower, upper: position range (rad or m); -inf / inf for continuous joints.
    max_velocity: largest speed between consecutive commands (rad/s or m/s),
        > 0; inf disables.
    max_distance_from_measured: largest gap between a command and the
        measured position, per joint or one scalar for all, > 0; inf (the
        default) disables. Keeps commands from running away from a robot that
        is blocked or lagging.
    """

    joint_names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    max_velocity: tuple[float, ...]
    max_distance_from_measured: float | tuple[float, ...] = math.inf

    def __post_init__(self) -> None:
        names = self.joint_names
        if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
            raise ConfigError("limits.joint_names", f"must be a non-empty list of names, got {names!r}")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise ConfigError(f"limits.joint_names[{i}]", f"must be a non-empty string, got {name!r}")
        if len(set(names)) != len(names):
            raise ConfigError("limits.joint_names", f"names must be unique, got {list(names)}")
        size = len(names)
        lower = _float_tuple("limits.lower", self.lower, size)
        upper = _float_tuple("limits.upper", self.upper, size)
        for i, (lo, hi) in enumerate(zip(lower, upper)):
            if not lo < hi:
                raise ConfigError(
                    f"limits.lower[{i}]",
                    f"must be < limits.upper[{i}] for joint {names[i]!r}, got {lo} >= {hi}",
                )
        velocity = _float_tuple("limits.max_velocity", self.max_velocity, size)
        for i, v in enumerate(velocity):
            if not v > 0.0:
                raise ConfigError(
                    f"limits.max_velocity[{i}]", f"must be > 0 for joint {names[i]!r}, got {v}"
                )
        distance_in = self.max_distance_from_measured
        if np.ndim(distance_in) == 0:
            distance_in = (distance_in,) * size
        distance = _float_tuple("limits.max_distance_from_measured", distance_in, size)
        for i, d in enumerate(distance):
            if not d > 0.0:
                raise ConfigError(
                    f"limits.max_distance_from_measured[{i}]",
                    f"must be > 0 (inf disables) for joint {names[i]!r}, got {d}",
                )
        object.__setattr__(self, "joint_names", tuple(names))
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "max_velocity", velocity)
        object.__setattr__(self, "max_distance_from_measured", distance)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)


@dataclasses.dataclass(frozen=True)
class SafetyReport:
    """What the filter did, for diagnostics (built on request, not per tick).

    updates: committed updates since the last reset.
    counts: kind -> per-joint number of committed updates in which that
        constraint changed the command.
    last: kind -> names of the joints it changed in the last update.
    """

    updates: int
    counts: Mapping[str, tuple[int, ...]]
    last: Mapping[str, tuple[str, ...]]

    def total(self, kind: str) -> int:
        """Joint events of one kind, summed over joints."""
        return sum(self.counts[kind])

    @property
    def last_clamped(self) -> tuple[str, ...]:
        """Joints changed by any constraint in the last update, in joint order."""
        seen: list[str] = []
        for kind in CONSTRAINT_KINDS:
            seen.extend(n for n in self.last[kind] if n not in seen)
        return tuple(seen)


class SafetyFilter:
    """Bounds each command; stateful through the previous command.

    Guarantees, for every point it returns (``update``, ``filter_points`` and
    ``hold`` alike), whatever the measured state, the previous command and
    the policy output:

    * it is within ``max_velocity * dt`` of the previous command (hard);
    * it lies inside ``[lower, upper]`` (hard), with one exception: a robot
      found outside its limits before any command (the previous command is
      then the measured position) is stepped toward them at the velocity
      limit, never jumped, and reported as a ``conflict``; holds keep it
      where it is;
    * it is within ``max_distance_from_measured`` of the measured position
      when the two hard constraints allow that; when they do not (the robot
      lags far behind, was pushed away), the command moves toward the
      measured position as far as the hard constraints allow, and the joint
      is reported as a ``conflict``.

    Per joint, with ``p`` the previous command and ``s = max_velocity * dt``:

      1. any non-finite value in ``target`` -> target the previous command
         for ALL joints (one NaN means the policy output as a whole is not to
         be trusted);
      2. clamp to [lower, upper];
      3. clamp into F = [max(lower, p - s), min(upper, p + s)]; if that is
         empty (p outside the limits by more than s), F is the single point
         p +- s toward the limits;
      4. if ``measured`` is given: take the nearest point of the window
         W = [measured - d, measured + d] (joints measured as NaN are not
         checked), then clamp it into F again. If W and F overlap the result
         is in both; if they do not, it is the end of F nearest to the robot.

    The order is deliberate: position limits protect the hardware and the
    velocity limit the motion, so both hold for every published command; the
    distance bound only keeps commands from running away from a lagging robot
    and yields when it conflicts with them.

    The previous command is set by ``update``, ``hold`` and
    ``reset(position)``; without one, the measured position stands in for it
    (the robot is where a controller starts from).
    """

    def __init__(self, limits: JointLimits):
        self.limits = limits
        self._lower = np.array(limits.lower)
        self._upper = np.array(limits.upper)
        self._max_velocity = np.array(limits.max_velocity)
        self._max_distance = np.array(limits.max_distance_from_measured)
        self._check_distance = bool(np.isfinite(self._max_distance).any())
        self._command: np.ndarray | None = None
        self._counts = np.zeros((len(CONSTRAINT_KINDS), limits.num_joints), dtype=np.int64)
        self._last = np.zeros((len(CONSTRAINT_KINDS), limits.num_joints), dtype=bool)
        self._updates = 0

    @property
    def last_command(self) -> np.ndarray | None:
        """The previous command (read-only view), or None before any."""
        if self._command is None:
            return None
        view = self._command.view()
        view.flags.writeable = False
        return view

    def reset(self, position: np.ndarray | None = None) -> None:
        """Start over from ``position`` (or from nothing: the measured position); zero the report."""
        if position is not None:
            position = self._vector("position", position, finite=True)
        self._command = position
        self._counts[:] = 0
        self._last[:] = False
        self._updates = 0

    def hold(self, measured: np.ndarray | None) -> np.ndarray:
        """The position to hold at, committed as the previous command.

        The previous command when there is one; otherwise the measured
        position: a hold never moves the robot (joints outside their limits
        are reported as conflicts).
        """
        if self._command is not None:
            return self._command.copy()
        meas = None if measured is None else self._vector("measured", measured)
        fired = self._last
        fired[:] = False
        self._command = self._previous(meas, fired)
        self._counts += fired
        return self._command.copy()

    def previous(self, measured: np.ndarray | None) -> np.ndarray:
        """The position the next command steps from (a copy; nothing is committed)."""
        meas = None if measured is None else self._vector("measured", measured)
        return self._previous(meas).copy()

    def update(
        self, target: np.ndarray, measured: np.ndarray | None, dt: float
    ) -> np.ndarray:
        """Filter one command, commit it as the previous command and record the report."""
        dt = self._check_dt(dt)
        target = self._vector("target", target)
        meas = None if measured is None else self._vector("measured", measured)
        fired = self._last
        fired[:] = False
        previous = self._previous(meas, fired)
        out = self._step(target, previous, meas, dt, fired)
        self._counts += fired
        self._updates += 1
        self._command = out
        return out.copy()

    def filter_points(
        self, targets: np.ndarray, measured: np.ndarray | None, period: float
    ) -> np.ndarray:
        """Filter a look-ahead sequence (N, D), point i+1 stepping from point i.

        Starts from the previous command and commits nothing: the caller
        commits what it actually sends (``update`` or ``hold``). Every row
        obeys the same guarantees as ``update``.
        """
        period = self._check_dt(period)
        targets = np.asarray(targets, dtype=np.float64)
        size = self.limits.num_joints
        if targets.ndim != 2 or targets.shape[1] != size:
            raise ValueError(f"targets must have shape (N, {size}), got {targets.shape}")
        meas = None if measured is None else self._vector("measured", measured)
        previous = self._previous(meas)
        out = np.empty_like(targets)
        if targets.shape[0] == 0:
            return out
        # Position clamp and NaN detection vectorised; only the velocity and
        # distance steps depend on the previous point.
        bad_rows = ~np.isfinite(targets).all(axis=1)
        clamped = self._clip(targets)
        step = self._max_velocity * period
        window = self._window(meas)
        for i in range(targets.shape[0]):
            lo, hi = self._feasible(previous, step)
            x = np.minimum(np.maximum(previous if bad_rows[i] else clamped[i], lo), hi)
            if window is not None:
                x = np.minimum(np.maximum(np.fmin(np.fmax(x, window[0]), window[1]), lo), hi)
            out[i] = x
            previous = out[i]
        return out

    def report(self) -> SafetyReport:
        names = self.limits.joint_names
        counts = {
            kind: tuple(int(c) for c in self._counts[k]) for k, kind in enumerate(CONSTRAINT_KINDS)
        }
        last = {
            kind: tuple(n for n, f in zip(names, self._last[k]) if f)
            for k, kind in enumerate(CONSTRAINT_KINDS)
        }
        return SafetyReport(updates=self._updates, counts=counts, last=last)

    # -- internals -------------------------------------------------------

    def _clip(self, x: np.ndarray) -> np.ndarray:
        return np.minimum(np.maximum(x, self._lower), self._upper)

    def _feasible(self, previous: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F: the positions inside the limits within one velocity step of ``previous``.

        Where there are none (``previous`` outside the limits by more than a
        step), the one point a step from ``previous`` toward the limits.
        """
        down, up = previous - step, previous + step
        lo, hi = np.maximum(self._lower, down), np.minimum(self._upper, up)
        empty = lo > hi
        if empty.any():
            toward = np.where(previous > self._upper, down, up)
            lo, hi = np.where(empty, toward, lo), np.where(empty, toward, hi)
        return lo, hi

    def _window(self, measured: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        """W: measured +- max distance (NaN bounds where the measurement is NaN), or None."""
        if measured is None or not self._check_distance:
            return None
        return measured - self._max_distance, measured + self._max_distance

    def _step(
        self,
        target: np.ndarray,
        previous: np.ndarray,
        measured: np.ndarray | None,
        dt: float,
        fired: np.ndarray,
    ) -> np.ndarray:
        finite = np.isfinite(target)
        if not finite.all():
            fired[0] |= ~finite
            x = previous.copy()
        else:
            x = self._clip(target)
            fired[1] |= x != target
        lo, hi = self._feasible(previous, self._max_velocity * dt)
        y = np.minimum(np.maximum(x, lo), hi)
        fired[2] |= y != x
        window = self._window(measured)
        if window is not None:
            # fmax / fmin skip NaN bounds, i.e. joints measured as NaN.
            near = np.fmin(np.fmax(y, window[0]), window[1])
            z = np.minimum(np.maximum(near, lo), hi)
            fired[3] |= z != y
            fired[4] |= z != near
            y = z
        fired[4] |= (y < self._lower) | (y > self._upper)
        return y

    def _previous(self, measured: np.ndarray | None, fired: np.ndarray | None = None) -> np.ndarray:
        if self._command is not None:
            return self._command
        if measured is not None and np.isfinite(measured).all():
            if fired is not None:
                fired[4] |= (measured < self._lower) | (measured > self._upper)
            return measured
        raise ValueError(
            "SafetyFilter has no previous command: call reset(position) or pass a finite "
            "measured position before the first update"
        )

    def _vector(self, what: str, value: np.ndarray, finite: bool = False) -> np.ndarray:
        arr = np.array(value, dtype=np.float64).reshape(-1)
        if arr.shape[0] != self.limits.num_joints:
            raise ValueError(
                f"{what} must have {self.limits.num_joints} values (one per joint), got {arr.shape[0]}"
            )
        if finite and not np.isfinite(arr).all():
            raise ValueError(f"{what} must be finite, got {arr}")
        return arr

    @staticmethod
    def _check_dt(dt: float) -> float:
        dt = float(dt)
        if not math.isfinite(dt) or dt <= 0.0:
            raise ValueError(f"dt must be a finite number > 0, got {dt}")
        return dt
