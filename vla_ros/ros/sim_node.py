"""The simulated robot as a ROS 2 node: `vla-ros sim` (docs/sim.md).

A plain (non-lifecycle) node, ``vla_sim``, around vla_ros.sim.world.SimWorld,
on the topics of the robot profile it stands in for:

- subscribes to trajectory_msgs/JointTrajectory on ``output.trajectory_topic``
  (command QoS: reliable, latest only) and follows it like
  joint_trajectory_controller (vla_ros.sim.trajectory); with
  ``output.position_topic`` set, also to std_msgs/Float64MultiArray there (a
  position target, reached at the velocity limits);
- publishes sensor_msgs/JointState on ``joint_states.topic`` at
  ``vla_sim.joint_state_rate`` and every camera on its topic and transport
  (raw rgb8 Image or JPEG CompressedImage) at ``vla_sim.camera_rate``, with
  the profile's QoS;
- publishes the episode's instruction on ``prompt.topic`` (reliable,
  transient local, as the node subscribes), success as std_msgs/Bool on
  ``~/success`` (latched per episode; transient local) and the episode's
  state as JSON (std_msgs/String) on ``~/episode`` at 10 Hz;
- serves std_srvs/Trigger ``~/reset``: a new episode (the next index; its
  target from [seed, index]); the reply's message is the episode as JSON;
- with ``publish_clock`` publishes rosgraph_msgs/Clock on /clock every
  physics step and stamps everything with simulated time, which advances by
  one physics step per tick of a wall timer (``real_time_factor`` faster
  than wall time); otherwise the simulation runs on the node's ROS time.

With ``expert=True`` the scripted expert publishes its commands on the
trajectory topic from this process (so they travel over DDS like a policy
node's) and episodes restart on their own; after ``episodes`` of them the
node stops and prints the success count.
"""

from __future__ import annotations

import json
import threading

from builtin_interfaces.msg import Time
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.ros.builtin_time import seconds_to_stamp, stamp_to_seconds
from vla_ros.ros.command_msgs import trajectory_msg
from vla_ros.ros.image_msgs import rgb_to_compressed_msg, rgb_to_image_msg
from vla_ros.ros.qos import COMMAND_QOS, INSTRUCTION_QOS, RELIABLE_QOS, SENSOR_QOS
from vla_ros.sim.config import SIM_NODE_NAME, SimRobot
from vla_ros.sim.expert import ScriptedExpert
from vla_ros.sim.trajectory import TrajectoryRejected
from vla_ros.sim.world import SimWorld

EPISODE_RATE = 10.0  # Hz of ~/episode
EXPERT_TAIL = 0.5  # s the expert's episodes run on after success (and the gripper closed)


class _Every:
    """Due times of a periodic stream on the simulation clock (no backlog after a stall)."""

    def __init__(self, rate: float, start: float):
        self.period = 1.0 / rate
        self.next = start

    def due(self, t: float) -> bool:
        if t + 1e-9 < self.next:
            return False
        self.next += self.period
        if self.next <= t:  # fell behind (a stall): skip ahead, never publish a burst
            self.next = t + self.period
        return True


class SimNode(Node):
    """The simulated robot of a profile (see the module docstring)."""

    def __init__(self, robot: SimRobot, expert: bool = False, episodes: int = 0, first_episode: int = 0,
                 context=None, node_name: str = SIM_NODE_NAME):
        super().__init__(node_name, context=context)
        self.robot = robot
        sim = robot.sim
        config = robot.node
        self._lock = threading.Lock()
        self._sim_clock = bool(sim.publish_clock)
        self._sim_time = float(sim.start_time)
        self._dt = 1.0 / sim.physics_rate
        now = self.now()
        self.world = SimWorld(robot, now)
        self.world.reset(first_episode, now)
        self.episodes_done: list[dict] = []
        self._episodes_wanted = int(episodes)
        self.finished = False
        self.rejected = 0

        self._joint_pub = self.create_publisher(JointState, config.joint_states.topic,
                                                SENSOR_QOS[config.joint_states.qos])
        self._camera_pubs = {}
        for stream in config.cameras.streams:
            kind = CompressedImage if stream.transport == "compressed" else Image
            self._camera_pubs[stream.key] = (
                stream.transport, self.create_publisher(kind, stream.topic, SENSOR_QOS[config.cameras.qos_of(
                    stream.key)]))
        self._prompt_pub = self.create_publisher(String, config.prompt.topic, INSTRUCTION_QOS)
        self._success_pub = self.create_publisher(Bool, sim.success.topic, INSTRUCTION_QOS)
        self._episode_pub = self.create_publisher(String, sim.success.episode_topic, RELIABLE_QOS)
        self._clock_pub = None
        if self._sim_clock:
            self._clock_pub = self.create_publisher(
                Clock, "/clock", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.command_topic = config.output.trajectory_topic or "/joint_trajectory"
        self.create_subscription(JointTrajectory, self.command_topic, self._on_trajectory, COMMAND_QOS)
        if config.output.position_topic:
            self.create_subscription(Float64MultiArray, config.output.position_topic, self._on_position,
                                     COMMAND_QOS)
        self.create_service(Trigger, sim.reset_service, self._on_reset)

        self._expert = ScriptedExpert(self.world) if expert else None
        self._expert_pub = None
        if expert:
            self._expert_pub = self.create_publisher(JointTrajectory, self.command_topic, COMMAND_QOS)
        self._schedule(now)
        self._last_success = None
        self._publish_instruction()
        self.create_timer(self._dt / sim.real_time_factor, self._tick)
        self.get_logger().info(
            f"simulating {len(robot.joint_names)} joints {list(robot.joint_names)}: commands on "
            f"{self.command_topic}, joint states on {config.joint_states.topic}, cameras "
            f"{[s.topic for s in config.cameras.streams]}, "
            f"{'/clock (sim time)' if self._sim_clock else 'ROS time'}"
            f"; episode {self.world.episode}: {self.world.instruction!r}")

    # -- time ---------------------------------------------------------------

    def now(self) -> float:
        """Seconds on the simulation's clock: simulated time with publish_clock, else ROS time."""
        if self._sim_clock:
            return self._sim_time
        return self.get_clock().now().nanoseconds * 1e-9

    def _schedule(self, t: float) -> None:
        sim = self.robot.sim
        self._joint_every = _Every(sim.joint_state_rate, t)
        self._camera_every = _Every(sim.camera_rate, t)
        self._episode_every = _Every(EPISODE_RATE, t)
        self._expert_every = _Every(self.robot.node.control_rate, t)

    # -- callbacks ------------------------------------------------------------

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        points = msg.points
        with self._lock:
            try:
                self.world.command(
                    list(msg.joint_names),
                    [stamp_to_seconds(p.time_from_start) for p in points],
                    [list(p.positions) for p in points],
                    [list(p.velocities) for p in points] if points else None,
                    start_time=stamp_to_seconds(msg.header.stamp),
                    now=self.now(),
                )
            except TrajectoryRejected as exc:
                self.rejected += 1
                self.get_logger().warning(f"trajectory rejected: {exc}", throttle_duration_sec=2.0)

    def _on_position(self, msg: Float64MultiArray) -> None:
        with self._lock:
            try:
                self.world.command(self.robot.joint_names, [0.0], [list(msg.data)], None, now=self.now())
            except TrajectoryRejected as exc:
                self.rejected += 1
                self.get_logger().warning(f"position command rejected: {exc}", throttle_duration_sec=2.0)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        status = self.reset_episode()
        response.success = True
        response.message = json.dumps(status)
        return response

    def reset_episode(self, episode: int | None = None) -> dict:
        """Start the next episode (or `episode`) now; returns its status as a dict."""
        with self._lock:
            now = self.now()
            status = self.world.reset(episode, now).as_dict()
            self._last_success = None
        self._publish_instruction()
        self.get_logger().info(f"episode {status['episode']}: {status['instruction']!r}, target "
                               f"({status['target']['x']:.3f}, {status['target']['y']:.3f})")
        return status

    def _publish_instruction(self) -> None:
        self._prompt_pub.publish(String(data=self.world.instruction))

    def _stamp(self, t: float) -> Time:
        return seconds_to_stamp(t)

    def _tick(self) -> None:
        with self._lock:
            if self._sim_clock:
                self._sim_time += self._dt
            t = self.now()
            self.world.step(t)
            stamp = self._stamp(t)
            if self._clock_pub is not None:
                self._clock_pub.publish(Clock(clock=stamp))
            if self._joint_every.due(t):
                self._publish_joints(stamp)
            if self._camera_every.due(t):
                for key, (transport, pub) in self._camera_pubs.items():
                    rgb = self.world.render(key)
                    frame = f"{key}_optical_frame"
                    if transport == "compressed":
                        pub.publish(rgb_to_compressed_msg(rgb, "jpeg", 90, stamp, frame))
                    else:
                        pub.publish(rgb_to_image_msg(rgb, "rgb8", stamp, frame))
            status = self.world.status()
            if status.success != self._last_success:
                self._success_pub.publish(Bool(data=status.success))
                self._last_success = status.success
            if self._episode_every.due(t):
                self._episode_pub.publish(String(data=json.dumps(status.as_dict())))
            expert_command = None
            if self._expert is not None and self._expert_every.due(t):
                node = self.robot.node
                expert_command = self._expert.command(t, 1.0 / node.control_rate, node.output.num_points)
        if self._expert is not None:
            if expert_command is not None:
                times, pos, vel = expert_command
                self._expert_pub.publish(trajectory_msg(self.robot.joint_names, times, pos, vel))
            self._expert_episode_end(status, t)

    def _publish_joints(self, stamp: Time) -> None:
        msg = JointState()
        msg.header.stamp = stamp
        msg.name = list(self.robot.joint_names)
        msg.position = self.world.position.tolist()
        msg.velocity = self.world.velocity.tolist()
        self._joint_pub.publish(msg)

    def _expert_episode_end(self, status, t: float) -> None:
        done = self._expert.done_time()
        finished = status.timed_out or (status.success and done is not None and t >= done + EXPERT_TAIL)
        if not finished or self.finished:
            return
        self.episodes_done.append(status.as_dict())
        ok = sum(e["success"] for e in self.episodes_done)
        self.get_logger().info(f"episode {status.episode}: {'success' if status.success else 'FAILED'} "
                               f"({ok}/{len(self.episodes_done)})")
        if self._episodes_wanted and len(self.episodes_done) >= self._episodes_wanted:
            self.finished = True
            return
        self.reset_episode()


def run_sim(robot: SimRobot, expert: bool = False, episodes: int = 0, first_episode: int = 0) -> int:
    """Run the sim node until Ctrl-C (or, with the expert and episodes > 0, until they are done)."""
    rclpy.init()
    node = None
    executor = SingleThreadedExecutor()
    try:
        node = SimNode(robot, expert=expert, episodes=episodes, first_episode=first_episode)
        executor.add_node(node)
        while rclpy.ok() and not node.finished:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            done = node.episodes_done
            if done:
                ok = sum(e["success"] for e in done)
                times = [e["success_time"] for e in done if e["success"]] or [0.0]
                print(f"{ok}/{len(done)} episodes succeeded (mean time to success {np.mean(times):.2f} s)",
                      flush=True)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0
