"""Recording expert demonstrations as ordinary rosbag2 bags, offline on simulated time.

Each episode becomes one bag ``DIR/episode_NNN`` with the profile's topics and
types, exactly what `ros2 bag record` would capture from the live sim node
driven by a policy node:

- every camera on its topic (sensor_msgs/Image rgb8, or CompressedImage jpeg,
  as the profile's transport says) at ``camera_rate``;
- sensor_msgs/JointState on ``joint_states.topic`` at ``joint_state_rate``
  (the profile's joint names and order, positions and velocities);
- the expert's commands, trajectory_msgs/JointTrajectory on
  ``output.trajectory_topic`` at ``control_rate`` (header stamp zero: start
  on receipt; ``output.num_points`` points one control period apart, with
  velocities), as the node publishes them;
- the instruction (std_msgs/String) on ``prompt.topic`` at the start.

Header stamps equal bag times; the episode starts at a fixed time
(make_bag.START_TIME_NS plus an hour per episode), so the same arguments always
give the same messages. ``DIR/episodes.json`` lists each episode's seed,
target, instruction and outcome (for picking episodes; nothing in the bags
depends on it). The bags are written with the project's writer
(vla_ros.tools.bag_io.BagWriter, the rosbags library) and never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import json
import os
from pathlib import Path
import shutil
from typing import Any

import numpy as np

from vla_ros.sim.config import SimRobot
from vla_ros.sim.episode import NS, run_expert_episode
from vla_ros.sim.expert import ScriptedExpert
from vla_ros.sim.world import EpisodeStatus, SimWorld

EPISODE_SPACING_NS = 3600 * NS
SUMMARY_NAME = "episodes.json"


def episode_name(episode: int) -> str:
    return f"episode_{episode:03d}"


class BagSink:
    """An EpisodeSink that writes rosbags messages to a BagWriter."""

    def __init__(self, writer: Any, robot: SimRobot):
        from vla_ros.tools.bag_io import (
            CameraTopic, COMPRESSED_IMAGE, IMAGE, JOINT_STATE, JOINT_TRAJECTORY, STRING)

        self.writer = writer
        self.robot = robot
        self.ts = writer.typestore
        node = robot.node
        self.cameras = {}
        views = robot.camera_views()
        for stream in node.cameras.streams:
            _, width, height = views[stream.key]
            if stream.transport == "compressed":
                camera = CameraTopic(stream.key, stream.topic, COMPRESSED_IMAGE, "jpeg", width, height)
            else:
                camera = CameraTopic(stream.key, stream.topic, IMAGE, "rgb8", width, height)
            self.cameras[stream.key] = camera
            writer.add_topic(camera.topic, camera.msgtype)
        self.joint_state_topic = node.joint_states.topic
        self.command_topic = node.output.trajectory_topic or "/joint_trajectory"
        self.prompt_topic = node.prompt.topic
        writer.add_topic(self.prompt_topic, STRING)
        writer.add_topic(self.joint_state_topic, JOINT_STATE)
        writer.add_topic(self.command_topic, JOINT_TRAJECTORY)
        self._types = self.ts.types
        self._names = list(robot.joint_names)

    def _header(self, time_ns: int) -> Any:
        from vla_ros.tools.make_bag import _header

        return _header(self.ts, time_ns, "")

    def instruction(self, time_ns: int, text: str) -> None:
        self.writer.write(self.prompt_topic, time_ns, self._types["std_msgs/msg/String"](data=text))

    def joint_state(self, time_ns: int, position: np.ndarray, velocity: np.ndarray) -> None:
        msg = self._types["sensor_msgs/msg/JointState"](
            header=self._header(time_ns), name=self._names, position=np.asarray(position, np.float64),
            velocity=np.asarray(velocity, np.float64), effort=np.zeros(0))
        self.writer.write(self.joint_state_topic, time_ns, msg)

    def camera(self, time_ns: int, key: str, rgb: np.ndarray) -> None:
        from vla_ros.tools.make_bag import image_message

        camera = self.cameras[key]
        self.writer.write(camera.topic, time_ns, image_message(self.ts, camera, rgb, time_ns))

    def command(self, time_ns: int, times_from_start: np.ndarray, positions: np.ndarray,
                velocities: np.ndarray) -> None:
        types = self._types
        points = []
        for t, p, v in zip(times_from_start, positions, velocities):
            sec, nanosec = divmod(int(round(float(t) * NS)), NS)
            points.append(types["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=np.asarray(p, np.float64), velocities=np.asarray(v, np.float64),
                accelerations=np.zeros(0), effort=np.zeros(0),
                time_from_start=types["builtin_interfaces/msg/Duration"](sec=sec, nanosec=nanosec)))
        msg = types["trajectory_msgs/msg/JointTrajectory"](
            header=self._header(0), joint_names=self._names, points=points)
        self.writer.write(self.command_topic, time_ns, msg)


def record_episode(robot: SimRobot, out: Path, episode: int, storage: str = "sqlite3",
                   world: SimWorld | None = None) -> tuple[EpisodeStatus, dict[str, int]]:
    """Record the expert's episode `episode` as the bag `out` (must not exist); (status, counts)."""
    from vla_ros.tools.bag_io import BagError, BagWriter
    from vla_ros.tools.file_modes import make_readable
    from vla_ros.tools.make_bag import START_TIME_NS

    out = Path(out)
    if out.exists():
        raise BagError(f"{out} exists already; choose a new directory (bags are never overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    partial = staging / out.name  # rosbags names the storage file after the directory
    world = world or SimWorld(robot)
    try:
        with BagWriter(partial, storage) as writer:
            sink = BagSink(writer, robot)
            status = run_expert_episode(world, ScriptedExpert(world), episode, sink,
                                        start_ns=START_TIME_NS + episode * EPISODE_SPACING_NS)
            counts = dict(writer.counts)
        make_readable(partial)
        partial.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return status, counts


def record_episodes(
    robot: SimRobot,
    out_dir: str | Path,
    episodes: Sequence[int],
    storage: str = "sqlite3",
    progress: Callable[[int, EpisodeStatus, dict[str, int]], None] | None = None,
) -> list[dict]:
    """Record each episode in `episodes` as ``out_dir/episode_NNN``; writes and returns the summary."""
    from vla_ros.tools.bag_io import BagError
    from vla_ros.tools.file_modes import make_readable

    out_dir = Path(out_dir)
    existing = [episode_name(k) for k in episodes if (out_dir / episode_name(k)).exists()]
    if existing:
        raise BagError(f"{out_dir} already holds {existing}; bags are never overwritten "
                       "(choose another --record directory or other --first-episode)")
    out_dir.mkdir(parents=True, exist_ok=True)
    world = SimWorld(robot)
    summary = []
    for k in episodes:
        status, counts = record_episode(robot, out_dir / episode_name(k), k, storage, world)
        entry = {"bag": episode_name(k), **status.as_dict(), "messages": counts}
        summary.append(entry)
        if progress is not None:
            progress(k, status, counts)
    path = out_dir / SUMMARY_NAME
    previous = []
    if path.is_file():
        try:
            previous = [e for e in json.loads(path.read_text()).get("episodes", [])
                        if e.get("bag") not in {s["bag"] for s in summary}]
        except (ValueError, AttributeError):
            previous = []
    document = {"profile_joints": list(robot.joint_names), "seed": robot.sim.seed,
                "episodes": sorted(previous + summary, key=lambda e: e["bag"])}
    path.write_text(json.dumps(document, indent=1) + "\n")
    make_readable(path)
    return summary
