"""What a replay plays, and what its two modes share to play it.

plan_replay checks the bag against the robot YAML (topic names and types,
exactly as the node reads them) and fixes the time window; read_reference
reads the signal the produced commands are compared with. Both modes
(vla_ros.tools.replay_offline, vla_ros.tools.replay_live) play the same
ReplayPlan and record into the same vla_ros.tools.replay_report.ReplayRecord.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# vla_ros.config.DEFAULT_NODE_NAME: the CLI's argument defaults must not import the config module
DEFAULT_NODE_NAME = 'vla_policy'
DIAGNOSTICS_TOPIC = '/diagnostics'


@dataclasses.dataclass
class ReplayPlan:
    """What to replay: the validated topics of the bag and the time window (ns)."""

    config: Any  # vla_ros.config.NodeConfig
    robot: Any  # vla_ros.tools.bag_io.RobotTopics
    begin_ns: int
    end_ns: int
    camera_topics: dict[str, str]  # topic -> camera key
    instruction_topic: str | None
    command_topic: str | None
    prompt_override: str | None

    @property
    def input_topics(self) -> list[str]:
        topics = list(self.camera_topics) + [self.robot.joint_state_topic]
        if self.instruction_topic:
            topics.append(self.instruction_topic)
        return topics


def plan_replay(bag, config, command_topic: str | None = None, start: float = 0.0,
                duration: float | None = None, prompt: str | None = None) -> ReplayPlan:
    """Check the bag against the config (topics, types, joint states) and fix the time window.

    Raises a BagError subclass for each problem, before any output is written.
    """
    from vla_ros.tools import bag_io

    robot = bag_io.robot_topics_from_config(config, command_topic)
    camera_topics = {}
    for camera in robot.cameras:
        stream = config.cameras[camera.key]
        bag.require_topic(camera.topic, camera.msgtype,
                          f'cameras.{camera.key}.topic, transport {stream.transport}')
        camera_topics[camera.topic] = camera.key
    js = bag.topics.get(robot.joint_state_topic)
    if js is None or js.count == 0:
        what = 'is not in the bag' if js is None else 'has no messages'
        raise bag_io.NoJointStatesError(
            f"bag {bag.path} has no joint states: topic '{robot.joint_state_topic}' (joint_states.topic) "
            f'{what}; a replay needs the measured joint positions. The bag has: {bag.describe_topics()}')
    bag.require_topic(robot.joint_state_topic, bag_io.JOINT_STATE, 'joint_states.topic')

    instruction_topic = None
    if robot.instruction_topic in bag.topics:
        bag.require_topic(robot.instruction_topic, bag_io.STRING, 'prompt.topic')
        instruction_topic = robot.instruction_topic
    elif not prompt and not config.prompt.default:
        raise bag_io.MissingTopicError(
            f"topic '{robot.instruction_topic}' (prompt.topic) is not in bag {bag.path} and prompt.default "
            f"is empty, so there is no instruction; pass --prompt TEXT. The bag has: {bag.describe_topics()}")
    command = None
    if robot.command_topic in bag.topics:
        bag.require_topic(robot.command_topic, bag_io.JOINT_TRAJECTORY,
                          'recorded command topic (--command-topic)')
        command = robot.command_topic
    elif command_topic:
        bag.require_topic(command_topic, bag_io.JOINT_TRAJECTORY, '--command-topic')

    if start < 0 or not math.isfinite(start):
        raise bag_io.BagError(f'--start must be >= 0 seconds, got {start}')
    if duration is not None and not duration > 0:
        raise bag_io.BagError(f'--duration must be > 0 seconds, got {duration}')
    begin_ns = bag.start_ns + int(round(start * 1e9))
    end_ns = bag.end_ns if duration is None else min(bag.end_ns, begin_ns + int(round(duration * 1e9)))
    if begin_ns >= bag.end_ns:
        raise bag_io.EmptyBagError(
            f'--start {start:g} s is past the end of bag {bag.path} ({bag.duration:.3f} s long)')
    return ReplayPlan(config, robot, begin_ns, end_ns, camera_topics, instruction_topic, command, prompt)


class JointOrder:
    """Indices that put a message's joints into the configured joint_names order.

    None for messages that lack some configured joint. Cached per name list,
    since a topic keeps sending the same one.
    """

    def __init__(self, joint_names):
        self.names = tuple(joint_names)
        self.cache: dict[tuple[str, ...], np.ndarray | None] = {}

    def __call__(self, msg_joint_names) -> np.ndarray | None:
        key = tuple(msg_joint_names)
        if key not in self.cache:
            where = {n: i for i, n in enumerate(key)}
            self.cache[key] = (np.array([where[n] for n in self.names])
                               if all(n in where for n in self.names) else None)
        return self.cache[key]


def read_reference(bag, plan: ReplayPlan) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(kind, topic, times, positions) of the reference signal within the window.

    Also checks that the window holds joint states with every configured joint.
    """
    from vla_ros.errors import ObservationError
    from vla_ros.ros.builtin_time import stamp_to_seconds
    from vla_ros.ros.joint_state_merge import joint_state_reader
    from vla_ros.tools import bag_io

    js = plan.config.joint_states
    read = joint_state_reader(tuple(plan.config.joint_names), js.merge_partial, js.max_staleness)
    js_times, js_positions = [], []
    for msg in bag.messages([plan.robot.joint_state_topic], plan.begin_ns, plan.end_ns):
        state = bag_io.decode(msg)
        try:
            positions, _ = read(state, msg.time * 1e-9)
        except ObservationError as exc:
            if js.merge_partial:
                continue  # partial messages before every joint was heard, or a stale joint
            raise bag_io.NoJointStatesError(
                f"joint states on '{msg.topic}' at bag time {msg.time - bag.start_time:.3f} s cannot be used "
                f'for the configured joint_names: {exc}') from exc
        js_times.append(msg.time)
        js_positions.append(positions)
    if not js_times:
        raise bag_io.NoJointStatesError(
            f"bag {bag.path} has no joint states on '{plan.robot.joint_state_topic}' between "
            f'{(plan.begin_ns - bag.start_ns) * 1e-9:.3f} s and {(plan.end_ns - bag.start_ns) * 1e-9:.3f} s')
    if plan.command_topic is None:
        return 'joint_states', plan.robot.joint_state_topic, np.array(js_times), np.array(js_positions)

    times, positions = [], []
    joint_order = JointOrder(plan.config.joint_names)
    for msg in bag.messages([plan.command_topic], plan.begin_ns, plan.end_ns):
        traj = bag_io.decode(msg)
        if not traj.points:
            continue
        order = joint_order(traj.joint_names)
        if order is None:
            continue
        point = traj.points[0]
        stamp = stamp_to_seconds(traj.header.stamp)
        start = stamp if stamp > 0 else msg.time
        times.append(start + stamp_to_seconds(point.time_from_start))
        positions.append(np.asarray(point.positions, dtype=np.float64)[order])
    if not times:  # recorded commands for other joints only: compare with joint states
        return 'joint_states', plan.robot.joint_state_topic, np.array(js_times), np.array(js_positions)
    return 'recorded_command', plan.command_topic, np.array(times), np.array(positions)


def instruction_before_window(bag, plan: ReplayPlan) -> Any:
    """The bag's newest instruction (a BagMessage) from before the window, or None.

    It is what a latched instruction topic would give a node started at the
    window's beginning.
    """
    last = None
    for msg in bag.messages([plan.instruction_topic], bag.start_ns, plan.begin_ns):
        last = msg
    return last


def record_trajectory(record: Any, now: float, topic: str, msg: Any, target_time: float,
                      positions: np.ndarray, is_hold: bool) -> None:
    """Record a trajectory produced at bag time `now`: its command row and its output bag message."""
    from vla_ros.tools import bag_io

    record.add_command(now, target_time, positions, is_hold)
    record.messages.append((int(round(now * 1e9)), topic, bag_io.JOINT_TRAJECTORY, msg))


def record_diagnostics(record: Any, now: float, msg: Any) -> None:
    from vla_ros.tools import bag_io

    record.messages.append((int(round(now * 1e9)), DIAGNOSTICS_TOPIC, bag_io.DIAGNOSTIC_ARRAY, msg))


class Progress:
    """A progress bar in seconds of bag time (nothing when disabled)."""

    def __init__(self, total: float, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=round(total, 3), unit='s', desc=desc, leave=False, dynamic_ncols=True,
                            bar_format='{l_bar}{bar}| {n:.1f}/{total:.1f} s bag time [{elapsed}<{remaining}]')
        self.shown = 0.0

    def to(self, t: float) -> None:
        # steps of 50 ms of bag time at least: a replay calls this for every message
        if self.bar is not None and t - self.shown >= 0.05:
            self.bar.update(t - self.shown)
            self.shown = t

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
