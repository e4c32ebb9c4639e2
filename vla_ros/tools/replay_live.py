"""Live replay: the bag over DDS to a running vla_policy_node, recording what it publishes.

The bag's input topics (cameras, joint states, instruction) are published in
real time (times --rate), with /clock for a node started with
use_sim_time:=true, or re-stamped onto the wall clock (--clock wall); the
trajectories and diagnostics the node publishes are recorded.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

import numpy as np

from vla_ros.errors import VlaRosError
from vla_ros.tools.replay_plan import (DEFAULT_NODE_NAME, DIAGNOSTICS_TOPIC, instruction_before_window,
                                       JointOrder, Progress, record_diagnostics, record_trajectory,
                                       ReplayPlan)


class LiveReplayError(VlaRosError):
    """Live mode found no policy node to replay against."""


def resolve_topic(topic: str, node_name: str) -> str:
    """The absolute name of a node's topic (`~/x` is private to the node)."""
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


class _NodeRecorder:
    """Records what the node publishes, at the bag time the playback has reached.

    The callbacks run on the spin thread, the playback on the caller's.
    """

    def __init__(self, record: Any, joint_names, trajectory_topic: str, node_name: str, begin: float):
        self.record = record
        self.trajectory_topic = trajectory_topic
        self.node_name = node_name
        self.joint_order = JointOrder(joint_names)
        self.lock = threading.Lock()
        self.sim_now = begin
        self.done = False  # the window has been played
        self.diag = None  # the node's newest diagnostics
        self.diag_after = None  # its first diagnostics once done
        self.receipts: list[float] = []  # monotonic wall time of each trajectory

    def now(self) -> float:
        with self.lock:
            return self.sim_now

    def set_now(self, now: float) -> None:
        with self.lock:
            self.sim_now = now

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.diag_after = None

    def on_trajectory(self, msg: Any) -> None:
        from vla_ros.ros.builtin_time import stamp_to_seconds

        now = self.now()
        wall = time.monotonic()
        if self.done:
            return  # produced after the window (its inputs had all been sent)
        order = self.joint_order(msg.joint_names)
        if order is None or not msg.points:
            return
        positions = np.array([p.positions for p in msg.points], dtype=np.float64)[:, order]
        # A hold repeats one position with zero velocities (vla_ros.actions.trajectory.hold_plan).
        is_hold = bool(np.all(positions == positions[0])
                       and all(np.all(np.asarray(p.velocities) == 0.0) for p in msg.points))
        with self.lock:
            record_trajectory(self.record, now, self.trajectory_topic, msg,
                              now + stamp_to_seconds(msg.points[0].time_from_start), positions[0], is_hold)
            self.receipts.append(wall)

    def on_diagnostics(self, msg: Any) -> None:
        now = self.now()
        if not any(self.node_name in s.name for s in msg.status):
            return
        with self.lock:
            self.diag = msg
            if self.done:
                self.diag_after = msg
                return
            record_diagnostics(self.record, now, msg)


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
        self.trajectory_topic = resolve_topic(topic or '/joint_trajectory', node_name)

    def run(self, bag: Any, record: Any, progress: bool = True) -> None:
        from vla_ros.ros.bag_player import BagPlayer
        from vla_ros.tools import bag_io

        from vla_ros.tools.replay_offline import model_input_sheet

        plan = self.plan
        begin = plan.begin_ns * 1e-9
        self.sheet = record.model_inputs = model_input_sheet(plan, begin, plan.end_ns * 1e-9)
        recorder = _NodeRecorder(record, plan.config.joint_names, self.trajectory_topic, self.node_name,
                                 begin)
        inputs = {topic: bag_io.message_class(bag.topics[topic].msgtype) for topic in plan.input_topics}
        with BagPlayer(inputs, self.trajectory_topic, recorder.on_trajectory, DIAGNOSTICS_TOPIC,
                       recorder.on_diagnostics, sim_clock=self.clock == 'sim') as player:
            self._wait_for_node(player, begin)
            wall_duration, replayer_cpu = self._play(bag, player, recorder, progress)
            # the node's counters (chunks, skipped actions) as of the end: its next diagnostics
            deadline = time.monotonic() + 1.2 / plan.config.diagnostics.rate
            while time.monotonic() < deadline:
                with recorder.lock:
                    if recorder.diag_after is not None:
                        break
                time.sleep(0.02)

        with recorder.lock:
            diag = recorder.diag
            receipts = np.array(recorder.receipts)
        self._fill_record(record, diag, receipts, wall_duration, replayer_cpu)

    def _play(self, bag: Any, player: Any, recorder: _NodeRecorder, progress: bool) -> tuple[float, float]:
        """Publish the window's messages on time; returns its wall-clock and CPU seconds."""
        plan = self.plan
        begin, end = plan.begin_ns * 1e-9, plan.end_ns * 1e-9
        wall0 = time.monotonic()
        cpu0 = time.process_time()
        offset_ns = 0
        if self.clock == 'wall':
            # bag time `begin` becomes the node's "now"
            offset_ns = player.now_ns() - plan.begin_ns

        def prepare(msg: Any) -> bytes:
            if self.clock == 'sim':
                return msg.data
            return restamp(msg.data, msg.msgtype, offset_ns, self.rate, plan.begin_ns)

        if plan.instruction_topic and plan.prompt_override is None:
            last = instruction_before_window(bag, plan)
            if last is not None:
                player.publish(plan.instruction_topic, last.data)
        if plan.prompt_override is not None and plan.instruction_topic:
            player.publish_text(plan.instruction_topic, plan.prompt_override)
        bar = Progress(end - begin, f'replay (live x{self.rate:g}, {self.clock} clock)', progress)
        last_clock = -math.inf

        def wait_until(t_sim: float) -> None:
            nonlocal last_clock
            due = wall0 + (t_sim - begin) / self.rate
            while True:
                wall = time.monotonic()
                now = t_sim if wall >= due else min(t_sim, begin + (wall - wall0) * self.rate)
                recorder.set_now(now)
                if wall - last_clock >= self.clock_period or wall >= due:
                    player.publish_clock(now)
                    last_clock = wall
                bar.to(now - begin)
                if wall >= due:
                    return
                time.sleep(min(self.clock_period, due - wall))

        try:
            next_check = 0.0
            for msg in bag.messages(plan.input_topics, plan.begin_ns, plan.end_ns):
                if msg.topic == plan.instruction_topic and plan.prompt_override is not None:
                    continue
                if msg.time >= next_check:
                    self.abort_check()
                    next_check = msg.time + 0.5
                wait_until(msg.time)
                player.publish(msg.topic, prepare(msg))
                self._sample(msg)
            wait_until(end)
            wall_duration = time.monotonic() - wall0
            replayer_cpu = time.process_time() - cpu0
            recorder.finish()
        finally:
            bar.close()
        return wall_duration, replayer_cpu

    def _sample(self, msg: Any) -> None:
        """Keep a camera frame for the contact sheet, decoded after playback (not in this loop)."""
        key = self.plan.camera_topics.get(msg.topic)
        if key is None or self.sheet is None or not self.sheet.needs(key, msg.time):
            return

        def decode() -> np.ndarray:
            from vla_ros.ros.image_msgs import compressed_to_rgb, image_to_rgb
            from vla_ros.tools import bag_io

            ros_msg = bag_io.decode(msg)
            compressed = msg.msgtype == bag_io.COMPRESSED_IMAGE
            return compressed_to_rgb(ros_msg) if compressed else image_to_rgb(ros_msg)

        self.sheet.add(key, decode, msg.time)

    def _fill_record(self, record: Any, diag: Any, receipts: np.ndarray, wall_duration: float,
                     replayer_cpu: float) -> None:
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

    def _wait_for_node(self, player: Any, begin: float) -> None:
        """Wait until the node subscribes to every input and publishes its trajectory topic."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            self.abort_check()
            player.publish_clock(begin)
            missing = player.inputs_without_subscribers()
            no_output = player.publisher_count(self.trajectory_topic) == 0
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
            player.publish_clock(begin)
            time.sleep(0.02)
