"""Following JointTrajectory commands the way ros2_control's joint_trajectory_controller does.

What is modelled (ros2_controllers' joint_trajectory_controller, topic interface):

- A new trajectory replaces the current one at once. It starts at its header
  stamp, or on receipt when the stamp is zero; `time_from_start` of each point
  counts from there.
- Before the first point the reference goes from the state at receipt (the
  measured position and velocity, as the controller's ``state_current_``)
  to the first point; between points it interpolates, linearly when the
  points carry positions only, with cubic Hermite splines when they carry
  velocities too (the controller's cubic case); after the last point it holds
  the last position with zero velocity. Points whose time has passed when the
  trajectory arrives are sampled where "now" falls, as the controller does
  for a stamp in the past.
- A trajectory may name a subset of the joints, in any order; the others hold
  their current reference. An unknown joint name rejects the whole message
  (the controller rejects it too).

On top of the controller the joints are an ideal position servo with
saturation: each step the measured position moves towards the reference by at
most ``max_velocity * dt`` and stays within [lower, upper], so the reported
velocity never exceeds the limit. There is no dynamics (no mass, no
overshoot, no tracking lag below the velocity limit).

Everything runs on float seconds of one clock given by the caller (simulated
or ROS time), so it is unit-testable without ROS.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np


class TrajectoryRejected(ValueError):
    """A trajectory message the controller would refuse (the message says why)."""


@dataclasses.dataclass
class _Trajectory:
    times: np.ndarray  # (K,) absolute seconds, strictly increasing
    positions: np.ndarray  # (K, D) reference for every joint
    velocities: np.ndarray | None  # (K, D) or None (linear interpolation)


class TrajectoryFollower:
    """The commanded reference (from trajectories) and the measured state of D joints."""

    def __init__(
        self,
        joint_names: Sequence[str],
        lower: Sequence[float],
        upper: Sequence[float],
        max_velocity: Sequence[float],
        initial: Sequence[float] | np.ndarray,
        time: float = 0.0,
    ):
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        d = len(self.joint_names)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.max_velocity = np.asarray(max_velocity, dtype=np.float64)
        named = (("lower", self.lower), ("upper", self.upper), ("max_velocity", self.max_velocity))
        for name, values in named:
            if values.shape != (d,):
                raise ValueError(f"{name} needs one value per joint ({d}), got shape {values.shape}")
        self.trajectories_received = 0
        self.reset(initial, time)

    def reset(self, position: Sequence[float] | np.ndarray, time: float) -> None:
        """Put the joints at `position` (clipped into the limits), at rest, with no trajectory."""
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (len(self.joint_names),):
            raise ValueError(f"expected {len(self.joint_names)} positions, got shape {position.shape}")
        self.position = np.clip(position, self.lower, self.upper)
        self.velocity = np.zeros_like(self.position)
        self.time = float(time)
        self._trajectory: _Trajectory | None = None
        self._hold = self.position.copy()

    @property
    def active(self) -> bool:
        """A trajectory is still running (its last point is in the future)."""
        return self._trajectory is not None and self.time < self._trajectory.times[-1]

    # -- commands -----------------------------------------------------------

    def set_trajectory(
        self,
        joint_names: Sequence[str],
        times_from_start: Sequence[float] | np.ndarray,
        positions: Sequence[Sequence[float]] | np.ndarray,
        velocities: Sequence[Sequence[float]] | np.ndarray | None = None,
        start_time: float = 0.0,
        now: float | None = None,
    ) -> None:
        """Replace the current trajectory (JTC semantics; see the module docstring).

        start_time: the header stamp in seconds; 0 = start on receipt (`now`).
        now: receipt time (default: the follower's current time).
        velocities: None, or one row per point (an empty row everywhere counts as none).

        Raises:
            TrajectoryRejected: unknown or repeated joint names, shapes that do not
                match, times not strictly increasing, non-finite values.
        """
        now = self.time if now is None else float(now)
        names = list(joint_names)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise TrajectoryRejected(f"unknown joints {unknown}; this robot has {list(self.joint_names)}")
        if len(set(names)) != len(names):
            raise TrajectoryRejected(f"joint names repeat: {names}")
        times = np.asarray(times_from_start, dtype=np.float64).reshape(-1)
        if times.size == 0:
            # An empty trajectory stops the current one (the controller holds).
            self._hold = self.position.copy()
            self._trajectory = None
            return
        pos = np.asarray(positions, dtype=np.float64)
        if pos.shape != (times.size, len(names)):
            raise TrajectoryRejected(f"positions must be (points, joints) = {(times.size, len(names))}, "
                                     f"got {pos.shape}")
        vel = None
        if velocities is not None:
            rows = [np.asarray(v, dtype=np.float64).reshape(-1) for v in velocities]
            if any(r.size for r in rows):
                vel = np.asarray(rows, dtype=np.float64) if all(r.size == len(names) for r in rows) else None
                if vel is None or vel.shape != pos.shape:
                    raise TrajectoryRejected(
                        "velocities must be given for every joint of every point, or none")
        if not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) <= 0):
            raise TrajectoryRejected(
                f"time_from_start must be >= 0 and strictly increasing, got {times.tolist()}")
        if not np.all(np.isfinite(pos)) or (vel is not None and not np.all(np.isfinite(vel))):
            raise TrajectoryRejected("positions / velocities must be finite")

        start = float(start_time) if start_time > 0 else now
        index = [self._index[n] for n in names]
        # Joints the message does not name hold their current reference.
        held, _ = self.reference(now)
        full_pos = np.tile(held, (times.size, 1))
        full_pos[:, index] = pos
        full_pos = np.clip(full_pos, self.lower, self.upper)
        full_vel = None
        if vel is not None:
            full_vel = np.zeros_like(full_pos)
            full_vel[:, index] = vel
        abs_times = start + times
        if abs_times[0] > now:
            # From the state at receipt to the first point.
            abs_times = np.concatenate([[now], abs_times])
            full_pos = np.vstack([self.position, full_pos])
            if full_vel is not None:
                full_vel = np.vstack([self.velocity, full_vel])
        self._trajectory = _Trajectory(abs_times, full_pos, full_vel)
        self.trajectories_received += 1

    # -- sampling -----------------------------------------------------------

    def reference(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The commanded (position, velocity) at time t."""
        traj = self._trajectory
        if traj is None:
            return self._hold.copy(), np.zeros_like(self._hold)
        times = traj.times
        if t <= times[0]:
            v0 = np.zeros_like(traj.positions[0]) if traj.velocities is None else traj.velocities[0]
            return traj.positions[0].copy(), v0.copy()
        if t >= times[-1]:
            return traj.positions[-1].copy(), np.zeros_like(traj.positions[-1])
        k = int(np.searchsorted(times, t, side="right")) - 1
        t0, t1 = times[k], times[k + 1]
        h = t1 - t0
        s = (t - t0) / h
        p0, p1 = traj.positions[k], traj.positions[k + 1]
        if traj.velocities is None:
            return p0 + s * (p1 - p0), (p1 - p0) / h
        v0, v1 = traj.velocities[k], traj.velocities[k + 1]
        # cubic Hermite basis
        h00 = 2 * s ** 3 - 3 * s ** 2 + 1
        h10 = s ** 3 - 2 * s ** 2 + s
        h01 = -2 * s ** 3 + 3 * s ** 2
        h11 = s ** 3 - s ** 2
        position = h00 * p0 + h10 * h * v0 + h01 * p1 + h11 * h * v1
        d00 = (6 * s ** 2 - 6 * s) / h
        d10 = 3 * s ** 2 - 4 * s + 1
        d01 = (-6 * s ** 2 + 6 * s) / h
        d11 = 3 * s ** 2 - 2 * s
        velocity = d00 * p0 + d10 * v0 + d01 * p1 + d11 * v1
        return position, velocity

    def step(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Advance the measured state to time t; returns (position, velocity)."""
        dt = float(t) - self.time
        if dt <= 0:
            return self.position.copy(), self.velocity.copy()
        target, _ = self.reference(t)
        target = np.clip(target, self.lower, self.upper)
        max_step = self.max_velocity * dt
        new = self.position + np.clip(target - self.position, -max_step, max_step)
        new = np.clip(new, self.lower, self.upper)
        self.velocity = (new - self.position) / dt
        self.position = new
        self.time = float(t)
        if self._trajectory is None:
            self._hold = np.clip(self._hold, self.lower, self.upper)
        return self.position.copy(), self.velocity.copy()
