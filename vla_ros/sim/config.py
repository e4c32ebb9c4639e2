"""The simulator's own parameters: the ``vla_sim:`` section of a robot YAML.

A robot profile is a ROS 2 parameter file. The policy node reads its
``vla_policy: ros__parameters:`` section (``NodeConfig.from_yaml``) and never
looks at other nodes' sections, so the simulator keeps its parameters in a
section of its own, ``vla_sim: ros__parameters:``, in the same file (or in a
separate file, given with ``vla-ros sim --sim-config``). A profile without
that section runs with the defaults below. Unknown keys are errors with a
"did you mean", as for the node.

The robot itself (joint names, limits, topics, camera sizes and transports,
the control and action rates) always comes from the node's section: the
simulator stands in for exactly the robot the node is configured for.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from vla_ros.config.validate import _positive, _topic, BOOL, FLOAT, FLOAT_LIST, INT, param, section, STR, \
    STR_LIST
from vla_ros.errors import ConfigError

SIM_NODE_NAME = "vla_sim"

# Target colours the renderer knows (RGB).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "yellow": (235, 200, 20),
    "magenta": (200, 40, 200),
    "cyan": (20, 190, 200),
}


@dataclasses.dataclass(frozen=True)
class TargetSection:
    """Where the target ball appears (a sector of an annulus around the arm's base) and how it looks."""

    radius: float = param(0.035, "Radius of the target ball (m).", FLOAT)
    distance_range: tuple[float, ...] = param(
        (0.3, 0.58), "Distance of the target from the base (m): [min, max], uniform.", FLOAT_LIST)
    angle_range: tuple[float, ...] = param(
        (-1.2, 1.2), "Bearing of the target from the base's x axis (rad): [min, max], uniform.", FLOAT_LIST)
    colors: tuple[str, ...] = param(("red", "green", "blue", "yellow"),
                                    f"Colours to draw from, one per episode ({', '.join(COLORS)}).", STR_LIST)
    instruction: str = param("reach the {color} ball", "The instruction; {color} is the target's colour.",
                             STR)

    def __post_init__(self) -> None:
        _positive("target.radius", self.radius)
        for name in ("distance_range", "angle_range"):
            values = getattr(self, name)
            if len(values) != 2 or not values[0] <= values[1] or not all(map(math.isfinite, values)):
                raise ConfigError(f"target.{name}",
                                  f"expected [min, max] with min <= max, got {list(values)}")
        if self.distance_range[0] <= 0:
            raise ConfigError("target.distance_range",
                              f"expected distances > 0, got {list(self.distance_range)}")
        if not self.colors:
            raise ConfigError("target.colors", "expected at least one colour")
        for i, color in enumerate(self.colors):
            if color not in COLORS:
                raise ConfigError(f"target.colors[{i}]", f"unknown colour {color!r}; known: {list(COLORS)}")


@dataclasses.dataclass(frozen=True)
class SuccessSection:
    """When an episode counts as a success, and where that is reported."""

    tolerance: float = param(0.03, "Success: end effector within this distance of the target's centre (m).",
                             FLOAT)
    hold: float = param(0.2, "... for at least this long (s) without leaving the tolerance.", FLOAT)
    topic: str = param("~/success", "std_msgs/Bool: the episode has succeeded (latched per episode).", STR)
    episode_topic: str = param("~/episode", "std_msgs/String: JSON with the episode's state, at 10 Hz.", STR)

    def __post_init__(self) -> None:
        _positive("success.tolerance", self.tolerance)
        if math.isnan(self.hold) or self.hold < 0:
            raise ConfigError("success.hold", f"expected seconds >= 0, got {self.hold}")
        _topic("success.topic", self.topic)
        _topic("success.episode_topic", self.episode_topic)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Everything the simulator adds to the robot profile."""

    seed: int = param(0, "Seed of the episodes: episode k uses the generator seeded with [seed, k].", INT)
    arm_joints: tuple[str, ...] = param(
        (), "The joints of the planar arm, base to tip (default: the first len(link_lengths) joints).",
        STR_LIST)
    gripper_joint: str = param(
        "", "The gripper joint (default: the first joint named *gripper* or *finger*, else none).", STR)
    link_lengths: tuple[float, ...] = param((0.30, 0.25, 0.12), "Link lengths of the arm (m).", FLOAT_LIST)
    home: tuple[float, ...] = param(
        (), "Joint positions at the start of an episode, one per joint in joint_names order "
        "(default: 0 clipped into the limits, the gripper open).", FLOAT_LIST)
    home_noise: float = param(0.15, "Uniform noise (+-rad) added to the arm joints' home per episode.", FLOAT)
    physics_rate: float = param(100.0, "Rate (Hz) at which the joints are stepped.", FLOAT)
    joint_state_rate: float = param(50.0, "Rate (Hz) of sensor_msgs/JointState.", FLOAT)
    camera_rate: float = param(10.0, "Rate (Hz) of every camera.", FLOAT)
    real_time_factor: float = param(1.0, "Simulated seconds per wall second (live node).", FLOAT)
    publish_clock: bool = param(False, "Publish /clock and stamp everything with simulated time.", BOOL)
    start_time: float = param(100.0, "Simulated time (s) at start-up, with publish_clock.", FLOAT)
    top_camera: str = param("base_0_rgb", "Camera key rendered as the top view ('' = none).", STR)
    wrist_camera: str = param("left_wrist_0_rgb", "Camera key rendered as the wrist view ('' = none).", STR)
    top_view_extent: float = param(1.4, "Width of the table the top view shows (m).", FLOAT)
    wrist_view_extent: float = param(0.3, "Width of the table the wrist view shows (m).", FLOAT)
    default_width: int = param(160, "Image width for cameras whose profile leaves it 0.", INT)
    default_height: int = param(120, "Image height for cameras whose profile leaves it 0.", INT)
    episode_timeout: float = param(10.0, "An episode without success ends (fails) after this long (s).",
                                   FLOAT)
    reset_service: str = param("~/reset", "std_srvs/Trigger that starts a new episode.", STR)
    target: TargetSection = section(TargetSection, "The target ball.")
    success: SuccessSection = section(SuccessSection, "Success.")

    def __post_init__(self) -> None:
        for name in ("physics_rate", "joint_state_rate", "camera_rate", "real_time_factor", "top_view_extent",
                     "wrist_view_extent", "episode_timeout"):
            _positive(name, getattr(self, name))
        if self.start_time <= 0 or not math.isfinite(self.start_time):
            raise ConfigError("start_time", f"expected seconds > 0 (0 is 'no time yet' in ROS), "
                              f"got {self.start_time}")
        if not self.link_lengths or any(not (v > 0 and math.isfinite(v)) for v in self.link_lengths):
            raise ConfigError("link_lengths", f"expected lengths > 0, got {list(self.link_lengths)}")
        if math.isnan(self.home_noise) or self.home_noise < 0:
            raise ConfigError("home_noise", f"expected rad >= 0, got {self.home_noise}")
        for name in ("default_width", "default_height"):
            if getattr(self, name) < 8:
                raise ConfigError(name, f"expected >= 8 pixels, got {getattr(self, name)}")
        _topic("reset_service", self.reset_service)

    @classmethod
    def from_dict(cls, data: Any) -> SimConfig:
        from vla_ros.config.mapping import _build

        return _build(cls, data or {}, "")


@dataclasses.dataclass(frozen=True)
class SimRobot:
    """The simulator's view of a robot profile: NodeConfig + SimConfig, cross-checked.

    arm_index: indices (into joint_names) of the arm joints, base to tip;
    gripper_index: index of the gripper joint, or None.
    """

    node: Any  # vla_ros.config.NodeConfig
    sim: SimConfig
    arm_index: tuple[int, ...]
    gripper_index: int | None
    home: tuple[float, ...]

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(self.node.joint_names)

    @property
    def lower(self) -> tuple[float, ...]:
        return tuple(self.node.limits.lower)

    @property
    def upper(self) -> tuple[float, ...]:
        return tuple(self.node.limits.upper)

    @property
    def max_velocity(self) -> tuple[float, ...]:
        return tuple(self.node.limits.max_velocity)

    def camera_views(self) -> dict[str, tuple[str, int, int]]:
        """camera key -> (view 'top' | 'wrist', width, height), for the profile's cameras."""
        views = {}
        for stream in self.node.cameras.streams:
            if stream.key == self.sim.top_camera:
                view = "top"
            elif stream.key == self.sim.wrist_camera:
                view = "wrist"
            else:
                view = "wrist" if "wrist" in stream.key else "top"
            views[stream.key] = (view, stream.width or self.sim.default_width,
                                 stream.height or self.sim.default_height)
        return views


def sim_robot(node: Any, sim: SimConfig) -> SimRobot:
    """Check the SimConfig against the node's joints and resolve the arm / gripper joints."""
    names = list(node.joint_names)
    n_links = len(sim.link_lengths)
    arm = list(sim.arm_joints) or names[:n_links]
    if len(arm) != n_links:
        raise ConfigError("vla_sim.arm_joints", f"expected {n_links} arm joints (one per link), got {arm}")
    for i, name in enumerate(arm):
        if name not in names:
            raise ConfigError(f"vla_sim.arm_joints[{i}]", f"{name!r} is not in joint_names {names}")
    gripper = sim.gripper_joint
    if not gripper:
        gripper = next((n for n in names if ("gripper" in n or "finger" in n) and n not in arm), "")
    if gripper and gripper not in names:
        raise ConfigError("vla_sim.gripper_joint", f"{gripper!r} is not in joint_names {names}")
    if gripper in arm:
        raise ConfigError("vla_sim.gripper_joint", f"{gripper!r} is also an arm joint")
    lower = node.limits.lower
    upper = node.limits.upper
    gripper_index = names.index(gripper) if gripper else None
    if sim.home:
        if len(sim.home) != len(names):
            raise ConfigError("vla_sim.home", f"expected one position per joint ({len(names)}), "
                              f"got {len(sim.home)}")
        home = [float(v) for v in sim.home]
    else:
        home = [min(max(0.0, lo), hi) for lo, hi in zip(lower, upper)]
        if gripper_index is not None:
            home[gripper_index] = float(upper[gripper_index])  # open
    for i, (value, lo, hi) in enumerate(zip(home, lower, upper)):
        if not lo <= value <= hi:
            raise ConfigError(f"vla_sim.home[{i}]",
                              f"{value} is outside the limits [{lo}, {hi}] of {names[i]}")
    return SimRobot(node, sim, tuple(names.index(n) for n in arm), gripper_index, tuple(home))


def load_sim_robot(config_path: str | Path, sim_config_path: str | Path | None = None) -> SimRobot:
    """The robot profile (node section) and its ``vla_sim`` section (or `sim_config_path`'s)."""
    from vla_ros.config import NodeConfig
    from vla_ros.config.params_file import load_parameters_file

    node = NodeConfig.from_yaml(config_path)
    source = Path(sim_config_path) if sim_config_path is not None else Path(config_path)
    try:
        data = load_parameters_file(source, SIM_NODE_NAME)
    except ConfigError as exc:
        if sim_config_path is not None or "has no" not in str(exc):
            raise
        data = {}  # the profile has no vla_sim section: the defaults
    return sim_robot(node, SimConfig.from_dict(data))
