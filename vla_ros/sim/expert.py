"""A scripted expert for the simulator: inverse kinematics to the target, then a smooth approach.

At the first command of an episode the expert solves the arm's inverse
kinematics for the target (closed form for 3 links, the solution closest to
the measured pose) and plans a minimum-jerk move from the measured joints to
it, timed so that no joint exceeds ``speed`` times its velocity limit; the
gripper stays open on the way and closes once the arm has arrived. Joints that
are neither arm nor gripper hold their position.

It commands the robot the way the vla_policy node does: every control period
a JointTrajectory-like command of ``num_points`` points one period apart, the
first one period ahead, with positions and velocities sampled from the plan
(`ScriptedExpert.command`). So a recording of the expert has the same command
stream as a recording of the node driving the robot.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vla_ros.sim.world import SimWorld


def min_jerk(tau: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-jerk profile s(tau) and ds/dtau for tau in [0, 1] (clipped outside)."""
    t = np.clip(np.asarray(tau, dtype=np.float64), 0.0, 1.0)
    s = t ** 3 * (10 - 15 * t + 6 * t * t)
    ds = 30 * t * t * (1 - t) ** 2
    return s, ds


@dataclasses.dataclass
class _Plan:
    episode: int
    t0: float
    start: np.ndarray  # (D,)
    goal: np.ndarray  # (D,) arm at the IK solution, gripper open
    duration: float  # of the arm move
    grip_start: float  # absolute time the gripper starts closing
    grip_duration: float
    grip_closed: float


class ScriptedExpert:
    """IK + minimum-jerk approach for `world`'s current episode (see the module docstring)."""

    PEAK = 1.875  # max of ds/dtau for the minimum-jerk profile

    def __init__(self, world: SimWorld, speed: float = 0.6, min_duration: float = 1.0, settle: float = 0.2,
                 close_gripper: bool = True):
        if not 0 < speed <= 1:
            raise ValueError(f"speed is a fraction of the velocity limits in (0, 1], got {speed}")
        self.world = world
        self.speed = speed
        self.min_duration = min_duration
        self.settle = settle
        self.close_gripper = close_gripper
        self._plan: _Plan | None = None

    def plan(self, now: float) -> _Plan:
        """The plan for the current episode, made at its first call from the measured pose."""
        world = self.world
        if self._plan is not None and self._plan.episode == world.episode:
            return self._plan
        robot = world.robot
        start = world.position
        goal = start.copy()
        arm = list(robot.arm_index)
        q = world.arm.ik(world.target.x, world.target.y, reference=start[arm])
        if q is None:  # cannot happen for sampled targets; fall back on least squares
            q = world.arm.ik_dls(world.target.position, start[arm])
        goal[arm] = q
        vmax = np.asarray(robot.max_velocity)
        g = robot.gripper_index
        if g is not None:
            goal[g] = robot.upper[g]
        move = np.abs(goal - start)
        duration = max(self.min_duration, float(np.max(self.PEAK * move / (self.speed * vmax))))
        grip_closed = robot.lower[g] if g is not None else 0.0
        grip_duration = 0.0
        if g is not None:
            grip_duration = self.PEAK * abs(goal[g] - grip_closed) / (self.speed * vmax[g])
        self._plan = _Plan(world.episode, float(now), start, goal, duration,
                           float(now) + duration + self.settle, max(grip_duration, 1e-3), grip_closed)
        return self._plan

    def desired(self, t: np.ndarray | float, now: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Planned (positions, velocities) at time(s) t: (D,) or (N, D)."""
        plan = self.plan(self.world.time if now is None else now)
        t = np.asarray(t, dtype=np.float64)
        s, ds = min_jerk((t - plan.t0) / plan.duration)
        delta = plan.goal - plan.start
        pos = plan.start + s[..., None] * delta
        vel = (ds / plan.duration)[..., None] * delta
        g = self.world.robot.gripper_index
        if g is not None:
            tau = (t - plan.grip_start) / plan.grip_duration
            gs, gds = min_jerk(tau)
            if not self.close_gripper:
                gs, gds = np.zeros_like(gs), np.zeros_like(gds)
            open_ = plan.goal[g]
            moving = t < plan.t0 + plan.duration
            pos[..., g] = np.where(moving, pos[..., g], open_) + gs * (plan.grip_closed - open_)
            closing = gds / plan.grip_duration * (plan.grip_closed - open_)
            vel[..., g] = np.where(moving, vel[..., g], 0.0) + closing
        return pos, vel

    def command(self, now: float, period: float,
                num_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times_from_start (N,), positions (N, D), velocities (N, D)) of the command at `now`."""
        offsets = period * np.arange(1, num_points + 1)
        self.plan(now)
        pos, vel = self.desired(now + offsets, now)
        return offsets, pos, vel

    def done_time(self) -> float | None:
        """Absolute time the plan (arm and gripper) ends, once planned."""
        plan = self._plan
        if plan is None:
            return None
        return plan.grip_start + plan.grip_duration if self.close_gripper else plan.t0 + plan.duration
