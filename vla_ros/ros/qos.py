"""The QoS profiles of the node's topics, and why each is what it is.

- Sensors (cameras, joint states) default to sensor-data QoS (best effort,
  small queue): a lost frame is replaced by the next one.
- Commands (JointTrajectory, Float64MultiArray) are reliable with a queue of
  ONE: the command stream is latest-only, and a controller that fell behind
  must never work through a backlog of stale trajectories.
- The instruction is reliable and transient-local with a queue of one, so an
  instruction published once, before the node (or its subscription)
  existed, still arrives. A publisher must offer transient-local durability
  to match (``ros2 topic pub`` adapts to the subscription; a volatile
  publisher is reported by the node as incompatible, with this fix).
"""

from __future__ import annotations

from rclpy.qos import (
    qos_profile_sensor_data,
    qos_profile_system_default,
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)

RELIABLE_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)
COMMAND_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)
INSTRUCTION_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)
# Debug topics: latest-only like the commands; a slow subscriber gets no backlog.
DEBUG_QOS = COMMAND_QOS
# The sensor QoS a parameter file may choose (cameras.*.qos, joint_states.qos).
SENSOR_QOS = {
    "sensor_data": qos_profile_sensor_data,
    "reliable": RELIABLE_QOS,
    "system_default": qos_profile_system_default,
}
