"""Running one episode of the scripted expert on simulated time, without ROS.

`run_expert_episode` plays what the live sim node and the expert would do over
DDS, but on a simulated clock and in a fixed order, so that it is fast and
deterministic: at every tick of every stream (joint states, each camera, the
expert's commands at the profile's control rate) the world is stepped to that
time, then the stream's message is handed to a sink (`EpisodeSink`). At the
same instant the sensors are read before the command is applied, as a
controller sees them. The recorder (vla_ros.sim.record) is such a sink; the
tests run episodes with no sink at all.
"""

from __future__ import annotations

import heapq
from typing import Protocol

import numpy as np

from vla_ros.sim.expert import ScriptedExpert
from vla_ros.sim.world import EpisodeStatus, SimWorld

NS = 1_000_000_000


class EpisodeSink(Protocol):
    """What an episode produces, at simulated times in integer nanoseconds."""

    def instruction(self, time_ns: int, text: str) -> None: ...

    def joint_state(self, time_ns: int, position: np.ndarray, velocity: np.ndarray) -> None: ...

    def camera(self, time_ns: int, key: str, rgb: np.ndarray) -> None: ...

    def command(self, time_ns: int, times_from_start: np.ndarray, positions: np.ndarray,
                velocities: np.ndarray) -> None: ...


def _ticks(name: str, rate: float, offset_ns: int):
    period = NS / rate
    k = 0
    while True:
        yield offset_ns + int(round(k * period)), name
        k += 1


def run_expert_episode(
    world: SimWorld,
    expert: ScriptedExpert,
    episode: int,
    sink: EpisodeSink | None = None,
    start_ns: int = 0,
    tail: float = 0.5,
    cameras: bool = True,
) -> EpisodeStatus:
    """Reset `world` to `episode`, let `expert` drive it until success + `tail` s or the timeout.

    start_ns: the simulated time (ns) of the episode's start; the world runs on
        seconds since then. cameras: render (and hand over) camera frames.
    Returns the final status.
    """
    robot = world.robot
    world.reset(episode, 0.0)
    node = robot.node
    period = 1.0 / node.control_rate
    num_points = node.output.num_points
    streams = [_ticks("joint_state", robot.sim.joint_state_rate, 0),
               _ticks("command", node.control_rate, 0)]
    if cameras:
        # the cameras are not synchronised: each its own phase within a frame
        for i, key in enumerate(world.views):
            offset = int(round((1 + 3 * i) * 1e-3 * NS))
            streams.append(_ticks(f"camera:{key}", robot.sim.camera_rate, offset))
    if sink is not None:
        sink.instruction(start_ns, world.instruction)
    timeout = robot.sim.episode_timeout
    for time_ns, name in heapq.merge(*streams):
        t = time_ns / NS
        if t > timeout + 1e-9:
            break
        world.step(t)
        status = world.status()
        done = expert.done_time()
        success_at = None if not status.success else world.start_time + status.success_time
        if success_at is not None and done is not None and t >= max(done, success_at) + tail:
            break
        if name == "joint_state":
            if sink is not None:
                sink.joint_state(start_ns + time_ns, world.position, world.velocity)
        elif name == "command":
            times, pos, vel = expert.command(t, period, num_points)
            world.command(robot.joint_names, times, pos, vel, 0.0, t)
            if sink is not None:
                sink.command(start_ns + time_ns, times, pos, vel)
        elif sink is not None:
            key = name.split(":", 1)[1]
            sink.camera(start_ns + time_ns, key, world.render(key))
    return world.status()
