"""The robot must fit the checkpoint: PolicySpec, check_fits, the runners' spec, Policy.infer's input checks.

Tiny checkpoints are corrupted on purpose (7-dim norm stats, a 14-dim checkpoint
on an 8-joint robot, a JSON list as config.json); every disagreement is one
ConfigError line naming the parameter (or file) to change.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from vla_ros.config import NodeConfig
from vla_ros.errors import CheckpointError, ConfigError, ObservationError
from vla_ros.observation.normalize import save_norm_stats
from vla_ros.policy import (
    check_config_fits,
    check_fits,
    Policy,
    PolicyOptions,
    PolicySpec,
    read_spec,
)
from vla_ros.ros.inference_worker import make_runner, ProcessRunner, ThreadRunner
from vla_ros.tools.make_tiny import make_norm_stats
from vla_ros.types import ActionChunk, RawObservation

OPTIONS = PolicyOptions(device="cpu", seed=0, num_threads=1)


def node_config(joints: int, **policy) -> NodeConfig:
    return NodeConfig.from_dict(
        {
            "joint_names": [f"j{i}" for i in range(joints)],
            "limits": {"lower": [-1.0] * joints, "upper": [1.0] * joints, "max_velocity": [2.0]},
            "policy": policy,
        }
    )


def with_norm_stats(checkpoint, tmp_path, state_dims: int, action_dims: int | None = None):
    """A copy of `checkpoint` whose norm stats have other dims."""
    out = tmp_path / f"ckpt_{state_dims}_{action_dims}"
    shutil.copytree(checkpoint, out)
    stats = make_norm_stats(state_dims, 0)
    if action_dims is not None:
        stats["actions"] = make_norm_stats(action_dims, 1)["actions"]
    save_norm_stats(out / "assets" / "robot" / "norm_stats.json", stats)
    return out


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


class FakePolicy:
    """A test double without `.spec` (picklable by reference, for the process runner)."""

    def infer(self, obs):
        return ActionChunk(np.zeros((50, 8), np.float32), obs.timestamp, {"total": 0.0})


# --------------------------------------------------------------- the spec ---


def test_spec_describes_the_checkpoint_and_matches_the_loaded_policy(tiny_checkpoint):
    spec = read_spec(tiny_checkpoint, OPTIONS)
    assert (spec.config_name, spec.variant, spec.model_dim) == ("pi0-tiny", "pi0", 32)
    assert (spec.state_dim, spec.action_stats_dim, spec.action_dims) == (14, 14, None)
    assert spec.camera_keys == ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    assert (spec.image_size, spec.action_horizon, spec.max_token_len) == (224, 50, 48)
    assert spec.norm_stats.endswith("assets/robot/norm_stats.json")
    assert spec.untrained, "make-tiny records untrained: true in config.json"
    assert Policy.from_checkpoint(tiny_checkpoint, OPTIONS).spec == spec
    # Plain data: it crosses the process boundary and JSON alike.
    data = json.loads(json.dumps(spec.to_dict()))
    assert PolicySpec.from_dict(data) == spec


def test_fitting_robot_passes_with_the_untrained_warning(tiny_checkpoint):
    spec = read_spec(tiny_checkpoint, OPTIONS)
    warnings = check_config_fits(spec, node_config(14))
    assert len(warnings) == 1 and "untrained" in warnings[0]
    assert check_fits(spec, 14, 14, camera_keys=["base_0_rgb"]) == warnings


# ---------------------------------------------------------- disagreements ---


def test_14_dim_checkpoint_on_an_8_joint_robot_names_joint_names(tiny_checkpoint):
    spec = read_spec(tiny_checkpoint, OPTIONS)
    with pytest.raises(ConfigError) as info:
        check_config_fits(spec, node_config(8))
    message = one_line(info.value)
    assert info.value.parameter == "joint_names"
    assert "8 joints" in message and "14 state dims" in message and spec.norm_stats in message
    assert "policy.asset_id" in message


def test_7_dim_norm_stats_name_the_file(tiny_checkpoint, tmp_path):
    checkpoint = with_norm_stats(tiny_checkpoint, tmp_path, 7)
    spec = read_spec(checkpoint, OPTIONS)
    assert (spec.state_dim, spec.action_stats_dim) == (7, 7)
    with pytest.raises(ConfigError) as info:
        check_config_fits(spec, node_config(8))
    message = one_line(info.value)
    assert info.value.parameter == "joint_names"
    assert str(checkpoint / "assets" / "robot" / "norm_stats.json") in message
    assert "8 joints" in message and "7 state dims" in message


def test_action_stats_that_differ_from_the_joints_name_the_checkpoint(tiny_checkpoint, tmp_path):
    checkpoint = with_norm_stats(tiny_checkpoint, tmp_path, 8, 7)
    spec = read_spec(checkpoint, OPTIONS)
    # The node maps actions one-to-one onto the joints: only another checkpoint helps.
    with pytest.raises(ConfigError) as info:
        check_config_fits(spec, node_config(8))
    message = one_line(info.value)
    assert info.value.parameter == "checkpoint"
    assert "8 action dims" in message and "7 action dims" in message and spec.norm_stats in message
    # A tool that can output fewer dims says which value to set.
    with pytest.raises(ConfigError) as info:
        check_fits(spec, 8, action_dims_from="--action-dims")
    assert info.value.parameter == "--action-dims" and "set --action-dims to 7" in one_line(info.value)
    assert check_fits(spec, 8, 7)  # fits: only the untrained warning


def test_more_joints_than_the_model_width(tiny_checkpoint):
    spec = read_spec(tiny_checkpoint, OPTIONS)
    with pytest.raises(ConfigError) as info:
        check_fits(spec, 33)
    assert info.value.parameter == "joint_names"
    assert "33 joints" in one_line(info.value) and "at most 32" in str(info.value)


def test_norm_stats_wider_than_the_model_name_the_checkpoint(tiny_checkpoint, tmp_path):
    spec = PolicySpec.from_dict({**read_spec(tiny_checkpoint, OPTIONS).to_dict(), "model_dim": 8})
    with pytest.raises(ConfigError) as info:
        check_fits(spec, 8)
    assert info.value.parameter == "checkpoint"
    assert "14 state and 14 action dims" in one_line(info.value) and "another checkpoint" in str(info.value)


def test_policy_loaded_with_other_action_dims(tiny_checkpoint):
    spec = read_spec(tiny_checkpoint, PolicyOptions(device="cpu", action_dims=14))
    assert spec.action_dims == 14
    with pytest.raises(ConfigError) as info:
        check_fits(spec, 14, 7)
    assert info.value.parameter == "policy.action_dims" and "loaded with action_dims 14" in str(info.value)


def test_cameras_must_be_model_slots_and_at_least_one(tiny_checkpoint):
    spec = read_spec(tiny_checkpoint, OPTIONS)
    with pytest.raises(ConfigError) as info:
        check_fits(spec, 14, camera_keys=[])
    assert info.value.parameter == "cameras.keys" and "no camera configured" in one_line(info.value)
    two_slots = PolicySpec.from_dict({**spec.to_dict(), "camera_keys": ["base_0_rgb", "left_wrist_0_rgb"]})
    with pytest.raises(ConfigError) as info:
        check_fits(two_slots, 14, camera_keys=["base_0_rgb", "right_wrist_0_rgb"])
    assert info.value.parameter == "cameras.keys" and "['right_wrist_0_rgb']" in one_line(info.value)


def test_config_json_that_is_not_an_object(tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "config.json").write_text("[1, 2, 3]\n")
    for load in (lambda: read_spec(checkpoint, OPTIONS), lambda: Policy.from_checkpoint(checkpoint, OPTIONS)):
        with pytest.raises(CheckpointError) as info:
            load()
        message = one_line(info.value)
        assert str(checkpoint / "config.json") in message and "JSON object" in message and "array" in message


# ---------------------------------------------------- runners and doubles ---


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_runners_expose_the_spec_for_the_node_check(tiny_checkpoint, mode):
    # The process runner gets it from the child with its "ready" message.
    runner = make_runner(mode, tiny_checkpoint, OPTIONS, timeout=60.0)
    try:
        assert runner.mode == mode and (mode == "thread" or isinstance(runner, ProcessRunner))
        assert runner.spec == read_spec(tiny_checkpoint, OPTIONS)
        with pytest.raises(ConfigError, match="joint_names"):
            check_config_fits(runner.spec, node_config(8))
    finally:
        runner.close()


def test_test_doubles_without_a_spec_skip_the_check(caplog):
    runner = ProcessRunner(None, factory=FakePolicy, timeout=30.0)
    try:
        assert runner.spec is None
    finally:
        runner.close()
    assert ThreadRunner(FakePolicy()).spec is None
    with caplog.at_level(logging.DEBUG, logger="vla_ros.policy"):
        assert check_config_fits(None, node_config(8)) == []
    assert "not checked" in caplog.text


# ----------------------------------------------------- Policy.infer inputs ---


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    return Policy.from_checkpoint(tiny_checkpoint, OPTIONS)


def _obs(images, state=None):
    return RawObservation(images, np.zeros(14, np.float32) if state is None else state, "pick it up")


def test_observation_without_a_known_camera_is_an_error(policy):
    frame = np.zeros((48, 64, 3), np.uint8)
    for images in ({}, {"cam_high": frame}):
        with pytest.raises(ObservationError) as info:
            policy.infer(_obs(images))
        message = one_line(info.value)
        assert "no usable camera" in message and "base_0_rgb" in message and "right_wrist_0_rgb" in message
    assert policy.infer(_obs({"left_wrist_0_rgb": frame})).actions.shape == (50, 14)


def test_nan_or_inf_in_the_state_says_which_entries(policy):
    frame = np.zeros((48, 64, 3), np.uint8)
    state = np.zeros(14, np.float32)
    state[3], state[9] = np.nan, np.inf
    with pytest.raises(ObservationError) as info:
        policy.infer(_obs({"base_0_rgb": frame}, state))
    message = one_line(info.value)
    assert "NaN/inf" in message and "[3]=nan" in message and "[9]=inf" in message


def test_the_node_never_asks_for_an_observation_without_a_camera(tiny_checkpoint):
    from vla_ros.observation.buffers import ObservationAssembler

    config = node_config(14)
    asm = ObservationAssembler(config.sync_config())  # missing_camera_policy 'mask'
    asm.update_prompt("pick it up")
    asm.update_state(np.zeros(14), 10.0, 10.0)
    assert asm.assemble(10.0).observation is None, "no camera received yet"
    asm.update_image("left_wrist_0_rgb", np.zeros((4, 4, 3), np.uint8), 10.0, 10.0)
    assert set(asm.assemble(10.05).observation.images) == {"left_wrist_0_rgb"}
    assert asm.assemble(11.0).observation is None, "every camera stale"
    # The only way to an observation without images is a config without cameras: refused at configure.
    no_cameras = NodeConfig.from_dict(
        {
            "joint_names": list(config.joint_names),
            "limits": {"lower": [-1.0] * 14, "upper": [1.0] * 14, "max_velocity": [2.0]},
            "cameras": {"keys": []},
        }
    )
    with pytest.raises(ConfigError) as info:
        check_config_fits(read_spec(tiny_checkpoint, OPTIONS), no_cameras)
    assert info.value.parameter == "cameras.keys"
