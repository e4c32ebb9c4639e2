"""`vla-ros replay`: run a policy over a recorded rosbag and compare it with what the robot did.

    vla-ros replay BAG --config ROBOT.yaml (--checkpoint DIR | --artifacts DIR) --out OUT_DIR
                   [--mode offline|live] [--rate R] [--start S --duration D]
                   [--latency fixed|measured] [--latency-ms X] [--seed S]

offline (default): the bag's messages, in bag-time order, go through the
    same code as the node: the same message conversions
    (vla_ros.ros.conversions), PolicyController (observation assembly,
    inference trigger, aggregation, limits, watchdog) and Policy. Time is
    simulated: the control timer ticks every 1 / control_rate seconds of bag
    time, and a chunk arrives `latency` after its request (fixed: --latency-ms;
    measured: the inference's own wall-clock time). No DDS. With a fixed
    latency the result is a function of the bag, the config, the checkpoint
    and --seed (the seed of the policy's noise): two runs give identical
    outputs.

live: publishes the bag's input topics (cameras, joint states, instruction)
    over DDS in real time (times --rate), with /clock, to a running
    vla_policy_node (started with use_sim_time:=true), and records the
    trajectories and diagnostics it publishes.

Topic names and types come from the robot YAML, exactly as the node reads
them. Outputs (see vla_ros.tools.replay_report): a rosbag2 bag of the
produced trajectories and diagnostics, commands.csv, metrics.json, plots,
and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
import sys
import time
from typing import Any, Callable

import numpy as np

from vla_ros.errors import VlaRosError

DEFAULT_LATENCY_MS = 100.0
DEFAULT_NODE_NAME = 'vla_policy'
DIAGNOSTICS_TOPIC = '/diagnostics'


class LiveReplayError(VlaRosError):
    """Live mode found no policy node to replay against."""


# ---------------------------------------------------------------- setup ---

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


def read_reference(bag, plan: ReplayPlan) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(kind, topic, times, positions) of the reference signal within the window.

    Also checks that the window holds joint states with every configured joint.
    """
    from vla_ros.errors import ObservationError
    from vla_ros.ros.conversions import JointStateMapper, stamp_to_seconds
    from vla_ros.tools import bag_io

    names = tuple(plan.config.joint_names)
    mapper = JointStateMapper(names)
    js_times, js_positions = [], []
    for msg in bag.messages([plan.robot.joint_state_topic], plan.begin_ns, plan.end_ns):
        state = bag_io.decode(msg)
        try:
            positions = mapper.update(state)
        except ObservationError as exc:
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
    index: dict[tuple[str, ...], np.ndarray | None] = {}
    for msg in bag.messages([plan.command_topic], plan.begin_ns, plan.end_ns):
        traj = bag_io.decode(msg)
        if not traj.points:
            continue
        key = tuple(traj.joint_names)
        if key not in index:
            where = {n: i for i, n in enumerate(key)}
            index[key] = np.array([where[n] for n in names]) if all(n in where for n in names) else None
        order = index[key]
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


def _progress(total: float, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=round(total, 3), unit='s', desc=desc, leave=False, dynamic_ncols=True,
                bar_format='{l_bar}{bar}| {n:.1f}/{total:.1f} s bag time [{elapsed}<{remaining}]')


class _Progress:

    def __init__(self, total: float, desc: str, enabled: bool):
        self.bar = _progress(total, desc, enabled)
        self.shown = 0.0

    def to(self, t: float) -> None:
        if self.bar is not None and t - self.shown >= 0.05:
            self.bar.update(t - self.shown)
            self.shown = t

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -------------------------------------------------------------- offline ---

def _diagnostic_array(name: str, status: Any, now: float, hardware_id: str = '') -> Any:
    from diagnostic_msgs.msg import DiagnosticArray

    from vla_ros.ros.conversions import diagnostic_status, seconds_to_stamp

    msg = DiagnosticArray()
    msg.header.stamp = seconds_to_stamp(now)
    msg.status = [diagnostic_status(name, status.level, status.message, status.values, hardware_id)]
    return msg


class OfflineReplay:
    """Feeds a PolicyController from bag messages on a simulated clock.

    Event order at equal times: a chunk that arrives at a tick's time is
    merged before the tick; messages at a tick's time come after the tick.
    """

    def __init__(self, plan: ReplayPlan, policy: Any, latency: str = 'fixed',
                 latency_ms: float = DEFAULT_LATENCY_MS):
        from vla_ros.controller import PolicyController
        from vla_ros.ros.conversions import JointStateMapper

        if latency not in ('fixed', 'measured'):
            raise ValueError(f"latency must be 'fixed' or 'measured', got {latency!r}")
        self.plan = plan
        self.config = plan.config
        self.policy = policy
        self.latency = latency
        self.latency_s = latency_ms / 1e3
        self.controller = PolicyController(self.config)
        self.mapper = JointStateMapper(self.config.joint_names)
        self.period = self.config.control_period
        self.pending: tuple[float, Any, float] | None = None  # (arrival, chunk or error text, obs time)
        self.latencies: list[float] = []
        self.compute: list[float] = []  # measured wall-clock seconds per inference (not in the outputs)
        self.failures = 0
        self.trajectory_topic = self.config.output.trajectory_topic or '/joint_trajectory'

    # -- inputs --------------------------------------------------------

    def deliver(self, msg: Any, now: float) -> None:
        from vla_ros.errors import ObservationError
        from vla_ros.ros.conversions import compressed_to_rgb, image_to_rgb, stamp_to_seconds
        from vla_ros.tools import bag_io

        ctl = self.controller
        key = self.plan.camera_topics.get(msg.topic)
        if key is not None:
            try:
                ros_msg = bag_io.decode(msg)
                compressed = msg.msgtype == bag_io.COMPRESSED_IMAGE
                rgb = compressed_to_rgb(ros_msg) if compressed else image_to_rgb(ros_msg)
            except (ObservationError, bag_io.BagError) as exc:
                ctl.on_input_error(key, str(exc), now)
                return
            ctl.on_image(key, rgb, stamp_to_seconds(ros_msg.header.stamp), now)
        elif msg.topic == self.plan.robot.joint_state_topic:
            ros_msg = bag_io.decode(msg)
            try:
                positions = self.mapper.update(ros_msg)
            except ObservationError as exc:
                ctl.on_input_error('joint_state', str(exc), now)
                return
            ctl.on_joint_state(positions, stamp_to_seconds(ros_msg.header.stamp), now)
        elif msg.topic == self.plan.instruction_topic and self.plan.prompt_override is None:
            ctl.on_prompt(bag_io.decode(msg).data, now)

    # -- inference -----------------------------------------------------

    def maybe_request(self, now: float) -> None:
        if self.pending is not None:
            return
        obs = self.controller.next_request(now)
        if obs is None:
            return
        from vla_ros.errors import VlaRosError

        started = time.perf_counter()
        try:
            result: Any = self.policy.infer(obs)
        except VlaRosError as exc:
            result = f'{type(exc).__name__}: {exc}'
        compute = time.perf_counter() - started
        self.compute.append(compute)
        delay = compute if self.latency == 'measured' else self.latency_s
        if not isinstance(result, str):
            # The controller reports chunk timings in diagnostics: give it the simulated
            # time, so that a fixed latency keeps every output reproducible.
            result = dataclasses.replace(result, timings={'total': delay})
        self.pending = (now + delay, result, obs.timestamp)

    def arrive(self) -> None:
        arrival, result, obs_time = self.pending
        self.pending = None
        if isinstance(result, str):
            self.failures += 1
            self.controller.on_inference_failed(result, arrival)
        else:
            self.latencies.append(arrival - obs_time)
            self.controller.on_chunk(result, arrival)
        self.maybe_request(arrival)

    # -- the loop ------------------------------------------------------

    def run(self, bag: Any, record: Any, progress: bool = True) -> None:
        from vla_ros.ros.conversions import trajectory_msg
        from vla_ros.tools import bag_io

        plan = self.plan
        begin, end = plan.begin_ns * 1e-9, plan.end_ns * 1e-9
        names = tuple(self.config.joint_names)
        velocities = self.config.output.velocities
        diag_period = 1.0 / self.config.diagnostics.rate
        self.controller.activate(begin)
        if plan.prompt_override:
            self.controller.on_prompt(plan.prompt_override, begin)
        elif plan.instruction_topic:
            # the newest instruction from before the window, as a latched topic would give it
            last = None
            for msg in bag.messages([plan.instruction_topic], bag.start_ns, plan.begin_ns):
                last = msg
            if last is not None:
                self.controller.on_prompt(bag_io.decode(last).data, begin)

        k = 1
        next_tick = begin + self.period
        next_diag = begin + diag_period
        bar = _Progress(end - begin, 'replay (offline)', progress)

        def advance(until: float) -> None:
            nonlocal k, next_tick, next_diag
            while True:
                arrival = self.pending[0] if self.pending is not None else math.inf
                tick = next_tick if next_tick <= end else math.inf
                t = min(arrival, tick)
                if t > until or t == math.inf:
                    return
                if arrival <= tick:
                    self.arrive()
                    continue
                now = tick
                plan_ = self.controller.tick(now)
                if plan_ is not None:
                    record.add_command(now, now + float(plan_.times_from_start[0]), plan_.positions[0],
                                       plan_.is_hold)
                    msg = trajectory_msg(names, plan_.times_from_start, plan_.positions,
                                         plan_.velocities if velocities else None)
                    record.messages.append((int(round(now * 1e9)), self.trajectory_topic,
                                            bag_io.JOINT_TRAJECTORY, msg))
                if now >= next_diag:
                    status = self.controller.status(now)
                    record.messages.append((int(round(now * 1e9)), DIAGNOSTICS_TOPIC, bag_io.DIAGNOSTIC_ARRAY,
                                            _diagnostic_array(f'{DEFAULT_NODE_NAME}: policy', status, now,
                                                              self.config.diagnostics.hardware_id)))
                    next_diag += diag_period
                self.maybe_request(now)
                k += 1
                next_tick = begin + k * self.period
                bar.to(now - begin)

        try:
            for msg in bag.messages(plan.input_topics, plan.begin_ns, plan.end_ns):
                now = msg.time
                advance(now)
                self.deliver(msg, now)
                self.maybe_request(now)
                bar.to(now - begin)
            advance(end)
        finally:
            bar.close()
        status = self.controller.status(end)
        record.chunks = int(status.values.get('chunks.accepted', 0))
        record.skipped_actions = int(status.values.get('chunks.skipped_actions', 0))
        record.latencies = list(self.latencies)
        record.inference_failures = self.failures
        record.info['controller'] = {
            'final_state': status.values.get('state'),
            'final_message': status.message,
            'late_chunks': int(status.values.get('chunks.ignored_late', 0)),
            'requests': int(status.values.get('inference.requests', 0)),
            'rejected_inputs': {k: v[0] for k, v in sorted(self.controller.events().items())},
        }


# ----------------------------------------------------------------- live ---

def _resolve_topic(topic: str, node_name: str) -> str:
    if topic.startswith('~/'):
        return f'/{node_name}/{topic[2:]}'
    return topic if topic.startswith('/') else f'/{topic}'


def _diag_value(msg: Any, key: str, node_name: str) -> str | None:
    for status in msg.status:
        if node_name not in status.name:
            continue
        for kv in status.values:
            if kv.key == key:
                return kv.value
    return None


def _as_float(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


_HEADER_FIRST = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage', 'sensor_msgs/msg/JointState')


def restamp(data: bytes, msgtype: str, offset_ns: int, scale: float = 1.0, origin_ns: int = 0) -> bytes:
    """CDR bytes with header.stamp mapped to origin + (stamp - origin) / scale + offset.

    Zero stamps stay zero (the node falls back to the receipt time).

    Only for types whose first field is a std_msgs/Header: its stamp (int32 sec,
    uint32 nanosec) sits right after the 4-byte CDR encapsulation header.
    """
    import struct

    if msgtype not in _HEADER_FIRST or len(data) < 12:
        return data
    fmt = '<iI' if data[1] == 1 else '>iI'
    sec, nanosec = struct.unpack_from(fmt, data, 4)
    stamp = sec * 1_000_000_000 + nanosec
    if stamp <= 0:
        return data
    mapped = origin_ns + int(round((stamp - origin_ns) / scale)) + offset_ns
    buf = bytearray(data)
    struct.pack_into(fmt, buf, 4, mapped // 1_000_000_000, mapped % 1_000_000_000)
    return bytes(buf)


class LiveReplay:
    """Publishes the bag over DDS and records what the node publishes.

    clock 'sim': publishes /clock (bag time, advancing at --rate) and the
        messages with their recorded stamps; the node must run with
        use_sim_time:=true.
    clock 'wall': no /clock; header stamps are shifted onto the current ROS
        wall time (compressed by --rate), for a node on the system clock.
    Either way the recorded trajectories are placed on the bag's timeline by
    the replayer's own playback clock.
    """

    def __init__(self, plan: ReplayPlan, rate: float = 1.0, node_name: str = DEFAULT_NODE_NAME,
                 wait_timeout: float = 60.0, clock: str = 'sim', clock_rate: float = 200.0,
                 abort_check: Callable[[], None] | None = None):
        if not rate > 0 or not math.isfinite(rate):
            raise LiveReplayError(f'--rate must be a number > 0, got {rate}')
        if clock not in ('sim', 'wall'):
            raise LiveReplayError(f"--clock must be 'sim' or 'wall', got {clock!r}")
        self.plan = plan
        self.rate = rate
        self.node_name = node_name
        self.wait_timeout = wait_timeout
        self.clock = clock
        self.clock_period = 1.0 / clock_rate
        self.abort_check = abort_check or (lambda: None)
        config = plan.config
        topic = config.output.debug_trajectory_topic if config.dry_run else config.output.trajectory_topic
        self.trajectory_topic = _resolve_topic(topic or '/joint_trajectory', node_name)

    def run(self, bag: Any, record: Any, progress: bool = True) -> None:
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        from vla_ros.ros.conversions import seconds_to_stamp, stamp_to_seconds
        from vla_ros.tools import bag_io

        plan = self.plan
        names = tuple(plan.config.joint_names)
        begin, end = plan.begin_ns * 1e-9, plan.end_ns * 1e-9
        own_context = not rclpy.ok()
        if own_context:
            rclpy.init(args=None)
        node = rclpy.create_node('vla_replay')
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        lock = threading.Lock()
        state: dict[str, Any] = {'sim_now': begin, 'diag': None, 'receipts': []}
        index_cache: dict[tuple[str, ...], np.ndarray | None] = {}

        def sim_now() -> float:
            with lock:
                return state['sim_now']

        def on_trajectory(msg: Any) -> None:
            now = sim_now()
            wall = time.monotonic()
            if state.get('done'):
                return  # produced after the window (its inputs had all been sent)
            key = tuple(msg.joint_names)
            if key not in index_cache:
                where = {n: i for i, n in enumerate(key)}
                index_cache[key] = (np.array([where[n] for n in names])
                                    if all(n in where for n in names) else None)
            order = index_cache[key]
            if order is None or not msg.points:
                return
            positions = np.array([p.positions for p in msg.points], dtype=np.float64)[:, order]
            # A hold repeats one position with zero velocities (vla_ros.actions.trajectory.hold_plan).
            is_hold = bool(np.all(positions == positions[0])
                           and all(np.all(np.asarray(p.velocities) == 0.0) for p in msg.points))
            with lock:
                record.add_command(now, now + stamp_to_seconds(msg.points[0].time_from_start), positions[0],
                                   is_hold)
                record.messages.append((int(round(now * 1e9)), self.trajectory_topic,
                                        bag_io.JOINT_TRAJECTORY, msg))
                state['receipts'].append(wall)

        def on_diagnostics(msg: Any) -> None:
            now = sim_now()
            if not any(self.node_name in s.name for s in msg.status):
                return
            with lock:
                state['diag'] = msg
                if state.get('done'):
                    state['diag_after'] = msg
                    return
                record.messages.append((int(round(now * 1e9)), DIAGNOSTICS_TOPIC,
                                        bag_io.DIAGNOSTIC_ARRAY, msg))

        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(bag_io.message_class(bag_io.JOINT_TRAJECTORY), self.trajectory_topic,
                                 on_trajectory, reliable)
        node.create_subscription(bag_io.message_class(bag_io.DIAGNOSTIC_ARRAY), DIAGNOSTICS_TOPIC,
                                 on_diagnostics, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        publishers = {}
        for topic in plan.input_topics:
            publishers[topic] = node.create_publisher(
                bag_io.message_class(bag.topics[topic].msgtype), topic,
                QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        clock_pub = None
        if self.clock == 'sim':
            clock_pub = node.create_publisher(
                Clock, '/clock', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        spinner = threading.Thread(target=executor.spin, name='vla_replay_spin', daemon=True)
        spinner.start()

        def publish_clock(t: float) -> None:
            if clock_pub is not None:
                clock_pub.publish(Clock(clock=seconds_to_stamp(t)))

        bar = None
        wall_duration = replayer_cpu = 0.0
        try:
            self._wait_for_node(node, publishers, publish_clock, begin)
            wall0 = time.monotonic()
            cpu0 = time.process_time()
            offset_ns = 0
            if self.clock == 'wall':
                # bag time `begin` becomes the node's "now"
                offset_ns = node.get_clock().now().nanoseconds - plan.begin_ns

            def prepare(msg: Any) -> bytes:
                if self.clock == 'sim':
                    return msg.data
                return restamp(msg.data, msg.msgtype, offset_ns, self.rate, plan.begin_ns)

            # the newest instruction from before the window, as a latched topic would give it
            if plan.instruction_topic and plan.prompt_override is None:
                last = None
                for msg in bag.messages([plan.instruction_topic], bag.start_ns, plan.begin_ns):
                    last = msg
                if last is not None:
                    publishers[plan.instruction_topic].publish(last.data)
            if plan.prompt_override is not None and plan.instruction_topic:
                from std_msgs.msg import String

                publishers[plan.instruction_topic].publish(String(data=plan.prompt_override))
            bar = _Progress(end - begin, f'replay (live x{self.rate:g}, {self.clock} clock)', progress)
            last_clock = -math.inf

            def wait_until(t_sim: float) -> None:
                nonlocal last_clock
                due = wall0 + (t_sim - begin) / self.rate
                while True:
                    wall = time.monotonic()
                    now = t_sim if wall >= due else min(t_sim, begin + (wall - wall0) * self.rate)
                    with lock:
                        state['sim_now'] = now
                    if wall - last_clock >= self.clock_period or wall >= due:
                        publish_clock(now)
                        last_clock = wall
                    bar.to(now - begin)
                    if wall >= due:
                        return
                    time.sleep(min(self.clock_period, due - wall))

            next_check = 0.0
            for msg in bag.messages(plan.input_topics, plan.begin_ns, plan.end_ns):
                if msg.topic == plan.instruction_topic and plan.prompt_override is not None:
                    continue
                if msg.time >= next_check:
                    self.abort_check()
                    next_check = msg.time + 0.5
                wait_until(msg.time)
                publishers[msg.topic].publish(prepare(msg))
            wait_until(end)
            wall_duration = time.monotonic() - wall0
            replayer_cpu = time.process_time() - cpu0
            with lock:
                state['done'] = True
                state['diag_after'] = None
            # the node's counters (chunks, skipped actions) as of the end: its next diagnostics
            deadline = time.monotonic() + 1.2 / plan.config.diagnostics.rate
            while time.monotonic() < deadline:
                with lock:
                    if state['diag_after'] is not None:
                        break
                time.sleep(0.02)
        finally:
            if bar is not None:
                bar.close()
            executor.shutdown(timeout_sec=1.0)
            spinner.join(timeout=2.0)
            node.destroy_node()
            if own_context:
                rclpy.try_shutdown()

        with lock:
            diag = state['diag']
            receipts = np.array(state['receipts'])
        if diag is not None:
            record.chunks = int(_as_float(_diag_value(diag, 'chunks.accepted', self.node_name)) or 0)
            skipped = _as_float(_diag_value(diag, 'chunks.skipped_actions', self.node_name))
            record.skipped_actions = None if skipped is None else int(skipped)
            failures = _as_float(_diag_value(diag, 'inference.failures', self.node_name))
            record.inference_failures = int(failures or 0)
            record.reported_latency_ms = (
                _as_float(_diag_value(diag, 'inference.latency_p50_ms', self.node_name)),
                _as_float(_diag_value(diag, 'inference.latency_p99_ms', self.node_name)))
            record.info['node_diagnostics'] = {kv.key: kv.value for s in diag.status
                                               if self.node_name in s.name for kv in s.values}
        periods = np.diff(receipts) * 1e3 if receipts.size > 1 else np.zeros(0)
        record.receive_periods_ms = periods.tolist()
        record.info['live'] = {
            'rate': self.rate,
            'clock': self.clock,
            'wall_duration_s': wall_duration,
            'replayer_cpu_s': replayer_cpu,
            'trajectory_topic': self.trajectory_topic,
            'received_rate_hz': ((receipts.size - 1) / (receipts[-1] - receipts[0])
                                 if receipts.size > 1 and receipts[-1] > receipts[0] else None),
            'receive_period_ms': {
                'p50': float(np.percentile(periods, 50)) if periods.size else None,
                'p99': float(np.percentile(periods, 99)) if periods.size else None,
                'max': float(periods.max()) if periods.size else None,
            },
            'diagnostics_received': diag is not None,
        }

    def _wait_for_node(self, node: Any, publishers: dict, publish_clock: Any, begin: float) -> None:
        """Wait until the node subscribes to every input and publishes its trajectory topic."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            self.abort_check()
            publish_clock(begin)
            missing = [t for t, p in publishers.items() if p.get_subscription_count() == 0]
            no_output = node.count_publishers(self.trajectory_topic) == 0
            if not missing and not no_output:
                break
            if time.monotonic() > deadline:
                problems = []
                if missing:
                    problems.append(f'nothing subscribes to {missing}')
                if no_output:
                    problems.append(f"nothing publishes '{self.trajectory_topic}'")
                sim = ' -p use_sim_time:=true' if self.clock == 'sim' else ''
                raise LiveReplayError(
                    f'no running {self.node_name} node found after {self.wait_timeout:g} s ('
                    + '; '.join(problems) + '); start it with the same config, e.g. '
                    '`python -m vla_ros.ros.node '
                    f'--ros-args --params-file CONFIG -p checkpoint:=DIR -p auto_activate:=true{sim}`, '
                    'and check ROS_DOMAIN_ID')
            time.sleep(0.05)
        # discovery goes both ways: give the node's side a moment to match our publishers
        for _ in range(25):
            publish_clock(begin)
            time.sleep(0.02)


# ------------------------------------------------------------------ CLI ---

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bag', type=Path,
                        help='rosbag2 directory (sqlite3 or mcap), .db3 / .mcap file, or ROS 1 .bag')
    parser.add_argument('--config', required=True, type=Path, help="robot YAML (the node's parameter file)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--checkpoint', type=Path, help='checkpoint directory (offline mode)')
    source.add_argument('--artifacts', type=Path, help='exported artifact directory (offline mode)')
    parser.add_argument('--out', required=True, type=Path, help='output directory (created; must not exist)')
    parser.add_argument('--mode', choices=('offline', 'live'), default='offline',
                        help='offline: simulated time, no DDS (default); live: against a running node')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='live mode: playback speed factor (default 1)')
    parser.add_argument('--start', type=float, default=0.0,
                        help='seconds into the bag to start at (default 0)')
    parser.add_argument('--duration', type=float, default=None,
                        help='seconds of bag to replay (default: all)')
    parser.add_argument('--latency', choices=('fixed', 'measured'), default='fixed',
                        help='offline: simulated inference latency, fixed (--latency-ms, reproducible) or '
                        'the measured wall-clock time of each inference (default fixed)')
    parser.add_argument('--latency-ms', type=float, default=DEFAULT_LATENCY_MS,
                        help=f'offline: the fixed inference latency in ms (default {DEFAULT_LATENCY_MS:g})')
    parser.add_argument('--seed', type=int, default=0, help='offline: seed of the policy noise (default 0)')
    parser.add_argument('--command-topic', default=None,
                        help="recorded JointTrajectory to compare with (default: the config's "
                        'output.trajectory_topic; without it the joint states are the reference)')
    parser.add_argument('--prompt', default=None, help="instruction to use instead of the bag's")
    parser.add_argument('--out-storage', choices=('sqlite3', 'mcap'), default='sqlite3',
                        help='storage of the output bag (default sqlite3)')
    parser.add_argument('--clock', choices=('sim', 'wall'), default='sim',
                        help='live: sim publishes /clock and keeps the recorded stamps (node runs with '
                        'use_sim_time:=true); wall shifts the stamps to the current time, no /clock '
                        '(default sim)')
    parser.add_argument('--node-name', default=DEFAULT_NODE_NAME, help='live: name of the policy node')
    parser.add_argument('--wait', type=float, default=60.0,
                        help='live: seconds to wait for the node (default 60)')
    parser.add_argument('--overwrite', action='store_true', help='replace OUT_DIR if it exists')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def load_policy(config: Any, directory: Path, seed: int) -> Any:
    from vla_ros.policy import Policy

    options = dataclasses.replace(config.policy.to_policy_options(), seed=seed)
    return Policy.from_checkpoint(directory, options)


def replay(args: argparse.Namespace, abort_check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run a replay from parsed arguments; returns the metrics (also written to --out).

    abort_check: live mode calls it while waiting and playing; it raises to stop.
    """
    from vla_ros.errors import CheckpointError
    from vla_ros.tools import bag_io, replay_report

    out = Path(args.out)
    replay_report.prepare_out_dir(out, args.overwrite)
    config = bag_io.load_config(args.config)
    source = args.checkpoint or args.artifacts
    if args.mode == 'offline':
        if source is None:
            if not config.checkpoint:
                raise CheckpointError('offline replay needs --checkpoint DIR or --artifacts DIR '
                                      '(or a checkpoint in the config)')
            source = Path(config.checkpoint)
        if args.latency_ms < 0 or not math.isfinite(args.latency_ms):
            raise bag_io.BagError(f'--latency-ms must be >= 0, got {args.latency_ms}')
    started = time.perf_counter()
    compute_ms = np.zeros(0)
    with bag_io.BagReader(args.bag) as bag:
        plan = plan_replay(bag, config, args.command_topic, args.start, args.duration, args.prompt)
        kind, ref_topic, ref_t, ref_p = read_reference(bag, plan)
        record = replay_report.ReplayRecord(
            mode=args.mode, joint_names=tuple(config.joint_names),
            start_time=plan.begin_ns * 1e-9, end_time=plan.end_ns * 1e-9, control_rate=config.control_rate,
            reference_kind=kind, reference_topic=ref_topic, reference_times=ref_t, reference_positions=ref_p)
        record.info.update({
            'bag': str(args.bag), 'bag_storage': bag.storage, 'config': str(args.config),
            'window_s': [(plan.begin_ns - bag.start_ns) * 1e-9, (plan.end_ns - bag.start_ns) * 1e-9],
        })
        if args.mode == 'offline':
            policy = load_policy(config, source, args.seed)
            record.info.update({'checkpoint': str(source), 'seed': args.seed, 'latency_model': args.latency,
                                'latency_ms': args.latency_ms if args.latency == 'fixed' else None})
            offline = OfflineReplay(plan, policy, args.latency, args.latency_ms)
            offline.run(bag, record, not args.no_progress)
            compute_ms = np.asarray(offline.compute) * 1e3
        else:
            record.info.update({'rate': args.rate, 'clock': args.clock, 'node_name': args.node_name})
            LiveReplay(plan, args.rate, args.node_name, args.wait, args.clock,
                       abort_check=abort_check).run(bag, record, not args.no_progress)
    metrics = replay_report.write_report(record, out, args.out_storage, args.overwrite)
    elapsed = time.perf_counter() - started
    print(replay_report.summary_table(metrics))
    if compute_ms.size and args.latency == 'fixed':
        print(f'  (measured inference compute on this machine: p50 {np.percentile(compute_ms, 50):.1f} ms, '
              f'p99 {np.percentile(compute_ms, 99):.1f} ms; the simulation used a fixed '
              f'{args.latency_ms:g} ms)')
    print(f'wrote {out}/ ({replay_report.METRICS_NAME}, {replay_report.CSV_NAME}, {replay_report.BAG_NAME}/, '
          f'{replay_report.PLOTS_DIR}/joints.png, {replay_report.PLOTS_DIR}/latency.png) in {elapsed:.1f} s')
    sys.stdout.flush()
    return metrics


def run(args: argparse.Namespace) -> int:
    replay(args)
    return 0
