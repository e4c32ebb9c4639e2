"""JointStateMerger: partial JointState messages folded into one state, with per-joint staleness."""

import math

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from vla_ros.errors import ConfigError, ObservationError
from vla_ros.ros.joint_state_merge import JointStateMerger

ARM, GRIPPER = ["j1", "j2", "j3"], ["finger"]


def message(names, positions) -> JointState:
    msg = JointState()
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    return msg


def test_state_appears_once_every_joint_was_heard():
    merger = JointStateMerger(ARM + GRIPPER, max_skew=0.1)
    with pytest.raises(ObservationError, match=r"no position yet for joints \['finger'\]"):
        merger.update(message(["j3", "j1", "j2", "wheel"], [3, 1, 2, 9]), stamp=10.00)
    positions, stamp = merger.update(message(["finger"], [0.5]), stamp=10.01)
    assert positions.tolist() == [1.0, 2.0, 3.0, 0.5] and stamp == 10.01
    # The arm moves; the gripper keeps its last value.
    positions, stamp = merger.update(message(ARM, [4, 5, 6]), stamp=10.02)
    assert positions.tolist() == [4.0, 5.0, 6.0, 0.5] and stamp == 10.02


def test_stamp_never_goes_backwards_across_publishers():
    merger = JointStateMerger(ARM + GRIPPER)
    merger.update(message(ARM + GRIPPER, [0, 0, 0, 0]), stamp=5.000)
    _, stamp = merger.update(message(ARM, [1, 1, 1]), stamp=5.010)
    _, later = merger.update(message(GRIPPER, [1]), stamp=5.004)  # the gripper's clock lags
    assert stamp == later == 5.010


def test_a_silent_joint_refuses_the_state_naming_it():
    merger = JointStateMerger(ARM + GRIPPER, max_skew=0.1)
    merger.update(message(ARM + GRIPPER, [0, 0, 0, 0]), stamp=1.0)
    merger.update(message(ARM, [1, 1, 1]), stamp=1.05)  # gripper 0.05 s behind: fine
    with pytest.raises(ObservationError) as info:
        merger.update(message(ARM, [1, 1, 1]), stamp=1.25)
    assert "'finger': 0.25" in str(info.value) and "max_staleness is 0.1" in str(info.value)
    positions, _ = merger.update(message(GRIPPER, [0.7]), stamp=1.26)  # it speaks again
    assert positions[-1] == 0.7


def test_bad_messages_are_refused_without_touching_the_state():
    merger = JointStateMerger(ARM)
    merger.update(message(ARM, [1, 2, 3]), stamp=1.0)
    with pytest.raises(ObservationError, match="none of the configured joints"):
        merger.update(message(["wheel"], [0.0]), stamp=1.1)
    with pytest.raises(ObservationError, match=r"non-finite positions for joints \['j2'\]"):
        merger.update(message(["j2", "j1"], [math.nan, 7.0]), stamp=1.1)
    with pytest.raises(ObservationError, match="2 names but 1 positions"):
        merger.update(_mismatched(), stamp=1.1)
    positions, _ = merger.update(message(["j3"], [4.0]), stamp=1.2)
    assert positions.tolist() == [1.0, 2.0, 4.0]  # the refused j1 = 7.0 never landed


def _mismatched() -> JointState:
    msg = JointState()
    msg.name = ["j1", "j2"]
    msg.position = [0.0]
    return msg


def test_reset_forgets_every_joint():
    merger = JointStateMerger(ARM)
    merger.update(message(ARM, [1, 2, 3]), stamp=1.0)
    merger.reset()
    with pytest.raises(ObservationError, match="no position yet"):
        merger.update(message(["j1"], [1.0]), stamp=2.0)


def test_config_errors_name_the_parameter():
    with pytest.raises(ConfigError) as info:
        JointStateMerger([])
    assert info.value.parameter == "joint_names"
    with pytest.raises(ConfigError) as info:
        JointStateMerger(ARM, max_skew=0.0)
    assert info.value.parameter == "joint_states.max_staleness"
    assert np.isinf(JointStateMerger(ARM).max_skew)
