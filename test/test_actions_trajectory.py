"""Trajectory planning from aggregated chunks: times, positions, velocities, holds."""

import numpy as np
import pytest

from vla_ros.actions.aggregation import LatestChunk, TemporalEnsemble
from vla_ros.actions.limits import JointLimits, SafetyFilter
from vla_ros.actions.trajectory import (
    ActionSpace,
    hold_plan,
    plan_points,
    prepare_chunk,
    to_absolute,
    TrajectoryPlan,
)
from vla_ros.errors import ConfigError
from vla_ros.types import ActionChunk

NO_STATE = {'measured': None}


def safety(max_velocity=(1000.0, 1000.0), start=(0.0, 0.0)):
    f = SafetyFilter(
        JointLimits(("a", "b"), (-100.0, -100.0), (100.0, 100.0), max_velocity)
    )
    if start is not None:
        f.reset(list(start))
    return f


def ramp_aggregator():
    # dt 0.1, stamps 0.0..0.4, value (10 t, 100 t).
    agg = LatestChunk(0.1)
    actions = np.array([[k, 10 * k] for k in range(5)], dtype=np.float32)
    agg.update(ActionChunk(actions=actions, timestamp=0.0), now=0.0)
    return agg


def test_points_positions_times_and_velocities():
    s = safety()
    plan = plan_points(ramp_aggregator(), s, now=0.0, period=0.05, num_points=4, **NO_STATE)
    assert not plan.is_hold
    assert plan.covered_points == 4
    assert plan.times_from_start == pytest.approx([0.05, 0.10, 0.15, 0.20])
    assert plan.times_from_start[0] == 0.05  # one control period ahead
    assert (np.diff(plan.times_from_start) > 0).all()
    assert plan.positions == pytest.approx(np.array([[0.5, 5], [1, 10], [1.5, 15], [2, 20]]))
    # (p_i - p_{i-1}) / period, p_{-1} = last command (0, 0); last point 0.
    assert plan.velocities == pytest.approx(np.array([[10, 100], [10, 100], [10, 100], [0, 0]]))
    assert plan.velocities[-1].tolist() == [0.0, 0.0]
    # Only the first point is committed.
    assert s.last_command == pytest.approx([0.5, 5])
    assert s.report().updates == 1


def test_points_beyond_horizon_repeat_last_position():
    s = safety(start=(3.4, 34.0))
    plan = plan_points(ramp_aggregator(), s, now=0.3, period=0.05, num_points=4, **NO_STATE)
    assert plan.covered_points == 2  # 0.35 and 0.40; horizon ends at 0.4
    assert plan.positions == pytest.approx(np.array([[3.5, 35], [4, 40], [4, 40], [4, 40]]))
    # Min-mod slopes: 0 where the motion stops (a backward difference, 10 / 100,
    # would make the controller's spline overshoot the stop).
    assert plan.velocities == pytest.approx(np.array([[2, 20], [0, 0], [0, 0], [0, 0]]))


def test_points_before_coverage_hold_last_command():
    agg = LatestChunk(0.1)
    agg.update(ActionChunk(actions=np.array([[1, 1], [2, 2]], np.float32), timestamp=0.1), now=0.0)
    s = safety(start=(0.0, 0.0))
    plan = plan_points(agg, s, now=0.0, period=0.05, num_points=4, **NO_STATE)
    assert plan.positions == pytest.approx(np.array([[0, 0], [1, 1], [1.5, 1.5], [2, 2]]))
    assert plan.velocities == pytest.approx(np.array([[0, 0], [10, 10], [10, 10], [0, 0]]))


def test_safety_filter_bounds_planned_points():
    s = safety(max_velocity=(1.0, 2.0))
    plan = plan_points(ramp_aggregator(), s, now=0.0, period=0.05, num_points=4, **NO_STATE)
    # Steps capped at 0.05 (a) and 0.1 (b) per period.
    assert plan.positions == pytest.approx(
        np.array([[0.05, 0.1], [0.10, 0.2], [0.15, 0.3], [0.20, 0.4]])
    )
    assert plan.velocities == pytest.approx(np.array([[1, 2], [1, 2], [1, 2], [0, 0]]))


def test_ensemble_feeds_plan():
    agg = TemporalEnsemble(0.1, m=0.0)
    agg.update(ActionChunk(actions=np.zeros((3, 2), np.float32), timestamp=0.0), now=0.0)
    agg.update(ActionChunk(actions=np.full((3, 2), 4.0, np.float32), timestamp=0.0), now=0.0)
    plan = plan_points(agg, safety(), now=0.0, period=0.1, num_points=2, **NO_STATE)
    assert plan.positions == pytest.approx(np.full((2, 2), 2.0))


def test_hold_plan_when_nothing_covers():
    s = safety(start=(0.3, 0.4))
    plan = plan_points(LatestChunk(0.1), s, now=5.0, period=0.02, num_points=3, measured=[0.0, 0.0])
    assert plan.is_hold
    assert plan.reason
    assert plan.positions.tolist() == [[0.3, 0.4]] * 3, "at the last command, not the measured position"
    assert plan.velocities.tolist() == [[0.0, 0.0]] * 3
    assert plan.times_from_start == pytest.approx([0.02, 0.04, 0.06])
    assert s.last_command.tolist() == [0.3, 0.4]


def test_hold_plan_falls_back_to_last_command_then_measured():
    s = safety(start=(0.3, 0.4))
    plan = plan_points(LatestChunk(0.1), s, now=0.0, period=0.02, num_points=2, **NO_STATE)
    assert plan.positions.tolist() == [[0.3, 0.4]] * 2
    fresh = safety(start=None)
    plan = plan_points(LatestChunk(0.1), fresh, now=0.0, period=0.02, num_points=2, measured=[0.7, 0.8])
    assert plan.positions.tolist() == [[0.7, 0.8]] * 2
    outside = safety(start=None)
    plan = plan_points(LatestChunk(0.1), outside, now=0.0, period=0.02, num_points=2, measured=[0.7, 180.0])
    assert plan.positions.tolist() == [[0.7, 180.0]] * 2, "a hold never moves the robot"
    with pytest.raises(ValueError):
        plan_points(LatestChunk(0.1), safety(start=None), 0.0, 0.02, 2, None)


def test_single_point_has_zero_velocity():
    plan = plan_points(ramp_aggregator(), safety(), now=0.0, period=0.1, num_points=1, **NO_STATE)
    assert plan.positions == pytest.approx(np.array([[1, 10]]))
    assert plan.velocities.tolist() == [[0.0, 0.0]]


def test_plan_arrays_are_read_only_and_validated():
    plan = hold_plan([0.0, 0.0], 0.1, 2, "test")
    with pytest.raises(ValueError):
        plan.positions[0, 0] = 1.0
    z = np.zeros((2, 1))
    with pytest.raises(ValueError):
        TrajectoryPlan(z, z.copy(), np.array([0.1, 0.1]))  # not strictly increasing
    with pytest.raises(ValueError):
        TrajectoryPlan(z, z.copy(), np.array([0.0, 0.1]))  # first point at 0
    with pytest.raises(ValueError):
        TrajectoryPlan(z, np.ones((2, 1)), np.array([0.1, 0.2]))  # ends moving


def test_timing_config_errors():
    with pytest.raises(ConfigError) as err:
        hold_plan([0.0], 0.0, 2, "x")
    assert err.value.parameter == "trajectory.period"
    with pytest.raises(ConfigError) as err:
        plan_points(ramp_aggregator(), safety(), 0.0, 0.1, 0, None)
    assert err.value.parameter == "trajectory.num_points"


# -- action space -----------------------------------------------------------------------


def test_to_absolute_adds_observation_state():
    actions = np.array([[0.5, 1.0], [0.25, 0.0]], np.float32)
    state = np.array([1.0, 5.0])
    assert to_absolute(actions, state).tolist() == [[1.5, 6.0], [1.25, 5.0]]
    # Mask keeps joint b (a gripper, say) absolute.
    assert to_absolute(actions, state, delta_mask=[True, False]).tolist() == [[1.5, 1.0], [1.25, 0.0]]
    assert to_absolute(actions, state).dtype == np.float32
    with pytest.raises(ValueError):
        to_absolute(actions, [1.0, 2.0, 3.0])


def test_prepare_chunk_and_action_space_parse():
    c = ActionChunk(actions=np.array([[0.5, 1.0]], np.float32), timestamp=2.0, timings={"total": 0.1})
    assert prepare_chunk(c, "absolute") is c
    d = prepare_chunk(c, ActionSpace.DELTA, state_at_obs=[1.0, 1.0])
    assert d.actions.tolist() == [[1.5, 2.0]]
    assert d.timestamp == 2.0 and d.timings == {"total": 0.1}
    with pytest.raises(ValueError):
        prepare_chunk(c, "delta")
    with pytest.raises(ConfigError) as err:
        ActionSpace.parse("relative")
    assert err.value.parameter == "action_space"


def test_hold_reason_mentions_expired_chunks():
    plan = plan_points(ramp_aggregator(), safety(), now=1.0, period=0.1, num_points=2, **NO_STATE)
    assert plan.is_hold
    assert plan.reason == (
        "no action chunk covers now + [0.100, 0.200] s (chunks cover until -0.600 s from now)"
    )
    assert plan.positions.tolist() == [[0.0, 0.0]] * 2  # last command


def _hermite(p0, p1, v0, v1, period, u):
    """The cubic a controller runs between two points (positions, velocities), at fractions u."""
    h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
    h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
    return h00 * p0 + h10 * period * v0 + h01 * p1 + h11 * period * v1


def test_the_controllers_spline_does_not_overshoot_a_position_limit():
    # A joint driven into its upper limit (1.0): the points stop there, and the cubic
    # segments a joint_trajectory_controller builds from positions and velocities
    # must stop there too. Backward-difference velocities overshot by 4/27 v T.
    s = SafetyFilter(JointLimits(("a", "b"), (-1.0, -1.0), (1.0, 1.0), (1.0, 1.0)))
    s.reset([0.96, -0.5])
    agg = LatestChunk(0.02)
    agg.update(ActionChunk(np.tile(np.float32([5.0, 0.5]), (50, 1)), timestamp=0.0), now=0.0)
    plan = plan_points(agg, s, now=0.0, period=0.02, num_points=5, measured=None)
    assert plan.positions[:, 0].tolist() == pytest.approx([0.98, 1.0, 1.0, 1.0, 1.0])
    u = np.linspace(0.0, 1.0, 101)
    points = np.vstack([[0.96, -0.5], plan.positions])
    velocities = np.vstack([[1.0, 1.0], plan.velocities])  # moving at the limit speed into the plan
    for i in range(1, plan.num_points):
        for j in range(2):
            path = _hermite(points[i, j], points[i + 1, j], velocities[i, j], velocities[i + 1, j], 0.02, u)
            low, high = sorted((points[i, j], points[i + 1, j]))
            assert path.min() >= low - 1e-12 and path.max() <= high + 1e-12, (i, j)
    assert plan.velocities[1:, 0].tolist() == [0.0] * 4
