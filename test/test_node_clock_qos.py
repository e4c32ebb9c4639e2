"""VlaPolicyNode over real DDS: a clock that jumps back, QoS of commands and instruction, debug topics.

Issue 9: a restarted simulation clock (a real /clock publisher going back)
must not wedge the node; the command stream is latest-only (queue of one);
an instruction published once before the node existed still arrives; the
debug topics show the policy's inputs and chunks.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from test_node_harness import Harness, is_hold, JOINT_NAMES, MEASURED
from trajectory_msgs.msg import JointTrajectory
from vla_ros.observation.image import resize_with_pad
from vla_ros.ros.builtin_time import seconds_to_stamp, stamp_to_seconds
from vla_ros.ros.image_msgs import image_to_rgb
from vla_ros.ros.node import make_executor, VlaPolicyNode
from vla_ros.types import ActionChunk

RATE = 50.0


class RampPolicy:
    """Actions that move away from the observed state (so executing is visibly not holding)."""

    def __init__(self) -> None:
        self.chunks: list[ActionChunk] = []

    def infer(self, obs):
        ramp = 0.002 * np.arange(50, dtype=np.float32)[:, None]
        chunk = ActionChunk(
            actions=np.asarray(obs.state, np.float32)[None, :] + ramp,
            timestamp=obs.timestamp,
            timings={"total": 0.001},
        )
        self.chunks.append(chunk)
        return chunk


def _parameters(prefix: str, cameras: dict, **overrides) -> list[Parameter]:
    flat = {
        "control_rate": RATE,
        "joint_names": JOINT_NAMES,
        "policy.warmup_runs": 1,
        "prompt.topic": f"{prefix}/instruction",
        "joint_states.topic": f"{prefix}/joint_states",
        "joint_states.max_staleness": 0.3,
        "cameras.keys": list(cameras),
        "sync.max_skew": 0.2,
        "output.trajectory_topic": f"{prefix}/joint_trajectory",
        "limits.lower": [-3.0] * len(JOINT_NAMES),
        "limits.upper": [3.0] * len(JOINT_NAMES),
        "limits.max_velocity": [10.0],
        "watchdog.obs_timeout": 0.5,
    }
    for key, (topic, _) in cameras.items():
        flat[f"cameras.{key}.topic"] = topic
        flat[f"cameras.{key}.max_staleness"] = 0.3
    flat.update(overrides)
    return [Parameter(name, value=value) for name, value in flat.items()]


class _Running:
    """A node spun in a thread, released on exit."""

    def __init__(self, harness, name, parameters, policy):
        self.node = VlaPolicyNode(
            name, context=harness.context, parameter_overrides=parameters, policy_factory=lambda: policy
        )
        self.executor = make_executor(1, context=harness.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self):
        self.node.release()
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


def test_a_backward_clock_jump_resets_and_the_node_recovers():
    prefix, name = "/vla_clk", "vla_clk_policy"
    cameras = {"base_0_rgb": (f"{prefix}/cam_high", "rgb8")}
    harness = Harness(prefix, cameras, node_name=name)
    harness.camera_enabled["base_0_rgb"] = False
    harness.joints_enabled = False
    clock_pub = harness.node.create_publisher(Clock, "/clock", 10)
    sim = {"t": 1000.0, "jump_to": None}
    stop = threading.Event()

    def simulation() -> None:
        # A simulator: /clock every 10 ms of wall time, sensors stamped with it.
        tick = 0
        while not stop.is_set():
            if sim["jump_to"] is not None:
                sim["t"], sim["jump_to"] = sim["jump_to"], None
            else:
                sim["t"] += 0.01
            t = sim["t"]
            clock_pub.publish(Clock(clock=seconds_to_stamp(t)))
            harness.joint_pub.publish(harness.joint_state_msg(stamp=t))
            if tick % 3 == 0:
                msg = harness._camera_msgs["base_0_rgb"]
                msg.header.stamp = seconds_to_stamp(t)
                harness._camera_pubs["base_0_rgb"].publish(msg)
            tick += 1
            time.sleep(0.01)

    publisher = threading.Thread(target=simulation, daemon=True)
    publisher.start()
    running = _Running(
        harness,
        name,
        _parameters(prefix, cameras, use_sim_time=True, **{"prompt.default": "go"}),
        RampPolicy(),
    )
    node = running.node
    try:
        assert harness.wait_for(lambda: node.get_clock().now().nanoseconds > 1000e9, timeout=5.0)
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert harness.wait_for(
            lambda: any(not is_hold(m) for m in harness.since(harness.trajectories, time.monotonic() - 0.2)),
            timeout=5.0,
        ), "executing before the jump"
        # The simulation restarts: its clock goes back 990 s.
        jumped_at = time.monotonic()
        sim["jump_to"] = 10.0
        assert harness.wait_for(lambda: node.get_clock().now().nanoseconds < 100e9, timeout=2.0)
        back = time.monotonic()  # the node's clock has gone back by now
        # Without the reset the buffers hold stamps ~990 s in the future: every new
        # message is out of order, no chunk covers the present, and it holds for good.
        # With it, the next observation and one (fast, fake) inference restart it,
        # often before a hold reaches the wire.

        def executing_again() -> bool:
            return any(not is_hold(m) for m in harness.since(harness.trajectories, back + 0.05))

        assert harness.wait_for(executing_again, timeout=2.0), "the node never recovered from the jump"
        first = min(
            t for t, m in list(harness.trajectories) if t >= back + 0.05 and not is_hold(m)
        )
        # One obs_timeout (0.5 s), with room for a loaded 2-core machine.
        assert first - jumped_at < 0.5 * 3
        values = harness.wait_for_diagnostics(lambda v: v.get("clock.backward_jumps") == "1", timeout=3.0)
        assert values is not None and values["state"] == "EXECUTING"
    finally:
        stop.set()
        publisher.join(timeout=2.0)
        running.close()
        harness.close()


def test_command_qos_instruction_latched_and_debug_topics():
    prefix, name = "/vla_qos", "vla_qos_policy"
    cameras = {
        "base_0_rgb": (f"{prefix}/cam_high", "rgb8"),
        "left_wrist_0_rgb": (f"{prefix}/cam_left", "bgr8"),
    }
    harness = Harness(prefix, cameras, node_name=name)
    # Published once, before the node exists: transient-local keeps it for the node.
    harness.publish_prompt("fold the towel")
    chunks: list[JointTrajectory] = []
    images: list[Image] = []
    node_ns = f"/{name}"
    debug_qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    harness.node.create_subscription(
        JointTrajectory, f"{node_ns}/debug/action_chunk", lambda m: chunks.append(m), debug_qos
    )
    harness.node.create_subscription(
        Image, f"{node_ns}/debug/policy_images", lambda m: images.append(m), debug_qos
    )
    policy = RampPolicy()
    # A third camera is configured on a topic nobody publishes.
    silent = f"{prefix}/cam_right_typo"
    configured = dict(cameras, right_wrist_0_rgb=(silent, "rgb8"))
    running = _Running(
        harness,
        name,
        _parameters(prefix, configured, **{"debug.policy_images": True, "debug.policy_images_rate": 5.0}),
        policy,
    )
    node = running.node
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        # Latest-only command stream; the instruction subscription is transient-local.
        assert node._traj_pub.qos_profile.depth == 1
        instruction = [s for s in node.subscriptions if s.topic_name == f"{prefix}/instruction"][0]
        assert instruction.qos_profile.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL
        values = harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=5.0)
        assert values is not None, "no default prompt: the latched instruction must start the policy"
        assert values["prompt"] == "fold the towel"
        assert values["prompt.source"] == f"from {prefix}/instruction"
        # The camera that never arrives: a warning naming its topic, and a diagnostics entry.
        assert values["camera.right_wrist_0_rgb"] == "masked: missing (never received)"
        assert values["camera.right_wrist_0_rgb.topic"] == silent
        assert f"camera right_wrist_0_rgb ({silent}) masked: missing (never received)" in values["_message"]

        assert harness.wait_for(lambda: len(chunks) >= 2 and len(images) >= 2, timeout=5.0)
        # ~/debug/action_chunk: all points, stamped with the observation time, robot units.
        msg = chunks[-1]
        stamp = stamp_to_seconds(msg.header.stamp)
        match = [c for c in list(policy.chunks) if abs(c.timestamp - stamp) < 1e-6]
        assert match, "the chunk's stamp is its observation time"
        positions = np.array([p.positions for p in msg.points])
        np.testing.assert_allclose(positions, match[0].actions, atol=1e-6)
        assert list(msg.joint_names) == JOINT_NAMES and len(msg.points) == 50
        # ~/debug/policy_images: the letterboxed 224 x 224 model input, one per camera slot.
        by_slot = {m.header.frame_id: m for m in list(images)}
        assert set(by_slot) == set(cameras)
        for key, (topic, kind) in cameras.items():
            got = image_to_rgb(by_slot[key])
            assert got.shape == (224, 224, 3)
            camera = image_to_rgb(harness._camera_msgs[key])
            np.testing.assert_array_equal(got, resize_with_pad(camera, 224, 224))
            assert not got[:20].any(), "the letterbox bars of a 4:3 frame are black"
        assert np.array_equal(MEASURED, harness.measured)
    finally:
        running.close()
        harness.close()
