"""VlaPolicyNode in the test process over real DDS, with a fake policy (same infer() interface).

The fake policy proposes actions far beyond the joint limits, which makes the
safety filter's work visible in the published values, and can be told to
fail. One node serves the tests in order: lifecycle transitions, clamping,
the 'pause' camera policy, inference failures, dry run after a reconfigure;
the last test checks that bad parameters fail configure with the name of
the parameter.
"""

from __future__ import annotations

import signal
import threading
import time

from lifecycle_msgs.msg import State
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from test_node_harness import check_trajectory, Harness, is_hold, JOINT_NAMES, MEASURED
from vla_ros.config import NodeConfig
from vla_ros.errors import ConfigError
from vla_ros.ros.node import _StopRequest, make_executor, VlaPolicyNode
from vla_ros.ros.params import read_parameters
from vla_ros.types import ActionChunk

PREFIX = "/vla_ip"
RATE = 50.0
PERIOD = 1.0 / RATE
LIMIT = 0.5
MAX_VELOCITY = 1.0
CAMERAS = {"base_0_rgb": (f"{PREFIX}/cam_high", "rgb8"), "left_wrist_0_rgb": (f"{PREFIX}/cam_left", "mono8")}


class FakePolicy:
    """Policy.infer's interface: a chunk of 50 actions at +-100 rad (far outside the limits)."""

    def __init__(self) -> None:
        self.values = np.array([100.0 if i % 2 == 0 else -100.0 for i in range(len(JOINT_NAMES))], np.float32)
        self.fail = False
        self.calls = 0

    def infer(self, obs):
        self.calls += 1
        if self.fail:
            raise RuntimeError("fake engine failure")
        assert set(obs.images) <= set(CAMERAS) and obs.state.shape == (len(JOINT_NAMES),)
        actions = np.tile(self.values, (50, 1))
        return ActionChunk(actions=actions, timestamp=obs.timestamp, timings={"total": 0.001})


def flat_parameters(**overrides) -> dict:
    flat = {
        "control_rate": RATE,
        "joint_names": JOINT_NAMES,
        "policy.warmup_runs": 1,
        "prompt.topic": f"{PREFIX}/instruction",
        "prompt.default": "stack the blocks",
        "joint_states.topic": f"{PREFIX}/joint_states",
        "cameras.keys": list(CAMERAS),
        "cameras.base_0_rgb.topic": CAMERAS["base_0_rgb"][0],
        "cameras.left_wrist_0_rgb.topic": CAMERAS["left_wrist_0_rgb"][0],
        "sync.missing_camera_policy": "pause",
        "sync.max_skew": 0.1,
        "inference.retry_delay": 0.2,
        "output.trajectory_topic": f"{PREFIX}/joint_trajectory",
        "output.position_topic": f"{PREFIX}/commands",
        "limits.lower": [-LIMIT] * len(JOINT_NAMES),
        "limits.upper": [LIMIT] * len(JOINT_NAMES),
        "limits.max_velocity": [MAX_VELOCITY],
        "limits.max_distance_from_measured": [10.0],
        "watchdog.obs_timeout": 0.5,
        "diagnostics.window": 2.0,
    }
    flat.update(overrides)
    return flat


def as_parameters(flat: dict) -> list[Parameter]:
    return [Parameter(name, value=value) for name, value in flat.items()]


@pytest.fixture(scope="module")
def system():
    harness = Harness(PREFIX, CAMERAS)
    policy = FakePolicy()
    node = VlaPolicyNode(
        context=harness.context,
        parameter_overrides=as_parameters(flat_parameters()),
        policy_factory=lambda: policy,
    )
    executor = make_executor(1, context=harness.context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield harness, node, policy
    finally:
        node.release()
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        harness.close()


def _state(node) -> int:
    return node._state_machine.current_state[0]


def _window(harness, store, seconds):
    t0 = time.monotonic()
    time.sleep(seconds)
    return harness.since(store, t0)


def test_lifecycle_transitions(system):
    harness, node, policy = system
    assert _state(node) == State.PRIMARY_STATE_UNCONFIGURED
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert _state(node) == State.PRIMARY_STATE_INACTIVE
    assert policy.calls >= 1, "configure warms the policy up"
    assert harness.wait_for_diagnostics(lambda v: v["lifecycle"] == "inactive", timeout=3.0)
    assert not _window(harness, harness.trajectories, 0.3), "an inactive node publishes nothing"

    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert harness.wait_for(lambda: len(harness.trajectories) > 10, timeout=5.0)

    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    time.sleep(0.2)
    count = len(harness.trajectories)
    last = harness.trajectories[-1][1]
    assert is_hold(last), "deactivate publishes a hold at the last command"
    time.sleep(0.3)
    assert len(harness.trajectories) == count, "a deactivated node publishes nothing"

    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert harness.wait_for(lambda: len(harness.trajectories) > count + 10, timeout=5.0)


def test_policy_output_beyond_limits_is_clamped(system):
    harness, node, policy = system
    assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=5.0)
    messages = _window(harness, harness.trajectories, 1.5)
    assert len(messages) > 60
    step = MAX_VELOCITY * PERIOD + 1e-9
    firsts = []
    for msg in messages:
        check_trajectory(msg, JOINT_NAMES, PERIOD, 5)
        points = np.array([p.positions for p in msg.points])
        assert np.all(np.abs(points) <= LIMIT + 1e-12), "position limits"
        assert np.all(np.abs(np.diff(points, axis=0)) <= step), "velocity limit between look-ahead points"
        firsts.append(points[0])
    firsts = np.array(firsts)
    # Consecutive commands (one period apart) step by at most max_velocity * period
    # (a lost message can double the gap, hence the factor 2).
    assert np.all(np.abs(np.diff(firsts, axis=0)) <= 2 * step)
    # The policy asks for +-100 rad: the commands end at the position limits.
    np.testing.assert_allclose(firsts[-1], np.where(policy.values > 0, LIMIT, -LIMIT))
    positions = _window(harness, harness.positions, 0.3)
    assert positions and all(np.all(np.abs(m.data) <= LIMIT + 1e-12) for m in positions)
    values = harness.wait_for_diagnostics(lambda v: True, timeout=3.0)
    assert int(values["safety.position_clamps"]) > 0 and int(values["safety.velocity_clamps"]) > 0
    assert "clamped by limits" in values["_message"]


def test_stopped_camera_holds_under_pause_policy(system):
    harness, node, policy = system
    harness.camera_enabled["left_wrist_0_rgb"] = False
    try:
        values = harness.wait_for_diagnostics(lambda v: v["state"] == "HOLDING", timeout=4.0)
        assert values is not None, harness.latest_diagnostics()
        assert "camera left_wrist_0_rgb stale" in values["hold_reason"], values["hold_reason"]
        assert "camera left_wrist_0_rgb" in values["_message"]
        time.sleep(0.1)
        recent = _window(harness, harness.trajectories, 0.4)
        assert recent and all(is_hold(m) for m in recent)
    finally:
        harness.camera_enabled["left_wrist_0_rgb"] = True
    assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=5.0)


def test_inference_failure_holds_until_a_chunk_arrives(system):
    harness, node, policy = system
    policy.fail = True
    try:
        values = harness.wait_for_diagnostics(lambda v: v["state"] == "HOLDING", timeout=5.0)
        assert values is not None, harness.latest_diagnostics()
        assert "fake engine failure" in values["hold_reason"]
        assert values["_level"] == 2  # ERROR
        assert int(values["inference.failures"]) >= 1
    finally:
        policy.fail = False
    assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=5.0)


def test_dry_run_publishes_to_the_debug_topic_only(system):
    harness, node, policy = system
    refused = node.set_parameters([Parameter("dry_run", value=True)])[0]
    assert not refused.successful and "configure" in refused.reason, "parameters apply at configure"
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert _state(node) == State.PRIMARY_STATE_UNCONFIGURED
    assert node.set_parameters([Parameter("dry_run", value=True)])[0].successful
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        # Generous timeouts: on two loaded cores the first periods after activation can lag.
        assert harness.wait_for(lambda: len(harness.debug_trajectories) > 10, timeout=15.0)
        assert not _window(harness, harness.trajectories, 0.5), "dry run must not command the controller"
        assert harness.wait_for(lambda: len(harness.debug_trajectories) > 20, timeout=10.0)
    finally:
        node.trigger_deactivate()
        node.trigger_cleanup()


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("limits.max_velocity", [1.0, 1.0, -2.0] + [1.0] * 11, "limits.max_velocity[2]"),
        ("cameras.base_0_rgb.transport", "h264", "cameras.base_0_rgb.transport"),
        ("limits.max_velocty", [1.0], "did you mean 'limits.max_velocity'"),
        ("cameras.right_wrist_0_rgb.topic", "/x", "cameras.right_wrist_0_rgb"),
    ],
)
def test_bad_parameters_fail_configure_naming_the_parameter(system, name, value, fragment):
    harness, node, policy = system
    bad = VlaPolicyNode(
        "vla_policy_bad",
        context=harness.context,
        parameter_overrides=as_parameters(flat_parameters(**{name: value})),
        policy_factory=FakePolicy,
    )
    try:
        with pytest.raises(ConfigError) as info:
            NodeConfig.from_flat(read_parameters(bad))
        assert fragment in str(info.value)
        assert bad.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert _state(bad) == State.PRIMARY_STATE_UNCONFIGURED
    finally:
        bad.destroy_node()


def test_parameters_are_declared_with_descriptions(system):
    harness, node, policy = system
    names = [
        "control_rate",
        "limits.max_velocity",
        "cameras.base_0_rgb.transport",
        "aggregation.mode",
        "inference.mode",
        "output.position_topic",
        "policy.num_threads",
    ]
    for descriptor in node.describe_parameters(names):
        assert descriptor.description, descriptor.name
    transport = node.describe_parameters(["cameras.base_0_rgb.transport"])[0]
    assert "compressed" in transport.additional_constraints
    assert MEASURED.shape == (len(JOINT_NAMES),)


def test_stop_request_interrupts_a_load_but_only_flags_a_spinning_node():
    stop = _StopRequest()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during a slow model load aborts at once
        stop(signal.SIGINT, None)
    stop.spinning = True
    stop(signal.SIGTERM, None)  # while spinning: the loop sees the flag and cleans up
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):  # a second signal aborts a stuck cleanup
        stop(signal.SIGINT, None)


def test_partial_joint_states_merge_and_a_silent_gripper_pauses():
    """A gripper driver publishing its joints beside the arm's (joint_states.merge_partial)."""
    arm, grippers = JOINT_NAMES[:6] + JOINT_NAMES[7:13], [JOINT_NAMES[6], JOINT_NAMES[13]]
    prefix, name = "/vla_merge", "vla_merge_policy"  # apart from the module's node and topics
    cameras = {key: (topic.replace(PREFIX, prefix), kind) for key, (topic, kind) in CAMERAS.items()}
    harness = Harness(prefix, cameras, node_name=name)
    harness.joints_enabled = False
    flat = flat_parameters(**{"joint_states.merge_partial": True, "joint_states.max_staleness": 0.2})
    flat.update({k: v.replace(PREFIX, prefix) for k, v in flat.items() if isinstance(v, str)})
    node = VlaPolicyNode(
        name, context=harness.context, parameter_overrides=as_parameters(flat), policy_factory=FakePolicy
    )
    executor = make_executor(1, context=harness.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    gripper_on, stop = threading.Event(), threading.Event()
    gripper_on.set()

    def drivers() -> None:
        index = {name: i for i, name in enumerate(JOINT_NAMES)}
        for tick in iter(int, 1):
            if stop.is_set():
                return
            harness.joint_pub.publish(harness.joint_state_msg([MEASURED[index[n]] for n in arm], arm))
            if gripper_on.is_set() and tick % 4 == 0:  # the gripper driver runs at a quarter of the rate
                harness.joint_pub.publish(
                    harness.joint_state_msg([MEASURED[index[n]] for n in grippers], grippers)
                )
            time.sleep(0.01)

    publisher = threading.Thread(target=drivers, daemon=True)
    publisher.start()
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=5.0)
        assert len(_window(harness, harness.trajectories, 0.5)) > 15
        gripper_on.clear()  # the gripper driver dies: its joints go stale, the policy pauses
        values = harness.wait_for_diagnostics(lambda v: v["state"] != "EXECUTING", timeout=5.0)
        assert values is not None, "a silent gripper must stop execution"
        messages = _window(harness, harness.trajectories, 0.3)
        assert messages and all(is_hold(m) for m in messages)
    finally:
        stop.set()
        publisher.join(timeout=2.0)
        node.release()
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        node.destroy_node()
        harness.close()
