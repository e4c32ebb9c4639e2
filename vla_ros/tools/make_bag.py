"""`vla-ros make-bag`: a synthetic but realistic rosbag2 recording for a robot config.

What it holds (topics and message types from the robot YAML, as the node
subscribes to them):

- every camera at 30 Hz: coloured shapes that move with the arm over a
  per-camera background, as sensor_msgs/Image (rgb8 / bgr8) or
  sensor_msgs/CompressedImage (jpeg), whichever the config names;
- joint states at 100 Hz following smooth motion (a sum of sines per joint,
  kept inside the configured position and velocity limits), with the joint
  names in a shuffled order plus one extra joint the config does not know;
- the command the robot "actually got": a JointTrajectory at the control
  rate whose single point is the joint state a few steps ahead;
- the instruction (std_msgs/String) at the start.

Header stamps equal bag (receive) times. The bag starts at a fixed ROS time
and everything is a function of --seed, so the same arguments always give
the same messages.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
import dataclasses
import heapq
import math
from pathlib import Path
from typing import Any

import numpy as np

from vla_ros.tools.bag_io import CameraTopic, RobotTopics

CAMERA_RATE = 30.0
JOINT_STATE_RATE = 100.0
START_TIME_NS = 1_700_000_000 * 1_000_000_000  # a plausible ROS time, fixed for reproducibility
EXTRA_JOINT = 'passive_caster_joint'
COMMAND_LEAD = 0.1  # s: the recorded command is the joint state this far ahead
DEFAULT_PROMPT = 'pick up the red block and place it in the bowl'


@dataclasses.dataclass(frozen=True)
class SyntheticMotion:
    """Smooth joint motion q(t) = center + sum_k amp_k sin(2 pi f_k t + phase_k), per joint."""

    center: np.ndarray  # (D,)
    amplitude: np.ndarray  # (D, K)
    frequency: np.ndarray  # (D, K) Hz
    phase: np.ndarray  # (D, K)

    @classmethod
    def create(cls, robot: RobotTopics, seed: int, terms: int = 3) -> SyntheticMotion:
        rng = np.random.default_rng(seed)
        dims = len(robot.joint_names)
        lower = np.asarray(robot.lower, dtype=np.float64)
        upper = np.asarray(robot.upper, dtype=np.float64)
        # Continuous joints (infinite limits) move within +-1 rad of zero.
        lower = np.where(np.isfinite(lower), lower, -1.0)
        upper = np.where(np.isfinite(upper), upper, 1.0)
        center = 0.5 * (lower + upper) + rng.uniform(-0.1, 0.1, dims) * (upper - lower)
        half_range = np.minimum(center - lower, upper - center)  # distance to the nearest limit
        frequency = rng.uniform(0.05, 0.35, (dims, terms))
        weights = rng.uniform(0.3, 1.0, (dims, terms))
        weights /= weights.sum(axis=1, keepdims=True)
        amplitude = weights * (0.6 * half_range)[:, None]  # |sum| <= 60 % of the distance to a limit
        # Peak speed sum(amp * 2 pi f) must stay below half the velocity limit.
        max_velocity = np.asarray(robot.max_velocity, dtype=np.float64)
        peak = (amplitude * 2 * np.pi * frequency).sum(axis=1)
        scale = np.where(np.isfinite(max_velocity) & (peak > 0),
                         np.minimum(1.0, 0.5 * max_velocity / np.maximum(peak, 1e-12)), 1.0)
        amplitude = amplitude * scale[:, None]
        phase = rng.uniform(0, 2 * np.pi, (dims, terms))
        return cls(center, amplitude, frequency, phase)

    def position(self, t: float) -> np.ndarray:
        angle = 2 * np.pi * self.frequency * t + self.phase
        return self.center + (self.amplitude * np.sin(angle)).sum(axis=1)

    def velocity(self, t: float) -> np.ndarray:
        angle = 2 * np.pi * self.frequency * t + self.phase
        return (self.amplitude * 2 * np.pi * self.frequency * np.cos(angle)).sum(axis=1)


# ----------------------------------------------------------------- images ---

_SHAPE_COLOURS = ((220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 40), (200, 60, 200))


def render_frame(camera_index: int, width: int, height: int, t: float, q: np.ndarray) -> np.ndarray:
    """An RGB frame: a per-camera gradient background with shapes that follow the joints."""
    import cv2

    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = np.array([(60, 70, 90), (90, 80, 60), (70, 90, 70), (80, 60, 90)][camera_index % 4], np.float32)
    frame = np.empty((height, width, 3), np.float32)
    frame[...] = base
    frame += (40.0 * ys + 25.0 * xs)[:, :, None]
    frame = frame.astype(np.uint8)
    # a table-like band
    cv2.rectangle(frame, (0, int(0.7 * height)), (width - 1, height - 1), (120, 100, 80), -1)
    size = max(4, min(width, height) // 8)
    dims = q.shape[0]
    for k in range(3):
        j0, j1 = (camera_index + 2 * k) % dims, (camera_index + 2 * k + 1) % dims
        cx = int(width * (0.5 + 0.35 * math.sin(1.3 * q[j0] + k + 0.2 * t)))
        cy = int(height * (0.45 + 0.3 * math.cos(1.1 * q[j1] + 2 * k)))
        colour = _SHAPE_COLOURS[(camera_index + k) % len(_SHAPE_COLOURS)]
        if k == 0:
            cv2.circle(frame, (cx, cy), size, colour, -1)
        elif k == 1:
            cv2.rectangle(frame, (cx - size, cy - size // 2), (cx + size, cy + size // 2), colour, -1)
        else:
            pts = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
            cv2.fillPoly(frame, [pts], colour)
    return frame


def _time(ts: Any, time_ns: int) -> Any:
    sec, nanosec = divmod(time_ns, 1_000_000_000)
    return ts.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)


def _header(ts: Any, time_ns: int, frame_id: str) -> Any:
    return ts.types['std_msgs/msg/Header'](stamp=_time(ts, time_ns), frame_id=frame_id)


def image_message(ts: Any, camera: CameraTopic, rgb: np.ndarray, time_ns: int) -> Any:
    """A rosbags Image / CompressedImage message of an RGB frame."""
    import cv2

    header = _header(ts, time_ns, f'{camera.key}_optical_frame')
    if camera.msgtype.endswith('CompressedImage'):
        fmt = camera.encoding or 'jpeg'
        ext, params = ('.png', []) if fmt == 'png' else ('.jpg', [cv2.IMWRITE_JPEG_QUALITY, 85])
        ok, encoded = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f'OpenCV could not encode a {rgb.shape} frame as {fmt}')
        return ts.types['sensor_msgs/msg/CompressedImage'](
            header=header, format=fmt, data=np.ascontiguousarray(encoded.reshape(-1)))
    encoding = camera.encoding or 'rgb8'
    conversions = {'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'mono8': cv2.COLOR_RGB2GRAY,
                   'rgba8': cv2.COLOR_RGB2RGBA, 'bgra8': cv2.COLOR_RGB2BGRA}
    if encoding not in conversions:
        raise ValueError(f"cannot write camera '{camera.key}' as encoding '{encoding}'")
    code = conversions[encoding]
    pixels = rgb if code is None else cv2.cvtColor(rgb, code)
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return ts.types['sensor_msgs/msg/Image'](
        header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
        step=width * channels, data=pixels.reshape(-1))


# --------------------------------------------------------------- streams ---

def _ticks(rate: float, start_ns: int, end_ns: int, offset_ns: int = 0) -> Iterator[int]:
    period_ns = 1e9 / rate
    k = 0
    while True:
        t = start_ns + offset_ns + int(round(k * period_ns))
        if t >= end_ns:
            return
        yield t
        k += 1


def _stream(name: str, rate: float, start_ns: int, end_ns: int, offset_ns: int) -> Iterator[tuple[int, str]]:
    for t in _ticks(rate, start_ns, end_ns, offset_ns):
        yield t, name


def synthetic_messages(
    robot: RobotTopics, seconds: float, seed: int = 0, shuffle_joints: bool = True,
) -> Iterator[tuple[str, str, int, Any]]:
    """(topic, msgtype, time_ns, rosbags message) in time order."""
    from vla_ros.tools.bag_io import (
        _typestore, COMPRESSED_IMAGE, IMAGE, JOINT_STATE, JOINT_TRAJECTORY, STRING)

    ts = _typestore()
    motion = SyntheticMotion.create(robot, seed)
    rng = np.random.default_rng(seed + 1)
    names = list(robot.joint_names)
    order = rng.permutation(len(names)) if shuffle_joints else np.arange(len(names))
    state_names = [names[i] for i in order] + ([EXTRA_JOINT] if shuffle_joints else [])
    start_ns = START_TIME_NS
    end_ns = start_ns + int(round(seconds * 1e9))

    streams = [iter([(start_ns, 'instruction')]),
               _stream('joint_states', JOINT_STATE_RATE, start_ns, end_ns, 0),
               _stream('command', robot.control_rate, start_ns, end_ns, 1_000_000)]
    for i, camera in enumerate(robot.cameras):
        # cameras are not synchronised: each has its own phase within a frame
        streams.append(_stream(f'camera:{i}', CAMERA_RATE, start_ns, end_ns, 2_000_000 + 7_000_000 * i))
    sec = ts.types['builtin_interfaces/msg/Duration']
    for time_ns, name in heapq.merge(*streams):
        t = (time_ns - start_ns) * 1e-9
        if name == 'instruction':
            yield robot.instruction_topic, STRING, time_ns, ts.types['std_msgs/msg/String'](
                data=robot.prompt or DEFAULT_PROMPT)
        elif name == 'joint_states':
            q = motion.position(t)
            v = motion.velocity(t)
            pos = np.concatenate([q[order], [0.0]]) if shuffle_joints else q[order]
            vel = np.concatenate([v[order], [0.0]]) if shuffle_joints else v[order]
            yield robot.joint_state_topic, JOINT_STATE, time_ns, ts.types[JOINT_STATE](
                header=_header(ts, time_ns, ''), name=state_names,
                position=pos, velocity=vel, effort=np.zeros(len(state_names)))
        elif name == 'command':
            lead = COMMAND_LEAD
            period = 1.0 / robot.control_rate
            target = motion.position(t + lead)
            point = ts.types['trajectory_msgs/msg/JointTrajectoryPoint'](
                positions=target, velocities=motion.velocity(t + lead),
                accelerations=np.zeros(0), effort=np.zeros(0),
                time_from_start=sec(sec=0, nanosec=int(round(period * 1e9))))
            yield robot.command_topic, JOINT_TRAJECTORY, time_ns, ts.types[JOINT_TRAJECTORY](
                header=_header(ts, 0, ''), joint_names=names, points=[point])
        else:
            index = int(name.split(':')[1])
            camera = robot.cameras[index]
            rgb = render_frame(index, camera.width, camera.height, t, motion.position(t))
            msgtype = COMPRESSED_IMAGE if camera.msgtype.endswith('CompressedImage') else IMAGE
            yield camera.topic, msgtype, time_ns, image_message(ts, camera, rgb, time_ns)


def write_bag(
    robot: RobotTopics,
    out: str | Path,
    seconds: float = 10.0,
    storage: str = 'sqlite3',
    seed: int = 0,
    shuffle_joints: bool = True,
    progress: bool = False,
) -> dict[str, int]:
    """Write the synthetic recording to the rosbag2 directory `out`; returns messages per topic.

    The bag is written under a temporary name next to `out` and renamed at
    the end, so an interrupted run leaves no bag at `out`. Its files are
    0644, its directory 0755.
    """
    import os
    import shutil

    from vla_ros.tools.bag_io import BagError, BagWriter
    from vla_ros.tools.file_modes import make_readable

    out = Path(out)
    if seconds <= 0 or not math.isfinite(seconds):
        raise BagError(f'--seconds must be a positive number, got {seconds}')
    if out.exists():
        raise BagError(f'{out} exists already; choose a new bag path (bags are never overwritten)')
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written as <parent>/.<name>.partial-<pid>/<name> (rosbags names the storage
    # file after the directory), then moved into place.
    staging = out.with_name(f'.{out.name}.partial-{os.getpid()}')
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    partial = staging / out.name
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(seconds, 3), unit='s', desc='make-bag', leave=False,
                   bar_format='{l_bar}{bar}| {n:.1f}/{total:.1f} s bag time')
    try:
        with BagWriter(partial, storage) as writer:
            last = 0.0
            for topic, msgtype, time_ns, msg in synthetic_messages(robot, seconds, seed, shuffle_joints):
                writer.write(topic, time_ns, msg, msgtype)
                if bar is not None:
                    t = (time_ns - START_TIME_NS) * 1e-9
                    if t - last >= 0.1:
                        bar.update(t - last)
                        last = t
            counts = dict(writer.counts)
        make_readable(partial)
        partial.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if bar is not None:
            bar.close()
    return counts


# ------------------------------------------------------------------- CLI ---

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', required=True, type=Path, help='robot YAML (topics, joints, limits)')
    parser.add_argument('--out', required=True, type=Path,
                        help='rosbag2 directory to create (must not exist)')
    parser.add_argument('--seconds', type=float, default=10.0, help='length of the recording (default 10)')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3',
                        help='rosbag2 storage plugin (default sqlite3)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the motion and joint order (default 0)')
    parser.add_argument('--width', type=int, default=None, help='camera width (default: config, else 320)')
    parser.add_argument('--height', type=int, default=None, help='camera height (default: config, else 240)')
    parser.add_argument('--joint-order', choices=('shuffled', 'config'), default='shuffled',
                        help='joint order in the JointState messages '
                        '(default: shuffled, plus an extra joint)')
    parser.add_argument('--prompt', default=None,
                        help="instruction to record (default: the config's prompt.default)")


def summarize(counts: dict[str, int], seconds: float) -> str:
    lines = []
    for topic, count in sorted(counts.items()):
        rate = count / seconds if seconds > 0 else 0.0
        lines.append(f'  {topic:<40} {count:>6} msgs  ({rate:.1f} Hz)')
    return '\n'.join(lines)


def robot_topics_for(config_path: Path, width: int | None = None, height: int | None = None,
                     prompt: str | None = None) -> RobotTopics:
    from vla_ros.tools.bag_io import robot_topics_from_yaml

    robot = robot_topics_from_yaml(config_path)
    if width is not None or height is not None:
        robot = dataclasses.replace(robot, cameras=tuple(
            dataclasses.replace(c, width=width or c.width, height=height or c.height) for c in robot.cameras))
    if prompt is not None or not robot.prompt:
        robot = dataclasses.replace(robot, prompt=prompt or DEFAULT_PROMPT)
    return robot


def run(args: argparse.Namespace) -> int:
    robot = robot_topics_for(args.config, args.width, args.height, args.prompt)
    counts = write_bag(robot, args.out, args.seconds, args.storage, args.seed,
                       shuffle_joints=args.joint_order == 'shuffled', progress=True)
    print(f'wrote {args.storage} bag {args.out} ({args.seconds:g} s of synthetic data, seed {args.seed}):')
    print(summarize(counts, args.seconds))
    return 0


__all__: Sequence[str] = ('CameraTopic', 'RobotTopics', 'SyntheticMotion', 'synthetic_messages', 'write_bag')
