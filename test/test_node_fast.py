"""pi0-FAST through the node over real DDS: a fitted pi0fast-tiny end to end, an unfitted one holding.

The fitted checkpoint (test_tools_fit_tiny.py, built once per session)
decodes one known chunk for any observation, so the commands the node sends
can be compared with it: the positions must lie on that chunk in robot units
(limits wide enough that the safety filter never binds). It runs with the
policy in a separate process, so the generated tokens also cross the
process-mode worker on their way into the diagnostics. The unfitted
checkpoint decodes garbage: every inference is a named ActionDecodeError
(raised in the policy process, the same error in the node), the node holds at
the measured position and says why, and keeps running.
"""

from __future__ import annotations

import threading
import time

from lifecycle_msgs.msg import State
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from test_node_harness import check_trajectory, Harness, is_hold, JOINT_NAMES, MEASURED
from test_tools_fit_tiny import FIT_DIMS, fitted_fast_checkpoint, fitted_target  # noqa: F401
from vla_ros.ros.node import make_executor, VlaPolicyNode

RATE = 50.0
PERIOD = 1.0 / RATE
NUM_POINTS = 5
WIDE = 50.0  # position limits (rad) far outside anything the policies command
ACTION_RATE = 10.0


def _flat(prefix: str, checkpoint, joints: list[str], **overrides) -> dict:
    flat = {
        "checkpoint": str(checkpoint),
        "control_rate": RATE,
        "joint_names": joints,
        "policy.num_threads": 1,
        "policy.warmup_runs": 1,
        "policy.action_rate": 50.0,
        "inference.trigger": "threshold",
        "inference.execute_threshold": 0.5,
        "inference.retry_delay": 0.2,
        "prompt.topic": f"{prefix}/instruction",
        "prompt.default": "pick up the cube",
        "joint_states.topic": f"{prefix}/joint_states",
        "cameras.keys": ["base_0_rgb"],
        "cameras.base_0_rgb.topic": f"{prefix}/cam_high",
        "aggregation.mode": "latest",  # the newest chunk as it is: positions lie on the fitted chunk
        "output.trajectory_topic": f"{prefix}/joint_trajectory",
        "output.position_topic": f"{prefix}/commands",
        "output.num_points": NUM_POINTS,
        "limits.lower": [-WIDE] * len(joints),
        "limits.upper": [WIDE] * len(joints),
        "limits.max_velocity": [1000.0],
        "limits.max_distance_from_measured": [2 * WIDE],
        "watchdog.obs_timeout": 0.5,
        "diagnostics.rate": 4.0,
        "diagnostics.window": 2.0,
    }
    flat.update(overrides)
    return flat


class _System:
    """A harness playing the robot (one camera, joint states) and an in-process VlaPolicyNode, spinning."""

    def __init__(self, prefix: str, node_name: str, flat: dict):
        self.harness = Harness(prefix, {"base_0_rgb": (f"{prefix}/cam_high", "rgb8")}, node_name=node_name)
        self.node = VlaPolicyNode(
            node_name,
            context=self.harness.context,
            parameter_overrides=[Parameter(k, value=v) for k, v in flat.items()],
        )
        self.executor = make_executor(1, context=self.harness.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def start(self) -> None:
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS, self.node.configure_error
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def window(self, store: list, seconds: float) -> list:
        t0 = time.monotonic()
        time.sleep(seconds)
        return self.harness.since(store, t0)

    def close(self) -> None:
        try:
            self.node.release()
            self.executor.shutdown(timeout_sec=5.0)
            self.thread.join(timeout=5.0)
            self.node.destroy_node()
        finally:
            self.harness.close()


def _distance_to_path(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Distance (inf-norm over joints) of each point (N, D) to the polyline through path's rows (H, D)."""
    start, step = path[:-1], np.diff(path, axis=0)  # (S, D)
    rel = points[:, None, :] - start[None]  # (N, S, D)
    length = np.maximum((step * step).sum(axis=1), 1e-30)
    t = np.clip((rel * step[None]).sum(axis=2) / length, 0.0, 1.0)  # (N, S)
    gap = np.abs(rel - t[..., None] * step[None]).max(axis=2)
    return gap.min(axis=1)


FITTED_PREFIX = "/vla_fast"
FITTED_JOINTS = JOINT_NAMES[:FIT_DIMS]
UNFITTED_PREFIX = "/vla_fast_raw"
UNFITTED_DIMS = 8  # conftest's tiny_fast_checkpoint
UNFITTED_JOINTS = JOINT_NAMES[:UNFITTED_DIMS]


# Class-scoped: each node runs for its class's tests only, never two at once.
@pytest.fixture(scope="class")
def fitted_system(fitted_fast_checkpoint):  # noqa: F811
    # Actions at 10 Hz: a chunk lasts 5 s, much longer than a CPU inference on two loaded cores
    # (~1 s: every token reads the 257k-row LM head); the next one starts after 1 s of it.
    flat = _flat(FITTED_PREFIX, fitted_fast_checkpoint, FITTED_JOINTS,
                 **{"inference.mode": "process", "policy.action_rate": ACTION_RATE,
                    "inference.execute_threshold": 0.2, "watchdog.inference_timeout": 4.0})
    system = _System(FITTED_PREFIX, "vla_fast_policy", flat)
    try:
        system.start()
        yield system
    finally:
        system.close()


@pytest.fixture(scope="class")
def fitted_path(fitted_fast_checkpoint):  # noqa: F811
    """The fitted chunk in robot units (H, D): what every command must lie on."""
    from vla_ros.policy import Policy

    policy = Policy.from_checkpoint(fitted_fast_checkpoint)
    state = MEASURED[:FIT_DIMS].astype(np.float32)
    return policy.postprocess(fitted_target(fitted_fast_checkpoint), FIT_DIMS, state).astype(np.float64)


@pytest.fixture(scope="class")
def unfitted_system(tiny_fast_checkpoint):
    # The default warm-up: its failed decodes are warnings, not a failed configure. The policy
    # process: its decode failures cross the process-mode worker as ActionDecodeError.
    flat = _flat(UNFITTED_PREFIX, tiny_fast_checkpoint, UNFITTED_JOINTS, **{
        "inference.mode": "process", "policy.max_decoding_steps": 48,
    })
    system = _System(UNFITTED_PREFIX, "vla_fast_raw_policy", flat)
    try:
        system.start()
        yield system
    finally:
        system.close()


class TestFittedPolicy:
    def test_commands_follow_the_decoded_chunk_at_the_control_rate(self, fitted_system, fitted_path):
        system, path = fitted_system, fitted_path
        harness = system.harness
        assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=20.0), \
            harness.latest_diagnostics()
        t0 = time.monotonic()
        messages = system.window(harness.trajectories, 2.0)
        rate = len(messages) / (time.monotonic() - t0)
        assert abs(rate - RATE) <= 0.15 * RATE, f"trajectory rate {rate:.1f} Hz, control_rate {RATE:g}"
        points = []
        for msg in messages:
            check_trajectory(msg, FITTED_JOINTS, PERIOD, NUM_POINTS)
            points.extend(p.positions for p in msg.points)
        points = np.array(points)
        # Every commanded point lies on the fitted chunk (linear between its actions), far from
        # where the robot stands: the node executes what the model decoded.
        assert _distance_to_path(points, path).max() < 1e-4
        assert np.abs(points - MEASURED[:FIT_DIMS]).max() > 0.05
        moving = [m for m in messages if not is_hold(m)]
        assert len(moving) > 0.8 * len(messages), "the node held instead of executing the decoded chunk"
        # Over 2 s (20 of a chunk's 50 actions) the commands sweep a good part of the path.
        assert np.ptp(points, axis=0).max() > 0.1 * np.ptp(path, axis=0).max()

    def test_diagnostics_report_decoded_tokens(self, fitted_system, fitted_fast_checkpoint):  # noqa: F811
        system = fitted_system
        from vla_ros.model.config import get_config
        from vla_ros.tools.fit_tiny import checkpoint_parser

        _, parser = checkpoint_parser(fitted_fast_checkpoint, get_config("pi0fast-tiny"), FIT_DIMS)
        expected = len(parser.encode(fitted_target(fitted_fast_checkpoint)))  # "Action: ", FAST ids, "|"
        values = system.harness.wait_for_diagnostics(
            lambda v: "inference.decoded_tokens_last" in v and int(v["inference.requests"]) >= 2, timeout=10.0
        )
        assert values is not None, system.harness.latest_diagnostics()
        assert int(values["inference.decoded_tokens_last"]) == expected
        assert float(values["inference.decoded_tokens_p50"]) == expected
        assert int(values["inference.failures"]) == 0 and values["state"] == "EXECUTING", values
        assert values["_level"] != 2


class TestUnfittedPolicy:
    def test_malformed_decodes_hold_with_the_error_in_diagnostics(self, unfitted_system):
        system = unfitted_system
        harness = system.harness
        values = harness.wait_for_diagnostics(
            lambda v: int(v["inference.failures"]) >= 3 and v["state"] == "HOLDING", timeout=15.0
        )
        assert values is not None, harness.latest_diagnostics()
        failure = values["inference.last_failure"]
        assert failure.startswith("ActionDecodeError: ") and "\n" not in failure, failure
        assert "ActionDecodeError" in values["hold_reason"] and "ActionDecodeError" in values["_message"]
        assert values["_level"] == 2  # ERROR
        assert "inference.decoded_tokens_last" not in values, "no chunk was decoded"
        assert int(values["chunks.accepted"]) == 0
        # The robot holds where it stands: no command moves, none goes to zeros.
        messages = system.window(harness.trajectories, 1.0)
        assert len(messages) > 0.7 * RATE, "the node keeps publishing (holds) at the control rate"
        for msg in messages:
            check_trajectory(msg, UNFITTED_JOINTS, PERIOD, NUM_POINTS)
            assert is_hold(msg)
            np.testing.assert_allclose(msg.points[0].positions, MEASURED[:UNFITTED_DIMS])
        # Still alive and still trying.
        assert system.node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE
        later = harness.wait_for_diagnostics(
            lambda v: int(v["inference.failures"]) > int(values["inference.failures"]), timeout=10.0
        )
        assert later is not None and later["state"] == "HOLDING"
