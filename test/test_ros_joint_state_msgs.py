"""JointState -> configured joint positions (vla_ros.ros.joint_state_msgs.JointStateMapper)."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import JointState

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.ros.joint_state_msgs import JointStateMapper


def joint_state(names: list[str], positions: list[float]) -> JointState:
    msg = JointState()
    msg.name = names
    msg.position = positions
    return msg


def test_joint_state_mapper_reorders_and_ignores_extras() -> None:
    mapper = JointStateMapper(["j1", "j2", "j3"])
    out = mapper.update(joint_state(["gripper", "j3", "j1", "wheel", "j2"], [9.0, 3.0, 1.0, 8.0, 2.0]))
    assert out.dtype == np.float64
    assert out.tolist() == [1.0, 2.0, 3.0]
    assert mapper.joint_names == ("j1", "j2", "j3")


def test_joint_state_mapper_caches_one_layout_per_name_list() -> None:
    mapper = JointStateMapper(["a", "b"])
    for value in range(5):
        assert mapper.update(joint_state(["b", "a"], [float(value), 10.0])).tolist() == [10.0, float(value)]
    assert len(mapper._layouts) == 1
    assert mapper.update(joint_state(["a", "b"], [1.0, 2.0])).tolist() == [1.0, 2.0]
    assert len(mapper._layouts) == 2
    mapper.reset()
    assert len(mapper._layouts) == 0


def test_joint_state_mapper_output_does_not_alias_the_message() -> None:
    msg = joint_state(["a"], [1.0])
    out = JointStateMapper(["a"]).update(msg)
    out[0] = 5.0
    assert msg.position[0] == 1.0


def test_joint_state_mapper_lists_missing_joints() -> None:
    mapper = JointStateMapper(["j1", "j2", "j3"])
    with pytest.raises(ObservationError) as info:
        mapper.update(joint_state(["j2"], [0.0]))
    assert str(info.value) == "joint state is missing joints ['j1', 'j3']; it has ['j2']"
    with pytest.raises(ObservationError, match=r"missing joints \['j1', 'j3'\]"):  # cached path
        mapper.update(joint_state(["j2"], [0.0]))


def test_joint_state_mapper_names_non_finite_joints() -> None:
    mapper = JointStateMapper(["j1", "j2", "j3"])
    msg = joint_state(["j3", "j2", "j1", "extra"], [float("inf"), 0.0, float("nan"), float("nan")])
    with pytest.raises(ObservationError) as info:
        mapper.update(msg)
    assert str(info.value) == "joint state has non-finite positions for joints ['j1', 'j3']"


def test_joint_state_mapper_rejects_length_mismatch() -> None:
    mapper = JointStateMapper(["j1"])
    with pytest.raises(ObservationError, match="has 2 names but 1 positions"):
        mapper.update(joint_state(["j1", "j2"], [0.0]))
    with pytest.raises(ObservationError, match="has 1 names but 0 positions"):
        mapper.update(joint_state(["j1"], []))


def test_joint_state_mapper_config_validation() -> None:
    with pytest.raises(ConfigError) as info:
        JointStateMapper([])
    assert info.value.parameter == "joint_names"
    with pytest.raises(ConfigError, match=r"repeated: \['a'\]"):
        JointStateMapper(["a", "b", "a"])
