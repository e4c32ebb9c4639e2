"""PolicyController without ROS, on simulated time (the way the rosbag replay drives it)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from vla_ros.config import NodeConfig
from vla_ros.controller import PolicyController
from vla_ros.status import PeriodRecorder
from vla_ros.types import ActionChunk

JOINTS = ["j0", "j1", "j2", "j3"]
CAMS = ["base_0_rgb", "left_wrist_0_rgb"]
T0 = 1000.0
DT = 0.02  # action period and control period
FRAME = np.zeros((6, 8, 3), np.uint8)


def make_config(**overrides) -> NodeConfig:
    data = {
        "joint_names": JOINTS,
        "control_rate": 50.0,
        "policy": {"action_rate": 50.0},
        "prompt": {"default": "stack the cups"},
        "joint_states": {"max_staleness": 0.1},
        "cameras": {"keys": CAMS, "base_0_rgb": {"width": 8, "height": 6}},
        "sync": {"max_skew": 0.05, "missing_camera_policy": "mask"},
        "aggregation": {"mode": "latest"},
        "inference": {"execute_threshold": 0.5, "retry_delay": 0.2},
        "output": {"num_points": 3},
        "limits": {"lower": [-1.0] * 4, "upper": [1.0] * 4, "max_velocity": [10.0]},
        "watchdog": {"obs_timeout": 0.5, "inference_timeout": 2.0},
        "diagnostics": {"window": 1.0},
    }

    def merge(into, update):
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(data, copy.deepcopy(overrides))
    return NodeConfig.from_dict(data)


MEASURED = np.array([0.0, 0.0, 0.0, 0.5])


def feed(ctl, t, joints=True, cameras=CAMS, state=MEASURED):
    if joints:
        ctl.on_joint_state(state, t, t)
    for key in cameras:
        ctl.on_image(key, FRAME, t, t)


def ramp_chunk(timestamp, horizon=50):
    k = np.arange(horizon, dtype=np.float32)
    actions = np.stack([0.01 * k, -0.01 * k, np.zeros(horizon), np.full(horizon, 0.5)], axis=1)
    return ActionChunk(actions=actions.astype(np.float32), timestamp=timestamp, timings={"total": 0.03})


class Sim:
    """Simulated time: sensors every 10 ms, a worker, chunks after a latency, ticks every 20 ms.

    The worker behaves like InferenceWorker: it polls next_request only while
    idle, and is blocked (asks nothing) while an inference runs.
    """

    def __init__(self, ctl, policy=ramp_chunk, latency=0.05):
        self.ctl, self.policy, self.latency = ctl, policy, latency
        self.t = T0
        self.inflight = None
        self.plans = []
        self.requests = []
        self.joints = True
        self.cameras = list(CAMS)
        self.fail = False

    def run(self, seconds):
        steps = int(round(seconds / 0.01))
        for _ in range(steps):
            self.t = round(self.t + 0.01, 6)
            feed(self.ctl, self.t, self.joints, self.cameras)
            if self.inflight is not None and self.t >= self.inflight[0] - 1e-9:
                _, req = self.inflight
                self.inflight = None
                if self.fail:
                    self.ctl.on_inference_failed("engine exploded", self.t, req)
                else:
                    self.ctl.on_chunk(self.policy(req.observation.timestamp), self.t, req)
            if self.inflight is None:
                req = self.ctl.next_request(self.t)
                if req is not None:
                    self.requests.append(self.t)
                    self.inflight = (self.t + self.latency, req)
            if round(self.t / DT, 6) % 1 == 0:
                self.plans.append((self.t, self.ctl.tick(self.t)))
        return self.plans[-1][1]


def test_no_plan_before_a_joint_state_then_hold_until_a_chunk():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    assert ctl.tick(T0) is None
    ctl.on_joint_state(MEASURED, T0, T0)
    plan = ctl.tick(T0)
    assert plan.is_hold and "waiting for the first observation" in plan.reason
    np.testing.assert_array_equal(plan.positions, np.tile(MEASURED, (3, 1)))
    np.testing.assert_array_equal(plan.times_from_start, [0.02, 0.04, 0.06])
    assert not plan.velocities.any()


def test_request_then_chunk_with_latency_compensation():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    feed(ctl, T0)
    ctl.on_image("base_0_rgb", FRAME, T0 + 0.01, T0 + 0.01)
    req = ctl.next_request(T0 + 0.01)
    obs = req.observation
    assert obs.prompt == "stack the cups"
    assert obs.timestamp == T0 + 0.01  # the newest camera stamp
    assert set(obs.images) == set(CAMS)
    np.testing.assert_array_equal(obs.state, MEASURED.astype(np.float32))
    assert ctl.next_request(T0 + 0.02) is None, "one inference in flight at a time"

    # The chunk arrives 0.1 s after its observation: actions 0..4 are in the past.
    now = obs.timestamp + 0.1
    assert ctl.on_chunk(ramp_chunk(obs.timestamp), now, req)
    feed(ctl, now)
    plan = ctl.tick(now)
    assert not plan.is_hold and plan.covered_points == 3
    # Points at now + 0.02, 0.04, 0.06 are actions 6, 7, 8 of the chunk.
    np.testing.assert_allclose(
        plan.positions, [[0.06, -0.06, 0, 0.5], [0.07, -0.07, 0, 0.5], [0.08, -0.08, 0, 0.5]], atol=1e-6
    )
    # Velocities: min-mod of the slopes around each point (3.0 into the first from the
    # measured state, then 0.5), last one zero.
    np.testing.assert_allclose(
        plan.velocities, [[0.5, -0.5, 0, 0], [0.5, -0.5, 0, 0], [0, 0, 0, 0]], atol=1e-4
    )
    status = ctl.status(now)
    assert status.values["chunks.skipped_actions"] == 5
    assert status.values["inference.latency_p50_ms"] == pytest.approx(100.0)


def test_threshold_trigger_starts_the_next_inference_mid_chunk():
    sim = Sim(PolicyController(make_config(inference={"execute_threshold": 0.5})))
    sim.ctl.activate(T0)
    sim.run(2.0)
    gaps = np.diff(sim.requests)
    # A chunk covers 1 s from its observation; the next request comes once half of it has run.
    assert len(sim.requests) >= 3
    np.testing.assert_allclose(gaps, 0.5, atol=0.011)
    assert not any(plan.is_hold for t, plan in sim.plans if t > T0 + 0.1)


def test_rate_trigger():
    sim = Sim(PolicyController(make_config(inference={"trigger": "rate", "rate": 5.0})))
    sim.ctl.activate(T0)
    sim.run(1.5)
    np.testing.assert_allclose(np.diff(sim.requests), 0.2, atol=0.011)


def test_delta_actions_become_absolute_with_the_state_of_their_observation():
    cfg = make_config(
        policy={"action_space": "delta", "delta_mask": [True, True, True, False]},
        limits={"max_velocity": [100.0]},
    )
    ctl = PolicyController(cfg)
    ctl.activate(T0)
    state = np.array([0.1, 0.2, 0.3, 0.4])
    feed(ctl, T0, state=state)
    req = ctl.next_request(T0)
    feed(ctl, T0 + 0.05, state=np.zeros(4))  # the robot moved since: the chunk still uses the obs state
    chunk = ActionChunk(
        actions=np.tile(np.float32([0.01, 0.02, 0.03, 0.9]), (50, 1)), timestamp=req.observation.timestamp
    )
    assert ctl.on_chunk(chunk, T0 + 0.05, req)
    plan = ctl.tick(T0 + 0.05)
    np.testing.assert_allclose(plan.positions[0], [0.11, 0.22, 0.33, 0.9], atol=1e-6)


def test_stale_joint_states_hold_at_the_last_command():
    sim = Sim(PolicyController(make_config()))
    sim.ctl.activate(T0)
    sim.run(0.5)
    last = sim.plans[-1][1]
    assert not last.is_hold
    sim.joints = False
    sim.run(0.7)
    plan = sim.plans[-1][1]
    assert plan.is_hold
    assert "observations stale" in plan.reason and "joint state stale" in plan.reason
    flags = [p.is_hold for t, p in sim.plans]
    first_hold = len(flags) - flags[::-1].index(False)
    # The hold is at the last command sent, not somewhere new.
    np.testing.assert_allclose(
        sim.plans[first_hold][1].positions[0], sim.plans[first_hold - 1][1].positions[0]
    )
    status = sim.ctl.status(sim.t)
    assert status.level == "ERROR" and status.values["state"] == "HOLDING"
    sim.joints = True
    sim.run(1.0)
    assert not sim.plans[-1][1].is_hold


@pytest.mark.parametrize("policy", ["mask", "pause"])
def test_missing_camera_policy(policy):
    sim = Sim(PolicyController(make_config(sync={"missing_camera_policy": policy})))
    sim.ctl.activate(T0)
    sim.run(0.5)
    sim.cameras = ["base_0_rgb"]
    sim.run(1.5)
    status = sim.ctl.status(sim.t)
    plan = sim.plans[-1][1]
    if policy == "mask":
        assert not plan.is_hold
        assert status.level == "WARN"
        assert "camera left_wrist_0_rgb (/left_wrist_0_rgb/image_raw) masked: stale" in status.message
        assert status.values["camera.left_wrist_0_rgb"].startswith("masked")
        assert sim.requests[-1] > T0 + 1.0, "inference goes on without the camera"
    else:
        assert plan.is_hold and "camera left_wrist_0_rgb stale" in plan.reason
        assert status.level == "ERROR" and "camera left_wrist_0_rgb" in status.message


def test_inference_failure_holds_then_retries():
    sim = Sim(PolicyController(make_config()))
    sim.ctl.activate(T0)
    sim.run(0.3)
    sim.fail = True
    sim.run(0.6)
    plan = sim.plans[-1][1]
    assert plan.is_hold and "inference failed: engine exploded" in plan.reason
    status = sim.ctl.status(sim.t)
    assert status.level == "ERROR" and status.values["inference.failures"] >= 1
    # retry_delay (0.2 s) between attempts
    failures = [t for t in sim.requests if t > T0 + 0.5]
    assert all(b - a >= 0.2 + 0.05 - 1e-6 for a, b in zip(failures, failures[1:]))
    sim.fail = False
    sim.run(0.5)
    assert not sim.plans[-1][1].is_hold


def test_a_chunk_that_arrives_after_its_horizon_is_ignored():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    feed(ctl, T0)
    req = ctl.next_request(T0)
    assert not ctl.on_chunk(ramp_chunk(req.observation.timestamp, horizon=10), T0 + 0.5, req)
    assert "late:chunk" in ctl.events()
    feed(ctl, T0 + 0.5)
    assert ctl.tick(T0 + 0.5).is_hold
    assert ctl.next_request(T0 + 0.5) is not None, "a late chunk triggers a new request at once"


def test_actions_beyond_the_limits_are_clamped():
    upper = np.array([0.3, 0.3, 0.3, 0.6])
    cfg = make_config(limits={"lower": (-upper).tolist(), "upper": upper.tolist(), "max_velocity": [1.0]})
    actions = np.tile(np.float32([50.0, -50.0, 0.25, 0.55]), (50, 1))
    sim = Sim(PolicyController(cfg), policy=lambda ts: ActionChunk(actions, ts))
    sim.ctl.activate(T0)
    sim.run(1.0)
    plans = [p for t, p in sim.plans if not p.is_hold]
    firsts = np.array([p.positions[0] for p in plans])
    assert all(np.all(np.abs(p.positions) <= upper + 1e-12) for p in plans), "position limits, look-ahead too"
    assert np.all(np.abs(np.diff(firsts, axis=0)) <= 1.0 * DT + 1e-9), "velocity limit between commands"
    np.testing.assert_allclose(firsts[-1], [0.3, -0.3, 0.25, 0.55], atol=1e-6)
    values = sim.ctl.status(sim.t).values
    assert values["safety.position_clamps"] > 0 and values["safety.velocity_clamps"] > 0


def test_pause_and_resume():
    sim = Sim(PolicyController(make_config()))
    sim.ctl.activate(T0)
    sim.run(0.4)
    assert sim.ctl.pause() and not sim.ctl.pause()
    n = len(sim.requests)
    sim.run(0.3)
    assert all(p.is_hold and "paused" in p.reason for t, p in sim.plans[-10:])
    assert len(sim.requests) == n, "no inference while paused"
    assert sim.ctl.status(sim.t).values["state"] == "PAUSED"
    assert sim.ctl.resume(sim.t) and not sim.ctl.resume(sim.t)
    sim.run(0.3)
    assert not sim.plans[-1][1].is_hold and len(sim.requests) > n


def test_bad_inputs_are_rejected_and_reported():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    t = T0 + 1.0
    assert not ctl.on_image("base_0_rgb", np.zeros((4, 4, 3), np.uint8), t, t)  # wrong size (8x6 configured)
    assert not ctl.on_image("left_wrist_0_rgb", np.zeros((4, 4), np.uint8), t, t)  # not RGB
    assert not ctl.on_joint_state([0.0, math.nan, 0.0, 0.0], t, t)
    assert not ctl.on_joint_state([0.0, 0.0, 0.0], t, t)
    assert ctl.on_joint_state(MEASURED, 0.0, t)  # zero stamp: receipt time, with a warning
    assert not ctl.on_joint_state(MEASURED, t - 1.0, t)  # older than the buffered one
    assert ctl.on_image("left_wrist_0_rgb", FRAME, t, t)
    assert not ctl.on_image("left_wrist_0_rgb", FRAME, t - 0.5, t)
    assert not ctl.on_prompt("  ", t)
    ctl.on_input_error(
        "right_wrist_0_rgb", "camera right_wrist_0_rgb: corrupt JPEG", t, reason="invalid_image"
    )
    events = ctl.events()
    for key in (
        "wrong_size:base_0_rgb",
        "invalid_image:left_wrist_0_rgb",
        "invalid_state:joint_state",
        "zero_stamp:joint_state",
        "out_of_order:joint_state",
        "out_of_order:left_wrist_0_rgb",
        "empty:prompt",
        "invalid_image:right_wrist_0_rgb",
    ):
        assert key in events, key
    assert events["invalid_state:joint_state"][0] == 2
    assert "4x4, expected 8x6" in events["wrong_size:base_0_rgb"][1]
    status = ctl.status(t)
    assert status.level in ("WARN", "ERROR") and "rejected camera base_0_rgb" in status.message
    assert status.values["rejected.empty:prompt"] == 1
    assert status.values["warning.zero_stamp:joint_state"] == 1
    assert status.values["prompt"] == "stack the cups"
    # Rejections older than diagnostics.window no longer raise the level.
    assert "rejected" not in ctl.status(t + 5.0).message


def test_wrong_action_dimension_is_an_inference_failure():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    feed(ctl, T0)
    req = ctl.next_request(T0)
    chunk = ActionChunk(np.zeros((50, 7), np.float32), req.observation.timestamp)
    assert not ctl.on_chunk(chunk, T0 + 0.05, req)
    assert "expected (H, 4)" in ctl.status(T0 + 0.05).values["inference.last_failure"]
    assert ctl.tick(T0 + 0.05).is_hold


def test_non_finite_actions_are_an_inference_failure():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    feed(ctl, T0)
    req = ctl.next_request(T0)
    actions = np.zeros((50, 4), np.float32)
    actions[3, 1] = np.nan
    assert not ctl.on_chunk(ActionChunk(actions, req.observation.timestamp), T0 + 0.05, req)
    assert "non-finite" in ctl.tick(T0 + 0.05).reason


def test_activate_starts_from_a_clean_slate():
    sim = Sim(PolicyController(make_config()))
    sim.ctl.activate(T0)
    sim.run(0.5)
    sim.ctl.activate(sim.t)
    plan = sim.ctl.tick(sim.t)
    assert plan.is_hold and "waiting" in plan.reason
    np.testing.assert_allclose(plan.positions[0], MEASURED)


@pytest.mark.parametrize("mode", ["temporal_ensemble", "crossfade"])
def test_other_aggregation_modes_execute(mode):
    sim = Sim(PolicyController(make_config(aggregation={"mode": mode})))
    sim.ctl.activate(T0)
    sim.run(1.5)
    assert not sim.plans[-1][1].is_hold


def test_period_recorder():
    rec = PeriodRecorder(0.02, size=4)
    assert math.isnan(rec.stats()["p99_ms"])
    for t in (0.0, 0.02, 0.045, 0.06, 0.08, 0.1):
        rec.record(t)
    stats = rec.stats()
    assert stats["periods"] == 4  # the ring buffer keeps the last four
    assert stats["max_ms"] == pytest.approx(5.0, abs=1e-6) or stats["max_ms"] == pytest.approx(0.0, abs=1e-6)
    rec.reset()
    assert rec.count == 0


def test_period_recorder_skips_gaps_of_a_simulated_clock():
    # Wall-clock jitter under /clock: the 0.5 s wait for playback to start and the jump
    # of a bag loop are not jitter; a tick 4 ms late while the clock runs steadily is.
    rec = PeriodRecorder(0.02)
    wall = [0.0, 0.5, 0.52, 0.544, 0.564, 0.9, 0.92]
    sim = [0.0, 100.0, 100.02, 100.04, 100.06, 5.0, 5.02]
    for t, s in zip(wall, sim):
        rec.record(t, s)
    stats = rec.stats()
    assert stats["periods"] == 4  # 0.52, 0.544, 0.564 and 0.92; the two gaps are skipped
    assert stats["max_ms"] == pytest.approx(4.0, abs=1e-6)


# -- issue 9: the control-path bugs ----------------------------------------------------


def test_slow_inference_with_fresh_sensors_never_holds():
    # Inference takes 1.5 x watchdog.obs_timeout (0.75 s); chunks of 2 s; the next
    # request goes out once 20% of a chunk has run, so a chunk always covers the
    # present. The worker asks nothing while it infers (as InferenceWorker), so
    # freshness must come from the buffers at every tick.
    cfg = make_config(inference={"execute_threshold": 0.2})
    sim = Sim(PolicyController(cfg), policy=lambda ts: ramp_chunk(ts, horizon=100), latency=0.75)
    sim.ctl.activate(T0)
    sim.run(6.0)
    first_chunk = T0 + 0.76
    holds = [t for t, plan in sim.plans if t > first_chunk + 0.02 and plan.is_hold]
    assert holds == [], f"{len(holds)} hold ticks with fresh sensors, first at {holds[0] - T0:.2f} s"
    assert len(sim.requests) >= 5, "inference keeps running back to back"
    # And sensors that really stop still hold within obs_timeout.
    sim.joints = False
    sim.cameras = []
    sim.run(1.0)
    holds = [t for t, plan in sim.plans[-50:] if plan.is_hold]
    assert holds and holds[0] - (sim.t - 1.0) <= 0.5 + 0.1 + 0.021
    assert "observations stale" in sim.plans[-1][1].reason


def _start_with_one_request(**overrides):
    ctl = PolicyController(make_config(**overrides))
    ctl.activate(T0)
    feed(ctl, T0)
    req = ctl.next_request(T0)
    assert req is not None
    return ctl, req


@pytest.mark.parametrize("restart", ["pause_resume", "activate", "clock_jump"])
def test_a_chunk_in_flight_across_a_restart_is_dropped(restart):
    ctl, req = _start_with_one_request()
    now = T0 + 0.3
    if restart == "pause_resume":
        ctl.pause()
        ctl.resume(now)
    elif restart == "activate":
        ctl.activate(now)
    else:
        ctl.on_clock_jump(now, -5.0)
    feed(ctl, now)
    fresh = ctl.next_request(now)
    assert fresh is not None and fresh.generation == req.generation + 1
    # The late answer to the old request is dropped, not executed, and not mistaken
    # for the answer to the new one.
    assert not ctl.on_chunk(ramp_chunk(req.observation.timestamp), now + 0.01, req)
    plan = ctl.tick(now + 0.01)
    assert plan.is_hold and "waiting for the first action chunk" in plan.reason
    status = ctl.status(now + 0.01)
    assert status.values["chunks.dropped_stale"] == 1 and status.values["chunks.accepted"] == 0
    assert ctl.inference_pending, "the new request is still awaited"
    assert ctl.on_chunk(ramp_chunk(fresh.observation.timestamp), now + 0.05, fresh)
    assert not ctl.tick(now + 0.05).is_hold


def test_delta_chunk_in_flight_across_pause_is_no_false_failure():
    ctl, req = _start_with_one_request(policy={"action_space": "delta"})
    ctl.pause()
    ctl.resume(T0 + 0.2)
    delta = ActionChunk(np.zeros((50, 4), np.float32), req.observation.timestamp)
    assert not ctl.on_chunk(delta, T0 + 0.21, req)
    ctl.on_inference_failed("late failure", T0 + 0.21, req)
    values = ctl.status(T0 + 0.21).values
    assert values["inference.failures"] == 0 and values["inference.last_failure"] == ""
    assert values["chunks.dropped_stale"] == 2
    feed(ctl, T0 + 0.21)
    assert "inference failed" not in ctl.tick(T0 + 0.21).reason


def test_clock_jump_back_recovers_within_one_obs_timeout():
    sim = Sim(PolicyController(make_config()))
    sim.ctl.activate(T0)
    sim.run(1.0)
    assert not sim.plans[-1][1].is_hold
    last_command = sim.plans[-1][1].positions[0]
    # The simulation restarts: time goes back 10 s, sensors follow the new clock.
    jump_to = T0 - 9.0
    sim.ctl.on_clock_jump(jump_to, jump_to - sim.t)
    sim.t = jump_to
    plan = sim.ctl.tick(sim.t)
    assert plan.is_hold
    np.testing.assert_allclose(plan.positions[0], last_command, err_msg="hold where the robot was sent")
    sim.run(0.5)  # obs_timeout
    assert not sim.plans[-1][1].is_hold
    values = sim.ctl.status(sim.t).values
    assert values["clock.backward_jumps"] == 1
    assert values.get("rejected.out_of_order:joint_state", 0) == 0


def test_without_the_jump_reset_a_restarted_clock_wedges_the_buffers():
    # What the clock-jump callback prevents: stamps older than the buffered ones are
    # rejected (out of order), so without a reset the policy would stop for good.
    sim = Sim(PolicyController(make_config()))
    sim.ctl.activate(T0)
    sim.run(1.0)
    sim.t = T0 - 9.0
    sim.run(0.5)
    assert sim.plans[-1][1].is_hold
    assert sim.ctl.status(sim.t).values["rejected.out_of_order:joint_state"] > 0


def test_stamps_from_the_future_are_rejected():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    assert not ctl.on_joint_state(MEASURED, T0 + 5.0, T0)
    assert not ctl.on_image("base_0_rgb", FRAME, T0 + 5.0, T0)
    assert ctl.on_image("base_0_rgb", FRAME, T0 + 0.1, T0), "small offsets between clocks are fine"
    events = ctl.events()
    assert "future_stamp:joint_state" in events and "use_sim_time" in events["future_stamp:joint_state"][1]
    assert ctl.on_joint_state(MEASURED, T0, T0), "a rejected future stamp did not wedge the buffer"


def test_a_robot_far_from_its_commands_is_reported_as_a_safety_conflict():
    # The robot is pushed 0.5 rad away from where it is sent, farther than
    # max_distance_from_measured (0.05) and than one velocity step (0.02): the
    # command steps toward it at the velocity limit (never jumps) and diagnostics
    # say why the distance bound is not met.
    cfg = make_config(limits={"max_velocity": [1.0], "max_distance_from_measured": [0.05]})
    hold = lambda ts: ActionChunk(np.tile(np.float32(MEASURED), (50, 1)), ts)  # noqa: E731
    sim = Sim(PolicyController(cfg), policy=hold)
    sim.ctl.activate(T0)
    sim.run(0.3)
    before = sim.plans[-1][1].positions[0]
    pushed = MEASURED + np.array([0.0, 0.0, 0.0, -0.5])
    for k in range(1, 6):
        t = sim.t + 0.02 * k
        feed(sim.ctl, t, state=pushed)
        plan = sim.ctl.tick(t)
        assert plan.positions[0][3] == pytest.approx(before[3] - 0.02 * k), "toward the robot, a step a tick"
    status = sim.ctl.status(t)
    assert status.values["safety.conflict_clamps"] >= 5
    assert "safety conflict on j3" in status.message


def test_a_clock_jump_during_assembly_never_yields_a_pre_jump_request():
    # The jump callback (executor thread) can run while the worker or the control
    # timer is between assembling an observation and taking the controller's lock.
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    feed(ctl, T0)
    real = ctl._assembler.assemble
    jump_to = T0 - 30.0

    def assemble_then_jump(now):
        result = real(now)  # holds the pre-jump frames
        ctl.on_clock_jump(jump_to, jump_to - now)
        return result

    ctl._assembler.assemble = assemble_then_jump
    assert ctl.next_request(T0) is None, "a request of pre-jump stamps"
    assert ctl.tick(T0).is_hold
    ctl._assembler.assemble = real
    # Fresh sensors on the new clock: requests and execution resume at once.
    feed(ctl, jump_to + 0.01)
    req = ctl.next_request(jump_to + 0.01)
    assert req is not None and req.observation.timestamp == pytest.approx(jump_to + 0.01)
    assert ctl.on_chunk(ramp_chunk(req.observation.timestamp), jump_to + 0.03, req)
    feed(ctl, jump_to + 0.03)
    assert not ctl.tick(jump_to + 0.03).is_hold


def test_events_keep_their_age_across_a_clock_jump():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    ctl.on_input_error("base_0_rgb", "camera base_0_rgb: corrupt JPEG", T0, reason="invalid_image")
    assert "corrupt JPEG" in ctl.status(T0 + 0.5).message
    ctl.on_clock_jump(100.0, 100.0 - (T0 + 0.5))
    # 0.5 s old at the jump: 0.7 s old at 100.2 (within diagnostics.window, 1 s), 2.5 s at 102.
    assert "corrupt JPEG" not in ctl.status(102.0).message
    assert "corrupt JPEG" in ctl.status(100.2).message


def test_a_chunk_restamped_by_the_policy_is_a_failure_not_a_silent_shift():
    ctl, req = _start_with_one_request(policy={"action_space": "delta"})
    moved = ActionChunk(np.zeros((50, 4), np.float32), req.observation.timestamp + 0.5)
    assert not ctl.on_chunk(moved, T0 + 0.05, req)
    assert "stamped its chunk" in ctl.status(T0 + 0.05).values["inference.last_failure"]
