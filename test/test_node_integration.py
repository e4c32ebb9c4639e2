"""The vla_policy node as the robot team runs it: its own process, a params file, real DDS.

One node process (`python -m vla_ros.ros.node --ros-args --params-file ...`,
auto-activated, the tiny pi0 checkpoint, inference in a worker thread) serves
every test of this module, in order; the test process plays the robot with
three cameras at 30 Hz (rgb8, bgr8 and JPEG) and joint states at 100 Hz.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from test_node_harness import check_trajectory, Harness, is_hold, JOINT_NAMES  # noqa: I100

from vla_ros.ros.builtin_time import seconds_to_stamp
from vla_ros.ros.image_msgs import rgb_to_image_msg

PREFIX = "/vla_it"
RATE = 50.0
PERIOD = 1.0 / RATE
NUM_POINTS = 5
LOWER, UPPER = -3.0, 3.0
CAMERAS = {
    "base_0_rgb": (f"{PREFIX}/cam_high/image_raw", "rgb8"),
    "left_wrist_0_rgb": (f"{PREFIX}/cam_left_wrist/image_raw", "bgr8"),
    "right_wrist_0_rgb": (f"{PREFIX}/cam_right_wrist/image_raw/compressed", "jpeg"),
}


def node_parameters(checkpoint) -> dict:
    return {
        "vla_policy": {
            "ros__parameters": {
                "checkpoint": str(checkpoint),
                "auto_activate": True,
                "control_rate": RATE,
                "joint_names": JOINT_NAMES,
                "policy": {"num_threads": 1, "warmup_runs": 1, "seed": 0, "action_rate": 50.0},
                "inference": {"mode": "thread", "trigger": "threshold", "execute_threshold": 0.5},
                "prompt": {"topic": f"{PREFIX}/instruction", "default": "pick up the cube"},
                "joint_states": {"topic": f"{PREFIX}/joint_states", "max_staleness": 0.2},
                "cameras": {
                    "keys": list(CAMERAS),
                    "base_0_rgb": {
                        "topic": CAMERAS["base_0_rgb"][0],
                        "transport": "raw",
                        "width": 320,
                        "height": 240,
                    },
                    "left_wrist_0_rgb": {"topic": CAMERAS["left_wrist_0_rgb"][0], "transport": "raw"},
                    "right_wrist_0_rgb": {
                        "topic": CAMERAS["right_wrist_0_rgb"][0],
                        "transport": "compressed",
                        "max_staleness": 0.3,
                    },
                },
                "sync": {"max_skew": 0.1, "missing_camera_policy": "mask"},
                "aggregation": {"mode": "temporal_ensemble"},
                "output": {
                    "trajectory_topic": f"{PREFIX}/joint_trajectory",
                    "position_topic": f"{PREFIX}/commands",
                    "num_points": NUM_POINTS,
                },
                "limits": {
                    "lower": [LOWER] * 14,
                    "upper": [UPPER] * 14,
                    "max_velocity": [2.0],
                    "max_distance_from_measured": [1.0],
                },
                "watchdog": {"obs_timeout": 0.5, "inference_timeout": 2.0},
                "diagnostics": {"rate": 1.0, "window": 3.0},
            }
        }
    }


@pytest.fixture(scope="module")
def system(tiny_checkpoint, tmp_path_factory):
    """(harness, node process); the node is stopped with SIGINT at the end."""
    tmp = tmp_path_factory.mktemp("node_it")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(node_parameters(tiny_checkpoint), sort_keys=False))
    log_path = tmp / "node.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_ros.ros.node", "--ros-args", "--params-file", str(params)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    harness = Harness(PREFIX, CAMERAS)
    try:
        ready = harness.wait_for(
            lambda: len(harness.trajectories) > 20
            and (harness.latest_diagnostics() or {}).get("state") == "EXECUTING",
            timeout=60.0,
        )
        if not ready:
            raise AssertionError(
                f"the node did not start executing; its log:\n{log_path.read_text()[-4000:]}"
            )
        yield harness, process, log_path
    finally:
        harness.close()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def _alive(process, log_path):
    assert process.poll() is None, f"the node died; its log:\n{log_path.read_text()[-4000:]}"


def test_trajectories_at_control_rate(system):
    harness, process, log_path = system
    t0 = time.monotonic()
    time.sleep(3.0)
    t1 = time.monotonic()
    messages = [m for t, m in list(harness.trajectories) if t0 <= t < t1]
    rate = len(messages) / (t1 - t0)
    print(f"\ntrajectory rate {rate:.1f} Hz (control_rate {RATE:g})")
    assert abs(rate - RATE) <= 0.1 * RATE
    for msg in messages:
        check_trajectory(msg, JOINT_NAMES, PERIOD, NUM_POINTS)
        positions = np.array([p.positions for p in msg.points])
        assert np.all(positions >= LOWER - 1e-9) and np.all(positions <= UPPER + 1e-9)
    moving = [m for m in messages if not is_hold(m)]
    assert len(moving) > 0.9 * len(messages), "the node held instead of executing the policy"
    _alive(process, log_path)


def test_float64_positions_at_control_rate(system):
    harness, process, log_path = system
    t0 = time.monotonic()
    time.sleep(2.0)
    t1 = time.monotonic()
    messages = [m for t, m in list(harness.positions) if t0 <= t < t1]
    rate = len(messages) / (t1 - t0)
    assert abs(rate - RATE) <= 0.1 * RATE, rate
    for msg in messages:
        assert len(msg.data) == len(JOINT_NAMES)
        assert msg.layout.dim[0].size == len(JOINT_NAMES)
        assert np.all(np.isfinite(msg.data)) and min(msg.data) >= LOWER and max(msg.data) <= UPPER


def test_diagnostics_report_latency_and_jitter(system):
    harness, process, log_path = system
    t0 = time.monotonic()
    time.sleep(2.2)
    diags = harness.since(harness.diagnostics, t0)
    assert 1 <= len(diags) <= 4, f"expected about 1 Hz diagnostics, got {len(diags)} in 2.2 s"
    values = diags[-1]
    for key in (
        "inference.latency_p50_ms",
        "inference.latency_p99_ms",
        "observation.age_s",
        "timer.period_jitter_p99_ms",
        "camera.base_0_rgb",
        "state",
        "lifecycle",
    ):
        assert key in values, key
    assert values["lifecycle"] == "active"
    assert float(values["inference.latency_p50_ms"]) > 0
    print(
        f"\nnode diagnostics: inference latency p50 {values['inference.latency_p50_ms']} ms "
        f"p99 {values['inference.latency_p99_ms']} ms (compute p50 {values['inference.compute_p50_ms']} ms); "
        f"timer period jitter p50 {values['timer.period_jitter_p50_ms']} ms "
        f"p99 {values['timer.period_jitter_p99_ms']} ms max {values['timer.period_jitter_max_ms']} ms"
    )


def test_stopped_camera_is_masked(system):
    harness, process, log_path = system
    harness.camera_enabled["right_wrist_0_rgb"] = False
    try:
        values = harness.wait_for_diagnostics(
            lambda v: "camera right_wrist_0_rgb (" in v["_message"] and "masked" in v["_message"], timeout=4.0
        )
        assert values is not None, harness.latest_diagnostics()
        assert values["camera.right_wrist_0_rgb"].startswith("masked: stale")
        # The warning names the topic, not only the model's slot key.
        topic = values["camera.right_wrist_0_rgb.topic"]
        assert topic and f"camera right_wrist_0_rgb ({topic}) masked" in values["_message"]
        assert values["state"] == "EXECUTING" and values["_level"] == 1  # WARN
        t0 = time.monotonic()
        time.sleep(1.0)
        recent = harness.since(harness.trajectories, t0)
        assert recent and sum(not is_hold(m) for m in recent) > 0.9 * len(recent), "masking must not hold"
    finally:
        harness.camera_enabled["right_wrist_0_rgb"] = True
    assert harness.wait_for_diagnostics(lambda v: v["camera.right_wrist_0_rgb"] == "fresh", timeout=4.0)


def test_stopped_joint_states_hold(system):
    harness, process, log_path = system
    harness.joints_enabled = False
    try:
        values = harness.wait_for_diagnostics(lambda v: v["state"] == "HOLDING", timeout=4.0)
        assert values is not None, harness.latest_diagnostics()
        assert "joint state stale" in values["hold_reason"], values["hold_reason"]
        assert values["_level"] == 2  # ERROR: observations stale
        time.sleep(0.1)
        t0 = time.monotonic()
        time.sleep(0.5)
        recent = harness.since(harness.trajectories, t0)
        assert recent and all(is_hold(m) for m in recent)
        held = {tuple(m.points[0].positions) for m in recent}
        assert len(held) == 1, "a hold stays at one position"
    finally:
        harness.joints_enabled = True
    assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=6.0)


def test_pause_and_resume_services(system):
    harness, process, log_path = system
    response = harness.call_trigger("/vla_policy/pause")
    assert response.success, response.message
    time.sleep(0.2)
    t0 = time.monotonic()
    time.sleep(0.5)
    recent = harness.since(harness.trajectories, t0)
    assert recent and all(is_hold(m) for m in recent)
    assert harness.wait_for_diagnostics(lambda v: v["state"] == "PAUSED", timeout=3.0)
    assert not harness.call_trigger("/vla_policy/pause").message.startswith("paused")  # already paused
    response = harness.call_trigger("/vla_policy/resume")
    assert response.success, response.message
    assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=6.0)
    t0 = time.monotonic()
    time.sleep(0.5)
    recent = harness.since(harness.trajectories, t0)
    assert sum(not is_hold(m) for m in recent) > 0.8 * len(recent)


def _wrong_encoding_msg():
    msg = rgb_to_image_msg(np.zeros((240, 320, 3), np.uint8))
    msg.encoding = "16UC1"
    msg.step = 320 * 2
    msg.data = bytes(240 * 320 * 2)
    return msg


def test_bad_inputs_are_reported_without_crashing(system):
    harness, process, log_path = system
    now = harness.now
    from sensor_msgs.msg import CompressedImage

    # wrong encoding, wrong size, truncated data, corrupt JPEG, zero and out-of-order stamps
    harness.publish_camera("base_0_rgb", _wrong_encoding_msg())
    harness.publish_camera("base_0_rgb", rgb_to_image_msg(np.zeros((120, 160, 3), np.uint8), stamp=now()))
    short = rgb_to_image_msg(np.zeros((240, 320, 3), np.uint8), "bgr8", stamp=now())
    short.data = bytes(short.data)[:1000]
    harness.publish_camera("left_wrist_0_rgb", short)
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9")
    corrupt.header.stamp = seconds_to_stamp(now())
    harness.publish_camera("right_wrist_0_rgb", corrupt)
    harness.publish_camera(
        "left_wrist_0_rgb", rgb_to_image_msg(np.zeros((240, 320, 3), np.uint8), "bgr8", stamp=0.0)
    )
    harness.publish_camera(
        "base_0_rgb", rgb_to_image_msg(np.zeros((240, 320, 3), np.uint8), stamp=now() - 5.0)
    )
    # NaN / inf joints, missing joint names, zero and out-of-order joint stamps
    harness.publish_joint_state(harness.joint_state_msg(positions=[np.nan] + [0.0] * 13))
    harness.publish_joint_state(harness.joint_state_msg(positions=[0.0] * 13 + [np.inf]))
    partial = harness.joint_state_msg()
    partial.name, partial.position = list(partial.name)[:-3], list(partial.position)[:-3]
    harness.publish_joint_state(partial)
    harness.publish_joint_state(harness.joint_state_msg(stamp=0.0))
    harness.publish_joint_state(harness.joint_state_msg(stamp=now() - 5.0))
    harness.publish_prompt("")
    harness.publish_prompt("   ")

    expected = {
        "rejected.invalid_image:base_0_rgb": "16UC1",
        "rejected.wrong_size:base_0_rgb": "160x120",
        "rejected.invalid_image:left_wrist_0_rgb": "data bytes",
        "rejected.invalid_image:right_wrist_0_rgb": "could not be decoded",
        "warning.zero_stamp:left_wrist_0_rgb": "receipt time",
        "rejected.out_of_order:base_0_rgb": "older",
        "rejected.invalid_state:joint_state": "",
        "warning.zero_stamp:joint_state": "receipt time",
        "rejected.out_of_order:joint_state": "older",
        "rejected.empty:prompt": "empty",
    }
    values = harness.wait_for_diagnostics(lambda v: all(k in v for k in expected), timeout=4.0)
    assert values is not None, sorted(
        k for k in harness.latest_diagnostics() if k.startswith(("rej", "warn"))
    )
    for key, text in expected.items():
        assert int(values[key]) >= 1
        assert text in values[key + ".last"], (key, values[key + ".last"])
    assert values["_level"] >= 1 and "rejected" in values["_message"]
    assert values["prompt"] == "pick up the cube", "an empty instruction must not replace the prompt"
    # Every joint-state problem was seen (the last detail only shows the latest).
    assert int(values["rejected.invalid_state:joint_state"]) >= 3

    _alive(process, log_path)
    text = log_path.read_text()
    for fragment in ("16UC1", "non-finite", "missing joints", "header stamp is zero"):
        assert fragment in text, f"no warning about {fragment!r} in the node log"
    # Still running the policy afterwards.
    assert harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=6.0)
    t0 = time.monotonic()
    time.sleep(0.5)
    assert len(harness.since(harness.trajectories, t0)) > 15


def test_new_instruction_is_used(system):
    harness, process, log_path = system
    harness.publish_prompt("open the drawer")
    assert harness.wait_for_diagnostics(lambda v: v["prompt"] == "open the drawer", timeout=4.0)


def test_sigint_stops_the_node_cleanly(system):
    harness, process, log_path = system
    process.send_signal(signal.SIGINT)
    rc = process.wait(timeout=15)
    assert rc == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


def test_start_up_summary_names_model_engine_norm_stats_and_topics(system):
    harness, process, log_path = system
    log = log_path.read_text()
    assert "loading the policy from" in log and "a full-size checkpoint takes minutes" in log
    summary = log[log.index("configured:"):]
    for fragment in (
        "model: pi0-tiny (pi0)",
        "norm stats:",
        "state 14 dims, actions 14 dims; robot 14 joints",
        "engine: ",
        f"base_0_rgb <- {CAMERAS['base_0_rgb'][0]} (raw)",
        f"joint states <- {PREFIX}/joint_states",
        f"instruction <- {PREFIX}/instruction",
        f"out: {PREFIX}/joint_trajectory, {PREFIX}/commands, ~/debug/action_chunk",
    ):
        assert fragment in summary, (fragment, summary[:2000])
    assert "untrained `vla-ros make-tiny` model" in log, "a loud line for a make-tiny checkpoint"
    assert "activated: running the policy; instruction 'pick up the cube' (default (prompt.default)" in log
