"""The command messages the node publishes: JointTrajectory and Float64MultiArray.

`trajectory_msg` turns the points the actions layer planned
(vla_ros.actions.trajectory) into a trajectory_msgs/JointTrajectory for
ros2_control's joint_trajectory_controller: header stamp zero ("start on
receipt"), every configured joint named, `time_from_start` to the nanosecond.
`float64_array_msg` serves position-group controllers that take a plain
std_msgs/Float64MultiArray. Both refuse non-finite values, so nothing that is
not a number can reach a controller through them.
"""

from __future__ import annotations

from collections.abc import Sequence

from builtin_interfaces.msg import Time
import numpy as np
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.ros.builtin_time import seconds_to_duration


def trajectory_msg(
    joint_names: Sequence[str],
    times_from_start: Sequence[float] | np.ndarray,
    positions: np.ndarray,
    velocities: np.ndarray | None = None,
) -> JointTrajectory:
    """Build a JointTrajectory whose header stamp is zero, meaning "start on receipt".

    times_from_start: (N,) seconds, >= 0 and strictly increasing.
    positions, velocities: (N, D) with D == len(joint_names); must be finite.
    """
    names = list(joint_names)
    times = np.asarray(times_from_start, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times_from_start must be a non-empty (N,) array, got shape {times.shape}")
    expected = (times.size, len(names))
    if pos.shape != expected:
        raise ValueError(f"positions must have shape (N, D) = {expected}, got {pos.shape}")
    vel = None
    if velocities is not None:
        vel = np.asarray(velocities, dtype=np.float64)
        if vel.shape != expected:
            raise ValueError(f"velocities must have shape (N, D) = {expected}, got {vel.shape}")
    if not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ValueError(
            f"times_from_start must be finite, >= 0 and strictly increasing, got {times.tolist()}"
        )
    if not np.all(np.isfinite(pos)) or (vel is not None and not np.all(np.isfinite(vel))):
        raise ValueError("trajectory positions / velocities must be finite")

    msg = JointTrajectory()
    msg.header.stamp = Time(sec=0, nanosec=0)
    msg.joint_names = names
    points = []
    for k in range(times.size):
        point = JointTrajectoryPoint()
        point.positions = pos[k].tolist()
        if vel is not None:
            point.velocities = vel[k].tolist()
        point.time_from_start = seconds_to_duration(float(times[k]))
        points.append(point)
    msg.points = points
    return msg


def float64_array_msg(positions: np.ndarray | Sequence[float]) -> Float64MultiArray:
    """Float64MultiArray with row-major data and one layout dimension per array axis."""
    array = np.asarray(positions, dtype=np.float64)
    msg = Float64MultiArray()
    dims = []
    stride = int(array.size)
    for size in array.shape:
        dims.append(MultiArrayDimension(label="", size=int(size), stride=stride))
        stride = stride // int(size) if size else 0
    msg.layout.dim = dims
    msg.layout.data_offset = 0
    msg.data = array.ravel().tolist()
    return msg
