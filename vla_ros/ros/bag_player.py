"""The live-replay player: a ROS node that publishes recorded messages and /clock over DDS.

It publishes the CDR bytes of recorded messages on their topics (as-is, no
deserialization), optionally /clock, and hands what a running policy node
publishes (its trajectories and diagnostics) to callbacks. Its executor spins
on a daemon thread, so the callbacks run there while the caller plays.

The playback schedule, the re-stamping and the recording are the caller's
(vla_ros.tools.replay_live); this module only does the ROS side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import threading
from typing import Any

PLAYER_NODE_NAME = 'vla_replay'


class BagPlayer:
    """A 'vla_replay' node with one publisher per input topic, /clock and two subscriptions.

    inputs: topic -> rclpy message class of the messages published there.
    trajectory_topic / on_trajectory: the policy node's JointTrajectory output
        and the callback that takes each message (reliable, depth 100).
    diagnostics_topic / on_diagnostics: where DiagnosticArray messages come
        from, and their callback.
    sim_clock: publish rosgraph_msgs/Clock on /clock (publish_clock is a
        no-op otherwise).

    rclpy is initialised here if it is not yet, and shut down again by
    close(). Use as a context manager, or call close().
    """

    def __init__(self, inputs: Mapping[str, type], trajectory_topic: str,
                 on_trajectory: Callable[[Any], None], diagnostics_topic: str,
                 on_diagnostics: Callable[[Any], None], sim_clock: bool = True):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from rosgraph_msgs.msg import Clock
        from trajectory_msgs.msg import JointTrajectory
        from std_msgs.msg import String

        from vla_ros.ros.qos import INSTRUCTION_QOS

        from vla_ros.ros.builtin_time import seconds_to_stamp

        self._seconds_to_stamp = seconds_to_stamp
        self._own_context = not rclpy.ok()
        if self._own_context:
            rclpy.init(args=None)
        self.node = rclpy.create_node(PLAYER_NODE_NAME)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._spinner: threading.Thread | None = None
        try:
            self.node.create_subscription(JointTrajectory, trajectory_topic, on_trajectory,
                                          QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
            self.node.create_subscription(DiagnosticArray, diagnostics_topic, on_diagnostics,
                                          QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            # The instruction (std_msgs/String) is latched as the node subscribes to it.
            self._publishers = {
                topic: self.node.create_publisher(
                    cls, topic,
                    INSTRUCTION_QOS if cls is String
                    else QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
                for topic, cls in inputs.items()
            }
            self._clock_type = Clock
            self._clock_pub = None
            if sim_clock:
                self._clock_pub = self.node.create_publisher(
                    Clock, '/clock', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            self._spinner = threading.Thread(target=self._executor.spin, name='vla_replay_spin', daemon=True)
            self._spinner.start()
        except BaseException:
            self.close()
            raise

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> BagPlayer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop spinning, destroy the node, and shut rclpy down if it was started here."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        import rclpy

        executor.shutdown(timeout_sec=1.0)
        if self._spinner is not None:
            self._spinner.join(timeout=2.0)
        self.node.destroy_node()
        if self._own_context:
            rclpy.try_shutdown()

    # -- publishing ---------------------------------------------------------

    def publish(self, topic: str, data: bytes) -> None:
        """Publish a recorded message's CDR bytes on `topic` (an input topic)."""
        self._publishers[topic].publish(data)

    def publish_text(self, topic: str, text: str) -> None:
        """Publish std_msgs/String `text` on `topic` (an input topic of that type)."""
        from std_msgs.msg import String

        self._publishers[topic].publish(String(data=text))

    def publish_clock(self, t: float) -> None:
        """Publish /clock at `t` seconds (only with sim_clock)."""
        if self._clock_pub is not None:
            self._clock_pub.publish(self._clock_type(clock=self._seconds_to_stamp(t)))

    # -- discovery and time -------------------------------------------------

    def inputs_without_subscribers(self) -> list[str]:
        """The input topics nothing subscribes to yet, in input order."""
        return [topic for topic, pub in self._publishers.items() if pub.get_subscription_count() == 0]

    def publisher_count(self, topic: str) -> int:
        """How many publishers `topic` has in the graph."""
        return self.node.count_publishers(topic)

    def now_ns(self) -> int:
        """The node's clock (ROS time), in nanoseconds."""
        return self.node.get_clock().now().nanoseconds
