"""Closed-loop evaluation on simulated time, without DDS: a policy drives the simulated arm.

`ClosedLoopEval` runs held-out episodes of the simulator (vla_ros.sim.world)
with the policy node's own core in the loop, on one simulated clock, in a
fixed order, so that it is fast and deterministic:

- the sensors are the recorder's: every stream ticks at its rate (joint
  states, each camera at its own phase, as in vla_ros.sim.episode), the world
  is stepped to that time and its message is built by the recorder's
  `BagSink` (rosbags Image / CompressedImage JPEG / JointState / String on the
  profile's topics), then converted by the node's conversions
  (vla_ros.ros.image_msgs, joint_state_merge: joints mapped by name) into the
  node's `PolicyController` (observation assembly and sync, inference
  trigger, aggregation, limits, watchdog), as `vla-ros replay` does offline;
- an inference runs when the controller asks for one (`next_request`), on
  any object with ``infer(observation, guidance=None) -> ActionChunk`` (a
  `Policy`, or `ExpertPolicy` below), and its chunk arrives a fixed simulated
  latency later (``latency_ms``, as replay's ``--latency-ms``);
- every control tick the controller's `TrajectoryPlan` is handed to the
  world as the JointTrajectory the node would publish (``output.num_points``
  points, velocities as ``output.velocities`` says, the node config's joint
  names, header stamp zero: start on receipt), which the simulated
  joint_trajectory_controller follows.

Each episode starts a fresh controller (`activate`), as a node activated per
episode; it ends at success (``success.hold`` s within ``success.tolerance``)
or at ``episode_timeout``. Episode k of a seed is the same target and home
pose as the recorder's and the live sim's episode k of that seed.

The controller may run on another `NodeConfig` than the world's (`node_config`):
a profile whose joint order, topics or limits are wrong, to check that the
closed loop notices (docs/sim.md, "Closed-loop evaluation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import heapq
import math
from pathlib import Path
import shutil
from typing import Any

import numpy as np

from vla_ros.sim.config import SimRobot
from vla_ros.sim.episode import NS
from vla_ros.sim.expert import ScriptedExpert
from vla_ros.sim.render import TABLE
from vla_ros.sim.world import SimWorld

DEFAULT_LATENCY_MS = 100.0
# Stream priorities at equal times: a chunk's arrival, then the sensors, then the control tick.
_ARRIVAL, _SENSOR, _TICK = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """One closed-loop episode."""

    episode: int
    instruction: str
    success: bool
    success_time: float | None  # episode time of success (s)
    final_distance: float  # end effector to the target at the end (m)
    min_distance: float
    duration: float  # simulated seconds run
    inferences: int
    failures: int  # failed inferences
    chunks: int  # chunks the controller accepted

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class EvalSummary:
    """The outcome of N episodes: success rate, mean time to success, final distance."""

    name: str
    episodes: tuple[EpisodeResult, ...]

    @property
    def successes(self) -> int:
        return sum(r.success for r in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / len(self.episodes) if self.episodes else 0.0

    @property
    def mean_time_to_success(self) -> float | None:
        times = [r.success_time for r in self.episodes if r.success]
        return float(np.mean(times)) if times else None

    @property
    def mean_final_distance(self) -> float:
        return float(np.mean([r.final_distance for r in self.episodes])) if self.episodes else math.nan

    @property
    def median_final_distance(self) -> float:
        return float(np.median([r.final_distance for r in self.episodes])) if self.episodes else math.nan

    def line(self) -> str:
        t = self.mean_time_to_success
        rate = 100 * self.success_rate
        return (f'{self.name}: {self.successes}/{len(self.episodes)} succeeded ({rate:.0f} %), '
                f'mean time to success {"-" if t is None else f"{t:.2f} s"}, final distance mean '
                f'{100 * self.mean_final_distance:.1f} cm / median {100 * self.median_final_distance:.1f} cm')

    def as_dict(self) -> dict:
        t = self.mean_time_to_success
        return {"name": self.name, "episodes": len(self.episodes), "successes": self.successes,
                "success_rate": round(self.success_rate, 4),
                "mean_time_to_success": None if t is None else round(t, 4),
                "mean_final_distance": round(self.mean_final_distance, 5),
                "median_final_distance": round(self.median_final_distance, 5),
                "per_episode": [r.as_dict() for r in self.episodes]}


class ExpertPolicy:
    """The scripted expert behind the policy interface: a chunk sampled from its plan.

    ``infer(obs)`` returns `horizon` actions at ``obs.timestamp + k / action_rate``
    of the expert's plan for the world's current episode, in the world's joint
    order (`SimRobot.joint_names`): what a policy trained on this robot would
    output. It reads the target from the world, not from the images: a
    baseline and a check of the wiring, not a learned policy.
    """

    def __init__(self, world: SimWorld, horizon: int = 50, action_rate: float | None = None):
        self.world = world
        self.horizon = int(horizon)
        self.action_rate = float(action_rate or world.robot.node.policy.action_rate
                                 or world.robot.node.control_rate)
        self._expert: ScriptedExpert | None = None
        self._episode = None

    def infer(self, observation: Any, guidance: Any = None) -> Any:
        from vla_ros.types import ActionChunk

        if self._expert is None or self._episode != self.world.episode:
            self._expert = ScriptedExpert(self.world)
            self._episode = self.world.episode
        t = float(observation.timestamp) + np.arange(self.horizon) / self.action_rate
        positions, _ = self._expert.desired(t, float(observation.timestamp))
        return ActionChunk(positions.astype(np.float32), float(observation.timestamp))


class _ControllerFeed:
    """What `BagSink` writes to: each message goes through the node's conversions into the controller."""

    def __init__(self, config: Any):
        from vla_ros.ros.joint_state_merge import joint_state_reader
        from vla_ros.tools import bag_io

        self.typestore = bag_io._typestore()
        self.config = config
        self.msgtypes: dict[str, str] = {}
        self.camera_keys = {s.topic: s.key for s in config.cameras.streams}
        js = config.joint_states
        self._reader_args = (tuple(config.joint_names), js.merge_partial, js.max_staleness)
        self.read_joint_state = joint_state_reader(*self._reader_args)
        self.controller: Any = None
        self.blank: set[str] = set()

    def reset(self, controller: Any) -> None:
        from vla_ros.ros.joint_state_merge import joint_state_reader

        self.controller = controller
        self.read_joint_state = joint_state_reader(*self._reader_args)

    def add_topic(self, topic: str, msgtype: str) -> None:
        self.msgtypes[topic] = msgtype

    def write(self, topic: str, time_ns: int, msg: Any) -> None:
        from vla_ros.errors import ObservationError
        from vla_ros.ros.builtin_time import stamp_to_seconds
        from vla_ros.ros.image_msgs import compressed_to_rgb, image_to_rgb

        ctl = self.controller
        now = time_ns / NS
        config = self.config
        key = self.camera_keys.get(topic)
        if key is not None:
            try:
                compressed = self.msgtypes[topic].endswith('CompressedImage')
                rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
            except ObservationError as exc:
                ctl.on_input_error(key, str(exc), now)
                return
            ctl.on_image(key, rgb, stamp_to_seconds(msg.header.stamp), now)
        elif topic == config.joint_states.topic:
            try:
                positions, stamp = self.read_joint_state(msg, now)
            except ObservationError as exc:
                ctl.on_input_error('joint_state', str(exc), now)
                return
            ctl.on_joint_state(positions, stamp, now)
        elif topic == config.prompt.topic:
            ctl.on_prompt(msg.data, now)
        # anything else (a topic the node does not subscribe to) is lost, as over DDS


def _ticks(rate: float, offset_ns: int, priority: int, name: str):
    period = NS / rate
    k = 0
    while True:
        yield offset_ns + int(round(k * period)), priority, name
        k += 1


class ClosedLoopEval:
    """Episodes of `robot`'s simulator driven by `policy` through a PolicyController (module docstring).

    node_config: the controller's NodeConfig (default: the robot's own).
    latency_ms: simulated time from a request to its chunk.
    blank: camera keys whose frames are replaced by an empty table (an ablation:
        does success depend on that camera?); "all" blanks every camera.
    """

    def __init__(self, robot: SimRobot, policy: Any, *, node_config: Any = None,
                 latency_ms: float = DEFAULT_LATENCY_MS, blank: Sequence[str] = ()):
        from vla_ros.sim.record import BagSink

        if not latency_ms >= 0:
            raise ValueError(f'latency_ms must be >= 0, got {latency_ms}')
        self.robot = robot
        self.policy = policy
        self.config = node_config if node_config is not None else robot.node
        self.latency_ns = int(round(latency_ms * 1e6))
        self.world = SimWorld(robot)
        self.feed = _ControllerFeed(self.config)
        # The recorder's message path: the robot's topics, transports and joint names.
        self.sink = BagSink(self.feed, robot)
        keys = set(self.world.views)
        self.blank = keys if 'all' in blank else set(blank)
        unknown = self.blank - keys
        if unknown:
            raise ValueError(f'unknown camera keys {sorted(unknown)}; this robot has {sorted(keys)}')

    def _render(self, key: str) -> np.ndarray:
        rgb = self.world.render(key)
        if key in self.blank:
            rgb = np.empty_like(rgb)
            rgb[...] = TABLE
        return rgb

    def run_episode(self, episode: int) -> EpisodeResult:
        """Reset the world to `episode` and let the policy drive it until success or the timeout."""
        from vla_ros.controller import PolicyController
        from vla_ros.errors import VlaRosError

        robot, world, config = self.robot, self.world, self.config
        start = robot.sim.start_time
        start_ns = int(round(start * NS))
        world.reset(episode, start)
        ctl = PolicyController(config)
        self.feed.reset(ctl)
        ctl.activate(start)
        self.sink.instruction(start_ns, world.instruction)
        names = tuple(config.joint_names)
        velocities = config.output.velocities
        first_tick = start_ns + int(round(NS / config.control_rate))
        streams = [_ticks(robot.sim.joint_state_rate, start_ns, _SENSOR, 'joint_state'),
                   _ticks(config.control_rate, first_tick, _TICK, 'tick')]
        for i, key in enumerate(world.views):
            # the cameras are not synchronised: each its own phase within a frame, as when recording
            offset = start_ns + int(round((1 + 3 * i) * 1e-3 * NS))
            streams.append(_ticks(robot.sim.camera_rate, offset, _SENSOR, f'camera:{key}'))
        events = heapq.merge(*streams)
        end_ns = start_ns + int(round(robot.sim.episode_timeout * NS))
        pending: tuple[int, Any, Any] | None = None  # (arrival ns, chunk or error text, request)
        inferences = failures = 0
        min_distance = world.distance()

        def maybe_request(now_ns: int) -> None:
            nonlocal pending, inferences, failures
            if pending is not None:
                return
            request = ctl.next_request(now_ns / NS)
            if request is None:
                return
            inferences += 1
            try:
                if request.guidance is None:
                    result: Any = self.policy.infer(request.observation)
                else:
                    result = self.policy.infer(request.observation, guidance=request.guidance)
                result = dataclasses.replace(result, timings={'total': self.latency_ns / NS})
            except VlaRosError as exc:
                failures += 1
                result = f'{type(exc).__name__}: {exc}'
            pending = (now_ns + self.latency_ns, result, request)

        next_event = next(events)
        while True:
            if pending is not None and (pending[0], _ARRIVAL) <= next_event[:2]:
                time_ns, name = pending[0], 'arrival'
            else:
                time_ns, _, name = next_event
                next_event = next(events)
            if time_ns > end_ns:
                break
            now = time_ns / NS
            world.step(now)
            min_distance = min(min_distance, world.distance())
            if world.status().success:
                break
            if name == 'arrival':
                _, result, request = pending
                pending = None
                if isinstance(result, str):
                    ctl.on_inference_failed(result, now, request)
                else:
                    ctl.on_chunk(result, now, request)
            elif name == 'joint_state':
                self.sink.joint_state(time_ns, world.position, world.velocity)
            elif name == 'tick':
                plan = ctl.tick(now)
                if plan is not None:
                    world.command(names, plan.times_from_start, plan.positions,
                                  plan.velocities if velocities else None, 0.0, now)
            else:
                key = name.split(':', 1)[1]
                self.sink.camera(time_ns, key, self._render(key))
            maybe_request(time_ns)
        status = world.status()
        counts = ctl.status(world.time).values
        return EpisodeResult(
            episode=episode, instruction=status.instruction, success=status.success,
            success_time=status.success_time, final_distance=status.distance,
            min_distance=min(min_distance, status.distance), duration=status.time, inferences=inferences,
            failures=failures, chunks=int(counts.get('chunks.accepted', 0)))

    def run(self, episodes: Sequence[int], name: str = 'policy',
            progress: Callable[[EpisodeResult], None] | None = None) -> EvalSummary:
        results = []
        for k in episodes:
            result = self.run_episode(k)
            results.append(result)
            if progress is not None:
                progress(result)
        return EvalSummary(name, tuple(results))


def untrained_copy(checkpoint: str | Path, out: str | Path, seed: int = 0) -> Path:
    """`checkpoint` with random weights (same config, tokenizer and norm stats) in `out`; returns it.

    What `vla-ros train --steps 0` gives: the untrained model that sees the
    same preprocessing and statistics, the fair baseline for a trained one.
    """
    from vla_ros.model.checkpoint import config_from_checkpoint, random_model, save_checkpoint

    checkpoint, out = Path(checkpoint), Path(out)
    skip = shutil.ignore_patterns('model.safetensors', 'config.json', '*.png', '*.csv', 'train_meta.json')
    shutil.copytree(checkpoint, out, ignore=skip)
    cfg = config_from_checkpoint(checkpoint)
    save_checkpoint(random_model(cfg, seed=seed), out, extra_config={'untrained': True})
    return out


def reversed_joint_order(config: Any) -> Any:
    """`config` with joint_names reversed (limits and everything else as they are): a broken profile."""
    return dataclasses.replace(config, joint_names=tuple(reversed(tuple(config.joint_names))))
