"""Turn the aggregated actions into the points of one JointTrajectory.

Every control tick sends a short look-ahead trajectory (a few control
periods) rather than a single point, so that the controller can spline
between points and keeps moving smoothly if a tick is late. The layout
follows ros2_control's joint_trajectory_controller (docs/control.md,
"JointTrajectory points"): ``time_from_start`` strictly increasing, the first point one
control period ahead, velocities given (cubic splines instead of linear
interpolation with velocity jumps) and zero velocity at the last point
(Jazzy rejects trajectories that end moving).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from vla_ros.actions.aggregation import ChunkAggregator
from vla_ros.actions.limits import SafetyFilter
from vla_ros.errors import ConfigError
from vla_ros.types import ActionChunk


class ActionSpace(str, enum.Enum):
    """What the policy's actions mean.

    ABSOLUTE: joint positions.
    DELTA: offsets from the joint state at the chunk's observation time
        (openpi's delta-action checkpoints, usually with the gripper kept
        absolute through a mask).
    """

    ABSOLUTE = "absolute"
    DELTA = "delta"

    @classmethod
    def parse(cls, value: str | ActionSpace, parameter: str = "action_space") -> ActionSpace:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(parameter, f"unknown action space {value!r}; choose one of {choices}") from None


def to_absolute(
    actions: np.ndarray, state_at_obs: np.ndarray, delta_mask: np.ndarray | None = None
) -> np.ndarray:
    """Delta actions (H, D) -> absolute positions: actions + state_at_obs.

    Every action of a chunk is an offset from the SAME state (the one the
    chunk was computed from), not from the previous action. ``delta_mask``
    (D,) bool selects the joints that are deltas (None: all); the others
    pass through. Done once per chunk on arrival, never per tick.
    """
    actions = np.asarray(actions)
    state = np.asarray(state_at_obs, dtype=np.float64).reshape(-1)
    if actions.ndim != 2 or actions.shape[1] != state.shape[0]:
        raise ValueError(
            f"actions {actions.shape} and state ({state.shape[0]},) must have the same joint count"
        )
    if delta_mask is not None:
        mask = np.asarray(delta_mask, dtype=bool).reshape(-1)
        if mask.shape[0] != state.shape[0]:
            raise ValueError(f"delta_mask needs {state.shape[0]} entries, got {mask.shape[0]}")
        state = np.where(mask, state, 0.0)
    return (actions.astype(np.float64) + state).astype(np.float32)


def prepare_chunk(
    chunk: ActionChunk,
    action_space: ActionSpace | str,
    state_at_obs: np.ndarray | None = None,
    delta_mask: np.ndarray | None = None,
) -> ActionChunk:
    """The chunk with absolute actions, ready for an aggregator."""
    space = ActionSpace.parse(action_space)
    if space is ActionSpace.ABSOLUTE:
        return chunk
    if state_at_obs is None:
        raise ValueError("delta actions need the joint state at the chunk's observation time")
    return dataclasses.replace(chunk, actions=to_absolute(chunk.actions, state_at_obs, delta_mask))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class TrajectoryPlan:
    """The points of one JointTrajectory, in the safety filter's joint order.

    positions, velocities: (N, D) float64; times_from_start: (N,) seconds,
    strictly increasing and > 0; the last velocity row is zero.
    is_hold: True when no action was available and every point holds a
        position; ``reason`` then says why.
    covered_points: how many points came from the aggregator (the rest
        repeat the last available position).
    """

    positions: np.ndarray
    velocities: np.ndarray
    times_from_start: np.ndarray
    is_hold: bool = False
    reason: str = ""
    covered_points: int = 0

    def __post_init__(self) -> None:
        p, v, t = self.positions, self.velocities, self.times_from_start
        if p.ndim != 2 or v.shape != p.shape or t.shape != (p.shape[0],) or p.shape[0] == 0:
            raise ValueError(
                f"plan shapes disagree: positions {p.shape}, velocities {v.shape}, times {t.shape}"
            )
        if t[0] <= 0.0 or (p.shape[0] > 1 and not (np.diff(t) > 0.0).all()):
            raise ValueError(f"times_from_start must be > 0 and strictly increasing, got {t}")
        if v[-1].any():
            raise ValueError("the last point must have zero velocity")
        for a in (p, v, t):
            _read_only(a)

    @property
    def num_points(self) -> int:
        return self.positions.shape[0]


def _check_timing(period: float, num_points: int) -> tuple[float, int]:
    period = float(period)
    if not np.isfinite(period) or period <= 0.0:
        raise ConfigError("trajectory.period", f"must be a finite number > 0, got {period}")
    if int(num_points) != num_points or num_points < 1:
        raise ConfigError("trajectory.num_points", f"must be an integer >= 1, got {num_points}")
    return period, int(num_points)


def hold_plan(
    position: np.ndarray, period: float, num_points: int, reason: str
) -> TrajectoryPlan:
    """Every point at ``position`` with zero velocity."""
    period, num_points = _check_timing(period, num_points)
    pos = np.array(position, dtype=np.float64).reshape(1, -1)
    return TrajectoryPlan(
        positions=np.repeat(pos, num_points, axis=0),
        velocities=np.zeros((num_points, pos.shape[1])),
        times_from_start=period * np.arange(1, num_points + 1),
        is_hold=True,
        reason=reason,
        covered_points=0,
    )


def spline_velocities(previous: np.ndarray, positions: np.ndarray, period: float) -> np.ndarray:
    """Velocities at the points for a controller that splines cubically between them.

    At point i the smaller (in magnitude) of the slopes into and out of it
    when both have the same sign, else 0 ("min-mod"); 0 at the last point.
    With these, each cubic segment is monotone between its two points, so
    the executed motion never passes a point: a trajectory that stops at a
    position limit does not overshoot it. Plain backward differences would
    (a segment from p with velocity v to p again with velocity 0 bulges by
    4/27 v T), and the overshoot lands exactly where the safety filter
    clamped. Between a point and a stop the instantaneous speed can reach
    1.5 times the step over the period (zero end slopes).
    """
    slopes = np.diff(np.vstack([np.asarray(previous, dtype=np.float64)[None], positions]), axis=0) / period
    velocities = np.zeros_like(positions)
    into, out = slopes[:-1], slopes[1:]
    velocities[:-1] = np.where(into * out > 0.0, np.sign(into) * np.minimum(np.abs(into), np.abs(out)), 0.0)
    return velocities


def plan_points(
    aggregator: ChunkAggregator,
    safety: SafetyFilter,
    now: float,
    period: float,
    num_points: int,
    measured: np.ndarray | None,
) -> TrajectoryPlan:
    """Plan the next ``num_points`` points, one control ``period`` apart.

    1. point i (0-based) is for time now + (i + 1) * period, so the first
       lies one period ahead;
    2. targets = aggregator values at those times; a point the aggregator
       does not cover repeats the previous point (beyond the horizon: the
       last available position; before coverage starts: the last command);
    3. point 0 goes through ``safety.update`` (committed: the next tick
       steps from it), points 1.. through ``safety.filter_points``
       (look-ahead, not committed), so every point obeys the position
       limits and steps at most ``max_velocity * period`` from the one
       before (the first from the last command);
    4. velocities from ``spline_velocities`` (p_{-1} the last command):
       monotone cubic segments, 0 at the last point.
    If no point is covered, returns a hold plan at ``safety.hold(measured)``
    (the last command, else the measured position).
    """
    period, num_points = _check_timing(period, num_points)
    measured_arr = None if measured is None else np.asarray(measured, dtype=np.float64)
    if safety.last_command is None and (measured_arr is None or not np.isfinite(measured_arr).all()):
        raise ValueError("plan_points needs a previous command or a finite measured position")

    offsets = period * np.arange(1, num_points + 1)
    values, covered = aggregator.values_at(now + offsets)
    num_covered = int(np.count_nonzero(covered))
    if num_covered == 0:
        reason = f"no action chunk covers now + [{offsets[0]:.3f}, {offsets[-1]:.3f}] s"
        end = aggregator.horizon_end()
        if end is not None:
            reason += f" (chunks cover until {end - now:+.3f} s from now)"
        return hold_plan(safety.hold(measured_arr), period, num_points, reason)

    # The point the first command steps from (the last command, else the
    # measured position).
    previous = safety.previous(measured_arr)
    if num_covered < num_points:
        # Forward fill: each uncovered row takes the nearest covered row
        # before it; rows before coverage starts stay at the last command.
        source = np.where(covered, np.arange(num_points), -1)
        np.maximum.accumulate(source, out=source)
        targets = np.where((source >= 0)[:, None], values[np.maximum(source, 0)], previous)
    else:
        targets = values

    positions = np.empty_like(targets)
    positions[0] = safety.update(targets[0], measured_arr, period)
    if num_points > 1:
        positions[1:] = safety.filter_points(targets[1:], measured_arr, period)

    velocities = spline_velocities(previous, positions, period)
    return TrajectoryPlan(
        positions=positions,
        velocities=velocities,
        times_from_start=offsets,
        is_hold=False,
        reason="",
        covered_points=num_covered,
    )
