"""Robot transforms: ALOHA joint flips, gripper geometry, camera renames, the factory."""

import math

import numpy as np
import pytest

from vla_ros.errors import ConfigError, ObservationError
from vla_ros.observation.transforms import (
    AlohaTransform,
    gripper_angular_to_linear,
    gripper_linear_to_angular,
    IdentityTransform,
    make_transform,
    RobotTransform,
)

FLIPPED = [1, 2, 8, 9]
UNCHANGED_JOINTS = [0, 3, 4, 5, 7, 10, 11, 12]


def test_state_to_pi_hand_computed():
    state = np.arange(14, dtype=np.float64) * 0.1
    state[6], state[13] = 1.0, 0.0  # grippers: fully open, fully closed
    out = AlohaTransform().state_to_pi(state)
    np.testing.assert_allclose(out[FLIPPED], -state[FLIPPED])
    np.testing.assert_allclose(out[UNCHANGED_JOINTS], state[UNCHANGED_JOINTS])
    # Open: linear 0.058 m; sin = (0.022^2 + 0.058^2 - 0.036^2) / (2*0.022*0.058)
    #       = 0.002552 / 0.002552 = 1 -> angle pi/2, normalized over (0.5476, 1.6296).
    assert out[6] == pytest.approx((math.pi / 2 - 0.5476) / 1.082, abs=1e-12)
    # Closed: linear 0.01844 m; sin = (0.000484 + 0.0003400336 - 0.001296) / 0.00081136
    #         = -0.581700... -> angle -0.6208145 rad -> (-0.6208145 - 0.5476) / 1.082.
    assert out[13] == pytest.approx(-1.0798655, abs=1e-6)


def test_outputs_hand_computed():
    actions = np.zeros((2, 14))
    actions[:, FLIPPED] = 0.25
    actions[0, 6], actions[0, 13] = 0.0, 0.9434
    actions[1, 6], actions[1, 13] = -0.5476, 0.2
    out = AlohaTransform().outputs(actions)
    np.testing.assert_allclose(out[:, FLIPPED], -0.25)
    # gripper: (a + 0.5476 + 0.6213) / (1.4910 + 0.6213)
    np.testing.assert_allclose(out[0, [6, 13]], [1.1689 / 2.1123, 1.0], rtol=1e-12)
    np.testing.assert_allclose(out[1, [6, 13]], [0.6213 / 2.1123, 1.3689 / 2.1123], rtol=1e-12)


def test_gripper_state_geometry_round_trip():
    linear = np.linspace(0.0, 1.0, 101)
    angular = gripper_linear_to_angular(linear)
    assert np.all(np.diff(angular) > 0)  # opening the fingers opens the servo
    np.testing.assert_allclose(gripper_angular_to_linear(angular), linear, atol=1e-9)


def test_aloha_round_trips():
    rng = np.random.default_rng(0)
    t = AlohaTransform()
    actions = rng.normal(size=(50, 14))
    np.testing.assert_allclose(t.outputs(t.actions_to_pi(actions)), actions, atol=1e-12)
    np.testing.assert_allclose(t.actions_to_pi(t.outputs(actions)), actions, atol=1e-12)
    state = rng.uniform(-1.0, 1.0, 14)
    state[[6, 13]] = [0.2, 0.9]
    np.testing.assert_allclose(t.state_from_pi(t.state_to_pi(state)), state, atol=1e-9)


def test_dtype_kept_and_input_not_modified():
    state = np.full(14, 0.5, dtype=np.float32)
    out = AlohaTransform().state_to_pi(state)
    assert out.dtype == np.float32 and (state == 0.5).all()
    actions = np.full((3, 14), 0.5, dtype=np.float32)
    assert AlohaTransform().outputs(actions).dtype == np.float32 and (actions == 0.5).all()


def test_wider_actions_keep_extra_dims():
    actions = np.full((2, 32), 0.3)
    out = AlohaTransform().outputs(actions)
    np.testing.assert_array_equal(out[:, 14:], 0.3)
    np.testing.assert_allclose(out[:, 1], -0.3)


def test_without_adapt_to_pi_values_pass_but_cameras_rename():
    t = make_transform("aloha", adapt_to_pi=False)
    state = np.linspace(-1.0, 1.0, 14)
    image = np.zeros((4, 4, 3), np.uint8)
    new_state, images = t.inputs(state, {"cam_high": image, "cam_low": image, "cam_right_wrist": image})
    np.testing.assert_array_equal(new_state, state)
    assert set(images) == {"base_0_rgb", "right_wrist_0_rgb"}
    assert images["base_0_rgb"] is image
    np.testing.assert_array_equal(t.outputs(np.ones((2, 14))), np.ones((2, 14)))


def test_camera_renames_and_unknown_camera():
    image = np.zeros((4, 4, 3), np.uint8)
    _, images = AlohaTransform().inputs(np.zeros(14), {"cam_left_wrist": image, "cam_high": image})
    assert set(images) == {"left_wrist_0_rgb", "base_0_rgb"}
    with pytest.raises(ObservationError, match="cam_wrist") as err:
        AlohaTransform().inputs(np.zeros(14), {"cam_wrist": image})
    assert "cam_left_wrist" in str(err.value)


def test_aloha_rejects_wrong_dims():
    with pytest.raises(ObservationError, match="14"):
        AlohaTransform().state_to_pi(np.zeros(7))
    with pytest.raises(ObservationError, match="14"):
        AlohaTransform().outputs(np.zeros((50, 7)))


def test_aloha_accepts_model_camera_keys():
    # The node keys cameras by model slot; robot names and model slots both work, a clash does not.
    image = np.zeros((2, 2, 3), np.uint8)
    _, images = AlohaTransform().inputs(np.zeros(14), {"base_0_rgb": image, "cam_left_wrist": image})
    assert set(images) == {"base_0_rgb", "left_wrist_0_rgb"}
    with pytest.raises(ObservationError, match="same model slot"):
        AlohaTransform().inputs(np.zeros(14), {"base_0_rgb": image, "cam_high": image})


def test_identity_passes_through():
    t = make_transform("identity")
    state = np.array([1.0, 2.0])
    images = {"base_0_rgb": np.zeros((2, 2, 3), np.uint8)}
    new_state, new_images = t.inputs(state, images)
    np.testing.assert_array_equal(new_state, state)
    assert new_images == images
    np.testing.assert_array_equal(t.outputs(np.ones((3, 2))), np.ones((3, 2)))


def test_factory():
    assert isinstance(make_transform("identity"), IdentityTransform)
    assert make_transform("aloha") == AlohaTransform(adapt_to_pi=True)
    assert isinstance(make_transform("aloha"), RobotTransform)
    with pytest.raises(ConfigError) as err:
        make_transform("franka")
    assert err.value.parameter == "robot_transform"
    assert "identity" in str(err.value) and "aloha" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_transform("aloha", flip=True)
    assert err.value.parameter == "robot_transform"
    with pytest.raises(ConfigError) as err:
        AlohaTransform(adapt_to_pi="yes")
    assert err.value.parameter == "adapt_to_pi"
