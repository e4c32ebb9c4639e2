"""Joint limits validation and the safety filter, with exact clamp values."""

import math

import numpy as np
import pytest

from vla_ros.actions.limits import JointLimits, SafetyFilter
from vla_ros.errors import ConfigError


def limits(max_velocity=(100.0, 100.0), max_distance=math.inf):
    return JointLimits(
        joint_names=("a", "b"),
        lower=(-1.0, -2.0),
        upper=(1.0, 2.0),
        max_velocity=max_velocity,
        max_distance_from_measured=max_distance,
    )


# -- JointLimits ---------------------------------------------------------------------


def test_limits_normalised_to_tuples():
    lim = JointLimits(["a", "b"], np.array([-1, -2]), [1, 2], [1, 2], max_distance_from_measured=0.5)
    assert lim.joint_names == ("a", "b")
    assert lim.lower == (-1.0, -2.0)
    assert lim.max_distance_from_measured == (0.5, 0.5)
    assert limits().max_distance_from_measured == (math.inf, math.inf)
    assert lim.num_joints == 2


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"lower": (-1.0,)}, "limits.lower"),
        ({"upper": (1.0, 2.0, 3.0)}, "limits.upper"),
        ({"lower": (-1.0, 2.0)}, "limits.lower[1]"),
        ({"lower": (float("nan"), -2.0)}, "limits.lower[0]"),
        ({"max_velocity": (1.0, 0.0)}, "limits.max_velocity[1]"),
        ({"max_velocity": (-1.0, 1.0)}, "limits.max_velocity[0]"),
        ({"max_distance_from_measured": -0.1}, "limits.max_distance_from_measured[0]"),
        ({"max_distance_from_measured": (0.1,)}, "limits.max_distance_from_measured"),
        ({"joint_names": ("a", "a")}, "limits.joint_names"),
        ({"joint_names": ()}, "limits.joint_names"),
    ],
)
def test_limits_validation_names_parameter(kwargs, parameter):
    base = {"joint_names": ("a", "b"), "lower": (-1.0, -2.0), "upper": (1.0, 2.0), "max_velocity": (1.0, 1.0)}
    base.update(kwargs)
    with pytest.raises(ConfigError) as err:
        JointLimits(**base)
    assert err.value.parameter == parameter


def test_limits_validation_indexes_fourth_joint():
    with pytest.raises(ConfigError) as err:
        JointLimits(
            joint_names=("j0", "j1", "j2", "j3"),
            lower=(-1,) * 4,
            upper=(1,) * 4,
            max_velocity=(1, 1, 1, 0),
        )
    assert err.value.parameter == "limits.max_velocity[3]"
    assert "j3" in str(err.value)


# -- SafetyFilter.update -----------------------------------------------------------------


def test_position_clamp():
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0])
    out = f.update([5.0, -5.0], None, 0.1)
    assert out.tolist() == [1.0, -2.0]
    report = f.report()
    assert report.counts["position"] == (1, 1)
    assert report.last["position"] == ("a", "b")
    assert report.total("velocity") == 0


def test_velocity_step_clamp():
    f = SafetyFilter(limits(max_velocity=(1.0, 10.0)))
    f.reset([0.0, 0.0])
    # dt 0.1: steps of at most 0.1 (a) and 1.0 (b).
    assert f.update([0.5, 0.5], None, 0.1) == pytest.approx([0.1, 0.5])
    assert f.update([0.5, 0.5], None, 0.1) == pytest.approx([0.2, 0.5])
    assert f.update([-0.5, -0.5], None, 0.1) == pytest.approx([0.1, -0.5])
    report = f.report()
    assert report.updates == 3
    assert report.counts["velocity"] == (3, 0)
    assert report.last["velocity"] == ("a",)
    assert report.last_clamped == ("a",)


def test_position_clamp_applies_before_velocity_step():
    f = SafetyFilter(limits(max_velocity=(1.0, 1.0)))
    f.reset([0.95, 0.0])
    # 3.0 -> clamped to 1.0, a step of 0.05 <= 0.1: velocity does not fire.
    assert f.update([3.0, 0.0], None, 0.1) == pytest.approx([1.0, 0.0])
    assert f.report().counts["velocity"] == (0, 0)
    assert f.report().counts["position"] == (1, 0)


def test_distance_from_measured_clamp():
    f = SafetyFilter(limits(max_distance=0.3))
    f.reset([0.0, 0.0])
    out = f.update([0.9, -0.9], [0.5, 0.0], 0.01)
    assert out == pytest.approx([0.8, -0.3])
    assert f.report().last["distance"] == ("a", "b")


def test_distance_skips_joints_measured_as_nan_and_none_disables():
    f = SafetyFilter(limits(max_distance=(0.3, 0.3)))
    f.reset([0.0, 0.0])
    assert f.update([0.9, -0.9], [0.5, float("nan")], 0.01) == pytest.approx([0.8, -0.9])
    f.reset([0.0, 0.0])
    assert f.update([0.9, -0.9], None, 0.01) == pytest.approx([0.9, -0.9])


def test_non_finite_target_holds_previous_command():
    f = SafetyFilter(limits())
    f.reset([0.1, 0.2])
    assert f.update([float("nan"), 0.5], None, 0.1).tolist() == [0.1, 0.2]
    assert f.update([0.3, float("inf")], None, 0.1).tolist() == [0.1, 0.2]
    report = f.report()
    assert report.counts["non_finite"] == (1, 1)
    assert report.last["non_finite"] == ("b",)
    # A finite target afterwards is followed again.
    assert f.update([0.3, 0.4], None, 0.1).tolist() == [0.3, 0.4]
    assert f.report().last_clamped == ()


def test_first_update_steps_from_measured_without_reset():
    f = SafetyFilter(limits(max_velocity=(1.0, 10.0)))
    assert f.last_command is None
    assert f.update([1.0, 1.0], [0.0, 0.0], 0.1) == pytest.approx([0.1, 1.0])
    assert f.last_command == pytest.approx([0.1, 1.0])
    with pytest.raises(ValueError):
        SafetyFilter(limits()).update([0.0, 0.0], None, 0.1)


def test_reset_zeroes_report_and_hold_keeps_the_last_command():
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0])
    f.update([5.0, 0.0], None, 0.1)
    assert f.hold([0.9, 0.9]).tolist() == [1.0, 0.0], "a hold stays at the last command"
    assert f.report().updates == 1
    f.reset([0.0, 0.0])
    assert f.report().updates == 0
    assert f.report().counts["position"] == (0, 0)


def test_a_robot_outside_its_limits_is_held_in_place_then_stepped_inside():
    f = SafetyFilter(limits(max_velocity=(1.0, 1.0)))
    # No command yet: a hold never moves the robot, even outside its limits (reported).
    assert f.hold([1.15, -2.5]).tolist() == [1.15, -2.5]
    assert f.report().last["conflict"] == ("a", "b")
    # Then commands step toward the limits at the velocity limit: no jump into them.
    out = [f.update([0.0, 0.0], [1.15, -2.5], 0.1).tolist() for _ in range(6)]
    assert out[0] == pytest.approx([1.05, -2.4]) and out[1] == pytest.approx([0.95, -2.3])
    assert out[4] == pytest.approx([0.65, -2.0]), "b has reached its lower limit"
    assert out[5] == pytest.approx([0.55, -1.9]), "and goes on inside"


# -- the two reproduced bugs: the distance clamp applied last ---------------------------


def test_measured_outside_the_limits_never_yields_a_command_outside():
    # Reproduced on the old filter: measured 1.15 with upper 1.0 gave a command of 1.15.
    f = SafetyFilter(limits(max_velocity=(1.0, 1.0), max_distance=0.1))
    f.reset([1.0, 0.0])
    out = f.update([1.0, 0.0], [1.15, 0.0], 0.02)
    assert out[0] <= 1.0
    assert f.report().last["conflict"] == ("a",)
    # Without a previous command the robot's own position is where it starts from:
    # no jump into the limits, one velocity step toward them (reported).
    g = SafetyFilter(limits(max_velocity=(1.0, 1.0), max_distance=0.1))
    assert g.update([1.0, 0.0], [1.15, 0.0], 0.02)[0] == pytest.approx(1.13)
    assert g.report().last["conflict"] == ("a",)


def test_a_drifted_robot_never_yields_a_step_above_the_velocity_limit():
    # Reproduced on the old filter: a step of 0.45 where 0.02 was allowed.
    f = SafetyFilter(limits(max_velocity=(1.0, 1.0), max_distance=0.05))
    f.reset([0.0, 0.0])
    out = f.update([0.0, 0.0], [0.5, 0.0], 0.02)
    assert out[0] == pytest.approx(0.02), "toward the measured position, at the velocity limit"
    assert f.report().last["conflict"] == ("a",) and f.report().last["distance"] == ("a",)
    look_ahead = f.filter_points(np.zeros((5, 2)), [0.5, 0.0], 0.02)
    assert np.diff(np.vstack([out, look_ahead])[:, 0]) == pytest.approx([0.02] * 5)


def test_wrong_sizes_rejected():
    f = SafetyFilter(limits())
    with pytest.raises(ValueError):
        f.reset([0.0])
    f.reset([0.0, 0.0])
    with pytest.raises(ValueError):
        f.update([0.0, 0.0, 0.0], None, 0.1)
    with pytest.raises(ValueError):
        f.update([0.0, 0.0], None, 0.0)


# -- SafetyFilter.filter_points -------------------------------------------------------------


def test_filter_points_sequential_without_commit():
    f = SafetyFilter(limits(max_velocity=(1.0, 10.0)))
    f.reset([0.0, 0.0])
    targets = np.array([[0.5, 0.5], [0.5, 0.5], [np.nan, 0.0], [5.0, 5.0]])
    out = f.filter_points(targets, None, 0.1)
    expected = [
        [0.1, 0.5],  # step limit on a (0.1 per period)
        [0.2, 0.5],
        [0.2, 0.5],  # NaN row: hold the previous point
        [0.3, 1.5],  # clamp to [1, 2] then step from [0.2, 0.5]
    ]
    assert out == pytest.approx(np.array(expected))
    assert f.last_command.tolist() == [0.0, 0.0]
    assert f.report().updates == 0


def test_filter_points_matches_repeated_update():
    lim = limits(max_velocity=(2.0, 3.0), max_distance=0.25)
    targets = np.array([[0.3, -0.4], [0.9, 0.9], [-0.2, 0.1], [0.0, np.inf], [1.5, -3.0]])
    measured = np.array([0.1, -0.1])
    look_ahead = SafetyFilter(lim)
    look_ahead.reset([0.0, 0.0])
    stepwise = SafetyFilter(lim)
    stepwise.reset([0.0, 0.0])
    out = look_ahead.filter_points(targets, measured, 0.05)
    for row, target in zip(out, targets):
        assert row == pytest.approx(stepwise.update(target, measured, 0.05), abs=1e-15)
    # Distance bound: every point within 0.25 of measured.
    assert (np.abs(out - measured) <= 0.25 + 1e-12).all()
    assert out[0] == pytest.approx([0.1, -0.15])


def test_filter_points_empty_and_shape_check():
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0])
    assert f.filter_points(np.zeros((0, 2)), None, 0.1).shape == (0, 2)
    with pytest.raises(ValueError):
        f.filter_points(np.zeros((3, 3)), None, 0.1)


# -- property: every published point obeys every limit ----------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

JOINTS = 3
_anything = st.one_of(
    st.floats(-10.0, 10.0), st.sampled_from([np.nan, np.inf, -np.inf])
)
_finite = st.floats(-10.0, 10.0)


@st.composite
def _case(draw):
    lower = np.array(draw(hnp.arrays(np.float64, JOINTS, elements=st.floats(-3.0, 0.0))))
    width = np.array(draw(hnp.arrays(np.float64, JOINTS, elements=st.floats(0.01, 3.0))))
    velocity = np.array(draw(hnp.arrays(np.float64, JOINTS, elements=st.floats(0.01, 5.0))))
    distance = draw(st.one_of(st.just(math.inf), st.floats(0.01, 1.0)))
    lim = JointLimits(tuple("abc"), tuple(lower), tuple(lower + width), tuple(velocity), distance)
    previous = draw(st.one_of(st.none(), hnp.arrays(np.float64, JOINTS, elements=_finite)))
    measured = draw(
        st.one_of(
            st.none(),
            hnp.arrays(np.float64, JOINTS, elements=st.one_of(_finite, st.just(np.nan))),
        )
    )
    if previous is None and (measured is None or not np.isfinite(measured).all()):
        measured = np.array(draw(hnp.arrays(np.float64, JOINTS, elements=_finite)))
    targets = draw(hnp.arrays(np.float64, (draw(st.integers(1, 4)), JOINTS), elements=_anything))
    dt = draw(st.floats(0.001, 0.2))
    return lim, previous, measured, targets, dt


def _outside(lim, x):
    """How far x lies outside [lower, upper], per joint (0 inside)."""
    lower, upper = np.array(lim.lower), np.array(lim.upper)
    return np.maximum(lower - x, 0.0) + np.maximum(x - upper, 0.0)


def _check_point(lim, before, point, measured, dt):
    lower, upper = np.array(lim.lower), np.array(lim.upper)
    step = np.array(lim.max_velocity) * dt
    tol = 1e-9 * np.maximum(1.0, np.abs(before))
    assert np.isfinite(point).all()
    assert (np.abs(point - before) <= step + tol).all(), "velocity limit"
    # Inside the limits; a point stepping from outside them gets a step closer.
    assert (_outside(lim, point) <= np.maximum(_outside(lim, before) - step, 0.0) + tol).all(), "position"
    if measured is None:
        return
    d = np.array(lim.max_distance_from_measured)
    lo, hi = np.maximum(lower, before - step), np.minimum(upper, before + step)
    for j in range(JOINTS):
        if np.isnan(measured[j]) or abs(point[j] - measured[j]) <= d[j] * (1 + 1e-9):
            continue
        # The distance bound is broken only where it cannot be met, and then the
        # command is as close to the measured position as the hard limits allow.
        if lo[j] > hi[j]:
            continue  # stepping in from outside the limits: the single allowed point
        nearest = min(max(measured[j], lo[j]), hi[j])
        assert abs(point[j] - nearest) <= 1e-9 * max(1.0, abs(nearest)), "moves toward the robot"
        assert abs(nearest - measured[j]) > d[j] * (1 - 1e-9), "the bound could have been met"


@settings(max_examples=400, deadline=None)
@given(_case())
def test_property_every_published_point_obeys_every_limit(case):
    lim, previous, measured, targets, dt = case
    f = SafetyFilter(lim)
    if previous is not None:
        f.reset(previous)
    start = f.previous(measured)
    np.testing.assert_array_equal(start, previous if previous is not None else measured)
    look_ahead = f.filter_points(targets, measured, dt)  # commits nothing
    before = start
    for point in look_ahead:
        _check_point(lim, before, point, measured, dt)
        before = point
    out = f.update(targets[0], measured, dt)
    np.testing.assert_array_equal(out, look_ahead[0])
    _check_point(lim, start, out, measured, dt)
    assert f.hold(measured).tolist() == out.tolist()
