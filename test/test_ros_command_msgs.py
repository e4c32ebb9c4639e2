"""JointTrajectory and Float64MultiArray building (vla_ros.ros.command_msgs)."""

from __future__ import annotations

import numpy as np
import pytest

from vla_ros.ros.command_msgs import float64_array_msg, trajectory_msg


def test_trajectory_durations_are_exact_for_control_periods() -> None:
    k = np.arange(51)
    times = 0.02 * k
    positions = np.stack([k * 0.5, -k * 0.25], axis=1)
    msg = trajectory_msg(["a", "b"], times, positions)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)
    assert list(msg.joint_names) == ["a", "b"]
    assert len(msg.points) == 51
    for i, point in enumerate(msg.points):
        total_ns = i * 20_000_000
        assert (point.time_from_start.sec, point.time_from_start.nanosec) == divmod(total_ns, 1_000_000_000)
        assert list(point.positions) == [i * 0.5, -i * 0.25]
        assert list(point.velocities) == []


def test_trajectory_duration_just_below_two_seconds_and_velocities() -> None:
    msg = trajectory_msg(["j"], [0.1, 1.999999999, 2.5], [[1.0], [2.0], [3.0]], [[0.5], [0.0], [-0.5]])
    durations = [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points]
    assert durations == [(0, 100_000_000), (1, 999_999_999), (2, 500_000_000)]
    assert [list(p.velocities) for p in msg.points] == [[0.5], [0.0], [-0.5]]


@pytest.mark.parametrize(
    "times, positions, velocities, match",
    [
        ([0.1, 0.1], [[1.0], [2.0]], None, "strictly increasing"),
        ([-0.1, 0.1], [[1.0], [2.0]], None, ">= 0"),
        ([0.1, 0.2], [[1.0, 2.0], [2.0, 3.0]], None, r"positions must have shape \(N, D\) = \(2, 1\)"),
        ([0.1, 0.2], [[1.0], [2.0]], [[1.0]], "velocities must have shape"),
        ([0.1, 0.2], [[1.0], [float("nan")]], None, "finite"),
        ([], np.zeros((0, 1)), None, "non-empty"),
    ],
)
def test_trajectory_msg_validation(times, positions, velocities, match) -> None:
    with pytest.raises(ValueError, match=match):
        vel = None if velocities is None else np.asarray(velocities)
        trajectory_msg(["j"], times, np.asarray(positions), vel)


def test_float64_array_msg() -> None:
    msg = float64_array_msg(np.array([1.5, -2.0, 3.0], dtype=np.float32))
    assert list(msg.data) == [1.5, -2.0, 3.0]
    assert [(d.size, d.stride) for d in msg.layout.dim] == [(3, 3)]
    grid = float64_array_msg(np.arange(6.0).reshape(2, 3))
    assert list(grid.data) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [(d.size, d.stride) for d in grid.layout.dim] == [(2, 6), (3, 3)]
