"""The simulated world: the arm, its joint controller, the target, episodes and success.

`SimWorld` is the whole simulator without ROS: `reset(episode)` places a new
target (drawn from a generator seeded with [seed, episode], so an episode is
the same every time) and puts the arm at its home pose plus noise;
`command(...)` hands it a JointTrajectory's content; `step(t)` advances the
joints to time t; `render(key)` draws a camera; `status()` says how the
episode stands. Time is float seconds on the caller's clock (simulated, or
ROS time in the live node).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

import numpy as np

from vla_ros.sim.config import COLORS, SimRobot
from vla_ros.sim.kinematics import PlanarArm
from vla_ros.sim.render import render, top_view, View, wrist_view
from vla_ros.sim.trajectory import TrajectoryFollower


@dataclasses.dataclass(frozen=True)
class Target:
    """The ball to reach: position (m), colour name and RGB."""

    x: float
    y: float
    color: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]

    @property
    def position(self) -> np.ndarray:
        return np.array([self.x, self.y])


@dataclasses.dataclass(frozen=True)
class EpisodeStatus:
    """How the current episode stands (what the sim reports on its episode topic)."""

    episode: int
    seed: int
    time: float  # seconds since the episode started
    instruction: str
    target: Target
    distance: float  # end effector to the target's centre (m)
    reached: bool  # within the tolerance now
    success: bool  # within the tolerance for success.hold (latched for the episode)
    success_time: float | None  # episode time of success
    timed_out: bool

    @property
    def done(self) -> bool:
        return self.success or self.timed_out

    def as_dict(self) -> dict:
        return {
            "episode": self.episode, "seed": self.seed, "time": round(self.time, 4),
            "instruction": self.instruction,
            "target": {"x": round(self.target.x, 5), "y": round(self.target.y, 5),
                       "color": self.target.color},
            "distance": round(self.distance, 5), "reached": self.reached, "success": self.success,
            "success_time": None if self.success_time is None else round(self.success_time, 4),
            "timed_out": self.timed_out,
        }


class SimWorld:
    """One simulated robot of a profile (see the module docstring)."""

    def __init__(self, robot: SimRobot, time: float = 0.0):
        self.robot = robot
        sim = robot.sim
        arm_lower = [robot.lower[i] for i in robot.arm_index]
        arm_upper = [robot.upper[i] for i in robot.arm_index]
        self.arm = PlanarArm(tuple(sim.link_lengths), (0.0, 0.0), tuple(arm_lower), tuple(arm_upper))
        self.follower = TrajectoryFollower(robot.joint_names, robot.lower, robot.upper, robot.max_velocity,
                                           robot.home, time)
        self.views = robot.camera_views()
        self.episode = -1
        self.episode_seed = sim.seed
        self.start_time = float(time)
        self.target = Target(0.4, 0.0, sim.target.colors[0])
        self._inside_since: float | None = None
        self._success_time: float | None = None
        self.reset(0, time)

    # -- episodes -----------------------------------------------------------

    def sample_target(self, rng: np.random.Generator) -> Target:
        """A target the arm can reach (closed-form IK within the limits), colour drawn too."""
        spec = self.robot.sim.target
        color = spec.colors[int(rng.integers(len(spec.colors)))]
        for _ in range(100):
            r = rng.uniform(*spec.distance_range)
            a = rng.uniform(*spec.angle_range)
            x, y = r * math.cos(a), r * math.sin(a)
            if self.arm.ik(x, y) is not None:
                return Target(float(x), float(y), color)
        raise ValueError(f"no reachable target in target.distance_range {list(spec.distance_range)} / "
                         f"angle_range {list(spec.angle_range)} for links {list(self.arm.link_lengths)}")

    def reset(self, episode: int | None = None, time: float | None = None) -> EpisodeStatus:
        """Start episode `episode` (default: the next one) at `time` (default: now)."""
        episode = self.episode + 1 if episode is None else int(episode)
        time = self.follower.time if time is None else float(time)
        rng = np.random.default_rng([self.robot.sim.seed, episode])
        self.episode = episode
        self.target = self.sample_target(rng)
        home = np.array(self.robot.home, dtype=np.float64)
        noise = self.robot.sim.home_noise
        arm = list(self.robot.arm_index)
        home[arm] += rng.uniform(-noise, noise, len(arm))
        self.follower.reset(home, time)
        self.start_time = time
        self._inside_since = None
        self._success_time = None
        self._update_success()
        return self.status()

    @property
    def instruction(self) -> str:
        return self.robot.sim.target.instruction.replace("{color}", self.target.color)

    # -- state ----------------------------------------------------------------

    @property
    def time(self) -> float:
        return self.follower.time

    @property
    def position(self) -> np.ndarray:
        """Measured positions of every joint, in joint_names order."""
        return self.follower.position.copy()

    @property
    def velocity(self) -> np.ndarray:
        return self.follower.velocity.copy()

    @property
    def arm_q(self) -> np.ndarray:
        return self.follower.position[list(self.robot.arm_index)]

    def ee_pose(self) -> np.ndarray:
        return self.arm.fk(self.arm_q)

    def gripper_opening(self) -> float:
        """0 (closed) .. 1 (open); 1 without a gripper joint."""
        g = self.robot.gripper_index
        if g is None:
            return 1.0
        lo, hi = self.robot.lower[g], self.robot.upper[g]
        return float((self.follower.position[g] - lo) / (hi - lo)) if hi > lo else 1.0

    def distance(self) -> float:
        return float(np.linalg.norm(self.ee_pose()[:2] - self.target.position))

    # -- time -----------------------------------------------------------------

    def command(
        self,
        joint_names: Sequence[str],
        times_from_start: Sequence[float],
        positions: Sequence[Sequence[float]] | np.ndarray,
        velocities: Sequence[Sequence[float]] | np.ndarray | None = None,
        start_time: float = 0.0,
        now: float | None = None,
    ) -> None:
        """A JointTrajectory's content (TrajectoryFollower.set_trajectory; raises TrajectoryRejected)."""
        self.follower.set_trajectory(joint_names, times_from_start, positions, velocities, start_time, now)

    def step(self, t: float) -> None:
        """Advance the joints to time t (in physics steps of at most 1 / physics_rate) and update success."""
        dt = 1.0 / self.robot.sim.physics_rate
        while self.follower.time < t - 1e-12:
            self.follower.step(min(t, self.follower.time + dt))
            self._update_success()

    def _update_success(self) -> None:
        sim = self.robot.sim
        now = self.follower.time
        if self.distance() <= sim.success.tolerance:
            if self._inside_since is None:
                self._inside_since = now
            if self._success_time is None and now - self._inside_since >= sim.success.hold - 1e-9:
                self._success_time = now - self.start_time
        else:
            self._inside_since = None

    def status(self) -> EpisodeStatus:
        sim = self.robot.sim
        elapsed = self.follower.time - self.start_time
        distance = self.distance()
        success = self._success_time is not None
        return EpisodeStatus(
            episode=self.episode, seed=sim.seed, time=elapsed, instruction=self.instruction,
            target=self.target, distance=distance, reached=distance <= sim.success.tolerance,
            success=success, success_time=self._success_time,
            timed_out=not success and elapsed >= sim.episode_timeout)

    # -- cameras --------------------------------------------------------------

    def view(self, key: str) -> View:
        kind, width, height = self.views[key]
        sim = self.robot.sim
        if kind == "top":
            return top_view(width, height, self.arm.base, self.arm.reach, sim.top_view_extent)
        return wrist_view(width, height, self.ee_pose(), sim.wrist_view_extent)

    def render(self, key: str) -> np.ndarray:
        """uint8 (H, W, 3) RGB image of camera `key` (one of the profile's cameras)."""
        q = self.arm_q
        return render(self.view(key), self.arm.joint_points(q), float(np.sum(q)), self.gripper_opening(),
                      (self.target.x, self.target.y), self.robot.sim.target.radius, self.target.rgb)
