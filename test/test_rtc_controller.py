"""aggregation.mode rtc in the controller: the delay d, the guidance target, the takeover, the boundary jump.

The policies here are test doubles that behave like ``Policy.infer(obs, guidance=...)``: a chunk
stamped with the observation's time whose first ``delay`` rows follow ``guidance.previous`` and
whose next rows blend from it to the unguided prediction, as Real-Time Chunking's guidance does.
"""

from __future__ import annotations

import copy
import inspect
import math
import time

import numpy as np
import pytest

from vla_ros.config import NodeConfig
from vla_ros.controller import InferenceRequest, PolicyController
from vla_ros.errors import ConfigError
from vla_ros.ros.inference_worker import InferenceWorker, ProcessRunner, ThreadRunner
from vla_ros.types import ActionChunk, ChunkGuidance, RawObservation, RTCSettings

JOINTS = ["j0", "j1", "j2", "j3"]
CAMS = ["base_0_rgb", "left_wrist_0_rgb"]
T0 = 1000.0
DT = 0.02  # action period and control period
FRAME = np.zeros((6, 8, 3), np.uint8)
MEASURED = np.array([0.0, 0.0, 0.0, 0.5])


def make_config(mode="rtc", **overrides) -> NodeConfig:
    data = {
        "joint_names": JOINTS,
        "control_rate": 50.0,
        "policy": {"action_rate": 50.0},
        "prompt": {"default": "stack the cups"},
        "joint_states": {"max_staleness": 0.1},
        "cameras": {"keys": CAMS, "base_0_rgb": {"width": 8, "height": 6}},
        "sync": {"max_skew": 0.05, "missing_camera_policy": "mask"},
        "aggregation": {"mode": mode},
        "inference": {"execute_threshold": 0.5, "retry_delay": 0.2},
        "output": {"num_points": 3},
        "limits": {"lower": [-1.0] * 4, "upper": [1.0] * 4, "max_velocity": [10.0]},
        "watchdog": {"obs_timeout": 0.5, "inference_timeout": 2.0},
    }

    def merge(into, update):
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(data, copy.deepcopy(overrides))
    return NodeConfig.from_dict(data)


def feed(ctl, t, state=MEASURED):
    ctl.on_joint_state(state, t, t)
    for key in CAMS:
        ctl.on_image(key, FRAME, t, t)


def constant_chunk(timestamp, value, horizon=50):
    return ActionChunk(np.full((horizon, 4), value, np.float32), timestamp, {"total": 0.01})


def ramp(timestamp, horizon=50, offset=0.0):
    k = np.arange(horizon, dtype=np.float32)
    actions = np.stack([0.01 * k, -0.01 * k, np.zeros(horizon), np.full(horizon, 0.5)], axis=1) + offset
    return ActionChunk(actions.astype(np.float32), timestamp, {"total": 0.01})


def guided(base: np.ndarray, guidance: ChunkGuidance | None) -> np.ndarray:
    """What a guided chunk looks like: rows < d follow previous, then a linear blend to ``base``.

    Row k >= d mixes previous and base with weight (k - d + 1) / (E - d + 1) on base (E:
    execution_horizon), as far as previous reaches; from E on (or past previous) it is ``base``.
    """
    out = np.array(base, dtype=np.float32)
    if guidance is None:
        return out
    prev, d, horizon = guidance.previous, guidance.delay, guidance.settings.execution_horizon
    for k in range(min(prev.shape[0], horizon, out.shape[0])):
        w = 0.0 if k < d else min(1.0, (k - d + 1) / (horizon - d + 1))
        out[k] = (1.0 - w) * prev[k] + w * out[k]
    return out


class GuidedDouble:
    """Like Policy.infer: a chunk stamped with obs.timestamp; with guidance, rows follow previous.

    Unguided, chunk i is a ramp shifted by +-0.2 (alternating): consecutive chunks disagree.
    """

    def __init__(self):
        self.calls = 0
        self.guidance: list[ChunkGuidance | None] = []

    def infer(self, obs, noise=None, tokens=None, guidance=None):
        self.guidance.append(guidance)
        offset = 0.2 if self.calls % 2 == 0 else -0.2
        self.calls += 1
        base = ramp(obs.timestamp, offset=offset).actions
        return ActionChunk(guided(base, guidance), obs.timestamp, {"total": 0.01})


def simulate(ctl, policy, seconds=3.0, latency=0.1):
    """Sensors every 10 ms, one inference in flight (chunk after ``latency``), ticks every 20 ms."""
    t = T0
    inflight = None
    plans = []
    for _ in range(int(round(seconds / 0.01))):
        t = round(t + 0.01, 6)
        feed(ctl, t)
        if inflight is not None and t >= inflight[0] - 1e-9:
            chunk, req = inflight[1], inflight[2]
            inflight = None
            ctl.on_chunk(chunk, t, req)
        if inflight is None:
            req = ctl.next_request(t)
            if req is not None:
                if req.guidance is None:
                    chunk = policy.infer(req.observation)
                else:
                    chunk = policy.infer(req.observation, guidance=req.guidance)
                inflight = (t + latency, chunk, req)
        if round(t / DT, 6) % 1 == 0:
            plans.append(ctl.tick(t))
    return plans


def first_chunk(ctl, value=0.0, latency=0.04, t=T0):
    """Request at ``t`` and merge a constant chunk ``latency`` later; returns the request."""
    feed(ctl, t)
    req = ctl.next_request(t)
    assert req is not None and req.guidance is None, "the first chunk runs unguided"
    ctl.on_chunk(constant_chunk(req.observation.timestamp, value), t + latency, req)
    return req


# ---------------------------------------------------------------- delay d ---


def test_delay_is_a_latency_percentile_in_actions_plus_the_margin():
    ctl = PolicyController(make_config(inference={"execute_threshold": 0.01}))
    ctl.activate(T0)
    assert ctl.rtc_delay() == 1, "no latency measured yet: just rtc.delay_margin"
    latencies = [0.05] * 19 + [0.2]
    t = T0
    for latency in latencies:
        feed(ctl, t)
        req = ctl.next_request(t)
        assert req is not None
        ctl.on_chunk(ramp(req.observation.timestamp), t + latency, req)
        t = round(t + latency + 0.02, 6)
    # numpy's p95 of 19 x 50 ms and one 200 ms: 50 + 0.05 * 150 * ... = 57.5 ms -> ceil(2.875) = 3, + 1.
    assert np.percentile(latencies, 95) == pytest.approx(0.0575)
    assert ctl.rtc_delay() == 4
    # The percentile and the margin are parameters.
    ctl2 = PolicyController(make_config(rtc={"latency_percentile": 100.0, "delay_margin": 0}))
    ctl2._latency.extend(latencies)
    assert ctl2.rtc_delay() == 10  # the 200 ms maximum, exactly 10 actions (not 11 by rounding)
    ctl3 = PolicyController(make_config(rtc={"latency_percentile": 50.0, "delay_margin": 2}))
    ctl3._latency.extend(latencies)
    assert ctl3.rtc_delay() == math.ceil(0.05 / DT - 1e-6) + 2 == 5


def test_a_delay_past_the_guided_region_is_reported():
    ctl = PolicyController(make_config(rtc={"execution_horizon": 3, "delay_margin": 0}))
    ctl.activate(T0)
    first_chunk(ctl, latency=0.1)  # 100 ms at 50 Hz: d = 5 >= 3
    feed(ctl, T0 + 0.6)
    req = ctl.next_request(T0 + 0.6)
    assert req.guidance.delay == 5
    count, detail = ctl.events()["rtc:horizon"]
    assert count == 1 and "raise rtc.execution_horizon above d" in detail and "d = 5" in detail
    quiet = PolicyController(make_config(rtc={"execution_horizon": 6, "delay_margin": 0}))
    quiet.activate(T0)
    first_chunk(quiet, latency=0.1)
    feed(quiet, T0 + 0.6)
    assert quiet.next_request(T0 + 0.6).guidance.delay == 5 and "rtc:horizon" not in quiet.events()


def test_guidance_survives_a_late_chunk_and_lagging_camera_stamps():
    """A chunk that arrives after its takeover must still answer for an observation older than it."""
    ctl = PolicyController(make_config(inference={"trigger": "rate", "rate": 1000.0}))
    ctl.activate(T0)
    first_chunk(ctl, value=0.0, latency=0.04)
    t = T0 + 0.10
    feed(ctl, t)
    late = ctl.next_request(t)
    arrival = t + 0.10  # d = 3 actions (60 ms) planned; 100 ms taken: a late chunk, on the action grid
    assert ctl.on_chunk(constant_chunk(late.observation.timestamp, 0.3), arrival, late)
    feed(ctl, arrival - 0.01)  # the newest frames are 10 ms older than the arrival
    request = ctl.next_request(arrival)
    assert request.observation.timestamp == pytest.approx(arrival - 0.01)
    assert request.guidance is not None and request.guidance.previous.shape[0] >= 40
    # Row 0 is the late chunk's plan at the observation's time (its own, never executed there).
    assert np.allclose(request.guidance.previous[0], 0.3)
    plan = ctl.tick(arrival)
    # Executed: the late chunk from its arrival on (the first point is rate-limited from 0 by the filter).
    assert np.allclose(plan.positions[1:, :3], 0.3) and 0.0 < plan.positions[0, 0] <= 0.3


# ------------------------------------------------------------- guidance ---


def test_guidance_is_the_plan_from_the_observation_time_on():
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    feed(ctl, T0)
    req = ctl.next_request(T0)
    assert req.guidance is None
    first = ramp(T0)
    ctl.on_chunk(first, T0 + 0.05, req)
    t = T0 + 0.5  # execute_threshold 0.5 of a 1 s chunk
    feed(ctl, t)
    req = ctl.next_request(t)
    assert req is not None and req.observation.timestamp == pytest.approx(t)
    g = req.guidance
    assert isinstance(g, ChunkGuidance) and g.settings == RTCSettings()
    # The first chunk covers T0 .. T0 + 0.98: rows 25..49 of it lie at t + k * DT, k = 0..24.
    assert g.previous.shape == (25, 4) and g.previous.dtype == np.float32
    np.testing.assert_allclose(g.previous, first.actions[25:], atol=1e-5)
    assert g.delay == 1 + math.ceil(0.05 / DT - 1e-6) == 4
    status = ctl.status(t).values
    assert (status["rtc.delay"], status["rtc.guided_rows"], status["rtc.guided_requests"]) == (4, 25, 1)
    assert (status["rtc.max_guidance_weight"], status["rtc.schedule"], status["rtc.mode"]) == (
        10.0, "linear", "guided"
    )
    # Other modes send no guidance.
    latest = PolicyController(make_config("latest"))
    latest.activate(T0)
    first_chunk(latest)
    feed(latest, t)
    assert latest.next_request(t).guidance is None
    assert "rtc.delay" not in latest.status(t).values


def test_guidance_stays_in_the_policys_delta_space():
    mask = [True, True, False, True]
    ctl = PolicyController(make_config(policy={"action_space": "delta", "delta_mask": mask}))
    ctl.activate(T0)
    s1 = np.array([0.1, -0.2, 0.3, 0.4])
    feed(ctl, T0, state=s1)
    req = ctl.next_request(T0)
    delta = ramp(T0)
    ctl.on_chunk(delta, T0 + 0.05, req)
    t = T0 + 0.5
    s2 = np.array([0.3, 0.1, -0.5, 0.2])
    feed(ctl, t, state=s2)
    g = ctl.next_request(t).guidance
    absolute_plan = delta.actions[25:] + np.where(mask, s1, 0.0)  # what the robot executes
    np.testing.assert_allclose(g.previous, absolute_plan - np.where(mask, s2, 0.0), atol=1e-5)
    # Joint 2 is absolute: untouched by either state.
    np.testing.assert_allclose(g.previous[:, 2], delta.actions[25:, 2], atol=1e-6)


@pytest.mark.parametrize("restart", ["activate", "resume", "clock_jump"])
def test_no_guidance_after_execution_restarts(restart):
    ctl = PolicyController(make_config())
    ctl.activate(T0)
    first_chunk(ctl)
    t = T0 + 0.5
    if restart == "activate":
        ctl.activate(t)
    elif restart == "resume":
        ctl.pause()
        ctl.resume(t)
    else:
        ctl.on_clock_jump(t, -1.0)
    feed(ctl, t)
    req = ctl.next_request(t)
    assert req is not None and req.guidance is None
    assert ctl.status(t).values["rtc.guided_rows"] == 0


# ------------------------------------------------------- takeover, jump ---


def _boundary(mode, guided_policy):
    """Chunk 1 constant 0 (arrives after 40 ms), chunk 2 from T0 + 0.5 predicts 0.4, arrives after 60 ms."""
    ctl = PolicyController(make_config(mode))
    ctl.activate(T0)
    first_chunk(ctl, 0.0, latency=0.04)
    t = T0 + 0.5
    feed(ctl, t)
    req = ctl.next_request(t)
    base = np.full((50, 4), 0.4, np.float32)
    actions = guided(base, req.guidance) if guided_policy else base
    assert ctl.on_chunk(ActionChunk(actions, req.observation.timestamp, {}), t + 0.06, req)
    return ctl, req


def test_rtc_keeps_the_first_d_actions_and_shrinks_the_boundary_jump():
    latest, _ = _boundary("latest", guided_policy=False)
    jumps = latest.boundary_jumps()
    # The new chunk wins from its first kept stamp: at the next tick the plan jumps 0 -> 0.4.
    assert jumps == {"last": pytest.approx(0.4, abs=1e-6), "max": pytest.approx(0.4, abs=1e-6),
                     "mean": pytest.approx(0.4, abs=1e-6), "count": 1}
    ctl, req = _boundary("rtc", guided_policy=True)
    assert req.guidance.delay == 3  # ceil(40 ms / 20 ms) + 1
    # Rows 0..2 (t .. t + 0.04) come from the current plan; row 3 = 0.4 / 8 takes over at t + 0.06,
    # the arrival, where the next tick may fall (offline replay ticks there): 0.05 from the old plan.
    t = T0 + 0.56
    np.testing.assert_allclose(ctl._aggregator.value_at(t), [0.05] * 4, atol=1e-6)
    np.testing.assert_allclose(ctl._aggregator.value_at(t + 0.02), [0.1] * 4, atol=1e-6)
    jumps = ctl.boundary_jumps()
    assert jumps["count"] == 1 and jumps["last"] == pytest.approx(0.05, abs=1e-6)
    assert jumps["last"] < 0.5 * latest.boundary_jumps()["last"]
    status = ctl.status(t).values
    assert status["chunks.boundary_jump_last"] == pytest.approx(0.05, abs=1e-6)
    assert status["chunks.boundary_jump_max"] == pytest.approx(0.05, abs=1e-6)
    assert status["chunks.boundary_jumps"] == 1
    # An unguided chunk in rtc mode takes over at t + d * DT (here its arrival) and jumps to 0.4.
    unguided, _ = _boundary("rtc", guided_policy=False)
    np.testing.assert_allclose(unguided._aggregator.value_at(T0 + 0.56), [0.4] * 4, atol=1e-6)
    assert unguided.boundary_jumps()["last"] == pytest.approx(0.4, abs=1e-6)


def test_takeover_uses_the_delay_of_the_request():
    ctl, req = _boundary("rtc", guided_policy=False)  # d = 3: takeover at T0 + 0.56 = arrival
    assert ctl._aggregator.value_at(T0 + 0.56)[0] == pytest.approx(0.4, abs=1e-6)
    assert ctl._aggregator.num_chunks == 1, "taken over at arrival: the old chunk is pruned"
    # A margin of 5 actions keeps the old plan longer: takeover at T0 + 0.5 + 7 * DT.
    ctl = PolicyController(make_config(rtc={"delay_margin": 5}))
    ctl.activate(T0)
    first_chunk(ctl, 0.0, latency=0.04)
    feed(ctl, T0 + 0.5)
    req = ctl.next_request(T0 + 0.5)
    assert req.guidance.delay == 7
    ctl.on_chunk(constant_chunk(req.observation.timestamp, 0.4), T0 + 0.56, req)
    agg = ctl._aggregator
    assert agg.num_chunks == 2
    assert agg.value_at(T0 + 0.58)[0] == pytest.approx(0.0, abs=1e-9)  # arrival + 1 tick: still the old plan
    assert agg.value_at(T0 + 0.6399)[0] == pytest.approx(0.0, abs=1e-9)  # the old plan up to row 7's time
    assert agg.value_at(T0 + 0.64)[0] == pytest.approx(0.4, abs=1e-6)
    assert ctl.boundary_jumps()["last"] == pytest.approx(0.4, abs=1e-6)  # at the first tick, t + 0.14
    agg.prune(T0 + 0.6399)
    assert agg.num_chunks == 2
    agg.prune(T0 + 0.64)  # droppable once the new chunk has taken over
    assert agg.num_chunks == 1


def test_first_chunk_has_no_boundary():
    ctl = PolicyController(make_config("latest"))
    ctl.activate(T0)
    assert ctl.boundary_jumps() == {"last": 0.0, "max": 0.0, "mean": 0.0, "count": 0}
    first_chunk(ctl, 0.3)
    assert ctl.boundary_jumps()["count"] == 0
    # A second chunk that agrees with the plan: measured, no jump.
    feed(ctl, T0 + 0.5)
    req = ctl.next_request(T0 + 0.5)
    ctl.on_chunk(constant_chunk(req.observation.timestamp, 0.3), T0 + 0.55, req)
    assert ctl.boundary_jumps() == {"last": 0.0, "max": 0.0, "mean": 0.0, "count": 1}


@pytest.mark.parametrize("mode", ["temporal_ensemble", "crossfade"])
def test_boundary_jump_is_measured_in_every_mode(mode):
    ctl, _ = _boundary(mode, guided_policy=False)
    jumps = ctl.boundary_jumps()
    assert jumps["count"] == 1 and 0.0 < jumps["last"] < 0.4  # both blend the two chunks


def test_rtc_execution_with_a_guided_policy_is_smoother_than_latest():
    results = {}
    for mode in ("latest", "rtc"):
        ctl = PolicyController(make_config(mode))
        ctl.activate(T0)
        policy = GuidedDouble()
        plans = simulate(ctl, policy, seconds=4.0, latency=0.1)
        assert not any(p.is_hold for p in plans[10:]), mode
        results[mode] = (ctl.boundary_jumps(), policy, ctl)
    latest, rtc = results["latest"][0], results["rtc"][0]
    assert latest["count"] >= 5 and rtc["count"] == latest["count"]
    # Consecutive unguided chunks disagree by 0.4 (+-0.2) plus the ramp's restart.
    assert latest["mean"] > 0.3
    assert rtc["max"] < 0.25 * latest["mean"]
    policy, ctl = results["rtc"][1], results["rtc"][2]
    assert policy.guidance[0] is None and all(g is not None for g in policy.guidance[1:])
    # 100 ms latency: ceil(0.1 / 0.02) + 1 = 6 actions.
    assert {g.delay for g in policy.guidance[1:]} == {6}
    assert ctl.status(T0 + 4.0).values["rtc.delay"] == 6


# ------------------------------------------------ runners and the worker ---


class GuidanceEcho:
    """Returns the guidance it got: rows = previous, timings = delay and settings (picklable by reference)."""

    def infer(self, obs, noise=None, tokens=None, guidance=None):
        actions = np.full((50, 4), -9.0, np.float32)
        timings = {"total": 0.0, "guided": 0.0}
        if guidance is not None:
            actions[: guidance.previous.shape[0]] = guidance.previous
            s = guidance.settings
            timings.update(
                guided=1.0, delay=float(guidance.delay), horizon=float(s.execution_horizon),
                weight=float(s.max_guidance_weight), schedule=float(("zeros", "ones", "linear", "exp").index(
                    s.schedule)), trained=float(s.mode == "trained"), vjp=float(s.jacobian == "vjp"),
                rows=float(guidance.previous.shape[0]),
            )
        return ActionChunk(actions, obs.timestamp, timings)


class NoGuidanceKeyword:
    """A policy from before RTC: infer(obs) only."""

    def infer(self, obs):
        return ActionChunk(np.zeros((50, 4), np.float32), obs.timestamp, {"total": 0.0})


def _observation(timestamp=5.0):
    return RawObservation(
        images={"base_0_rgb": np.full((12, 16, 3), 7, np.uint8)},
        state=np.linspace(-0.5, 0.5, 4).astype(np.float32),
        prompt="pick up the cube",
        timestamp=timestamp,
    )


def _guidance():
    previous = (np.arange(28, dtype=np.float32).reshape(7, 4) / 7.0 - 1.3).astype(np.float32)
    settings = RTCSettings(execution_horizon=25, schedule="exp", max_guidance_weight=5.0, mode="trained",
                           jacobian="vjp")
    return ChunkGuidance(previous, 3, settings)


def test_thread_runner_passes_guidance_only_when_there_is_some():
    g = _guidance()
    chunk = ThreadRunner(GuidanceEcho()).infer(_observation(), guidance=g)
    np.testing.assert_array_equal(chunk.actions[:7], g.previous)
    assert chunk.timings["delay"] == 3.0
    assert ThreadRunner(NoGuidanceKeyword()).infer(_observation()).actions.shape == (50, 4)


def test_process_runner_carries_the_guidance_to_the_child():
    g = _guidance()
    runner = ProcessRunner(None, factory=GuidanceEcho, timeout=30.0, start_timeout=60.0)
    try:
        chunk = runner.infer(_observation(), guidance=g)
        np.testing.assert_array_equal(chunk.actions[:7], g.previous)  # float32, bit for bit
        assert np.all(chunk.actions[7:] == -9.0)
        t = chunk.timings
        assert (t["guided"], t["delay"], t["rows"], t["horizon"], t["weight"]) == (1.0, 3.0, 7.0, 25.0, 5.0)
        assert (t["schedule"], t["trained"], t["vjp"]) == (3.0, 1.0, 1.0)
        unguided = runner.infer(_observation(6.0))
        assert unguided.timings["guided"] == 0.0 and unguided.timestamp == 6.0
    finally:
        runner.close()
    runner = ProcessRunner(None, factory=NoGuidanceKeyword, timeout=30.0, start_timeout=60.0)
    try:
        assert runner.infer(_observation()).actions.shape == (50, 4)
    finally:
        runner.close()


class _OneRequest:
    """A controller stand-in: hands out one request, records what comes back."""

    def __init__(self, request):
        self.request = request
        self.chunks = []
        self.failures = []

    def next_request(self, now):
        request, self.request = self.request, None
        return request

    def on_chunk(self, chunk, now, request):
        self.chunks.append((chunk, request))
        return True

    def on_inference_failed(self, reason, now, request):
        self.failures.append(reason)


def test_the_worker_hands_the_requests_guidance_to_the_runner():
    g = _guidance()
    ctl = _OneRequest(InferenceRequest(_observation(), 0, 5.0, g))
    worker = InferenceWorker(ctl, ThreadRunner(GuidanceEcho()), clock=time.monotonic, poll_period=0.001)
    worker.start()
    worker.resume()
    try:
        deadline = time.monotonic() + 10.0
        while not ctl.chunks and not ctl.failures and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        worker.stop()
    assert not ctl.failures
    chunk, _ = ctl.chunks[0]
    np.testing.assert_array_equal(chunk.actions[:7], g.previous)
    # Without guidance a policy that does not know the keyword still runs.
    ctl = _OneRequest(InferenceRequest(_observation(), 0, 5.0))
    worker = InferenceWorker(ctl, ThreadRunner(NoGuidanceKeyword()), clock=time.monotonic, poll_period=0.001)
    worker.start()
    worker.resume()
    try:
        deadline = time.monotonic() + 10.0
        while not ctl.chunks and not ctl.failures and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        worker.stop()
    assert not ctl.failures and len(ctl.chunks) == 1


def test_offline_replay_passes_the_guidance_to_the_policy():
    from vla_ros.tools.replay_offline import OfflineReplay

    g = _guidance()
    replay = OfflineReplay.__new__(OfflineReplay)  # only the inference call site: no bag, no plan
    replay.pending = None
    replay.controller = _OneRequest(InferenceRequest(_observation(), 0, 5.0, g))
    replay.policy = GuidanceEcho()
    replay.compute = []
    replay.latency, replay.latency_s = "fixed", 0.1
    replay.maybe_request(5.0)
    arrival, chunk, _ = replay.pending
    assert arrival == pytest.approx(5.1)
    np.testing.assert_array_equal(chunk.actions[:7], g.previous)
    replay.pending = None
    replay.controller = _OneRequest(InferenceRequest(_observation(), 0, 5.0))
    replay.policy = NoGuidanceKeyword()
    replay.maybe_request(5.0)
    assert replay.pending[1].actions.shape == (50, 4)


# ------------------------------------------------------ decode policies ---


def test_rtc_is_refused_for_a_decode_policy():
    from vla_ros.policy import check_config_fits, PolicySpec

    spec = PolicySpec(
        config_name="pi0fast-tiny", variant="pi0fast", model_dim=32, state_dim=4, action_stats_dim=4,
        action_dims=None, camera_keys=tuple(CAMS), image_size=224, action_horizon=50, max_token_len=48,
        checkpoint="/ckpt/fast",
    )
    with pytest.raises(ConfigError) as info:
        check_config_fits(spec, make_config("rtc"))
    assert info.value.parameter == "aggregation.mode" and "\n" not in str(info.value)
    assert "pi0-FAST" in str(info.value)
    check_config_fits(spec, make_config("latest"))  # the other modes are fine
    flow = PolicySpec(**{**spec.__dict__, "variant": "pi0", "config_name": "pi0-tiny"})
    check_config_fits(flow, make_config("rtc"))
    # The paper's VJP needs autograd through the expert: only the reference engine, refused up front.
    with pytest.raises(ConfigError) as info:
        check_config_fits(flow, make_config("rtc", rtc={"jacobian": "vjp"}))
    assert info.value.parameter == "rtc.jacobian" and "'reference'" in str(info.value)
    check_config_fits(flow, make_config("rtc", rtc={"jacobian": "vjp"}, policy={"engine": "reference"}))


# --------------------------------------------------- the real tiny policy ---


def test_rtc_with_the_real_tiny_policy(tiny_checkpoint):
    from vla_ros.policy import Policy, PolicyOptions

    assert "guidance" in inspect.signature(Policy.infer).parameters
    policy = Policy.from_checkpoint(tiny_checkpoint, PolicyOptions(device="cpu", seed=0, num_threads=1))
    joints = [f"j{i}" for i in range(14)]
    config = NodeConfig.from_dict({
        "joint_names": joints,
        "control_rate": 50.0,
        "policy": {"action_rate": 50.0},
        "prompt": {"default": "fold the towel"},
        "cameras": {"keys": ["base_0_rgb"], "base_0_rgb": {"width": 16, "height": 12}},
        "sync": {"missing_camera_policy": "mask"},
        "aggregation": {"mode": "rtc"},
        "limits": {"lower": [-10.0] * 14, "upper": [10.0] * 14, "max_velocity": [100.0]},
    })
    ctl = PolicyController(config)
    ctl.activate(T0)
    frame = np.full((12, 16, 3), 90, np.uint8)

    def feed14(t):
        ctl.on_joint_state(np.zeros(14), t, t)
        ctl.on_image("base_0_rgb", frame, t, t)

    feed14(T0)
    req = ctl.next_request(T0)
    first = policy.infer(req.observation)
    assert ctl.on_chunk(first, T0 + 0.1, req)
    t = T0 + 0.5
    feed14(t)
    req = ctl.next_request(t)
    g = req.guidance
    assert g is not None and g.delay == 6 and g.previous.shape == (25, 14)
    np.testing.assert_allclose(g.previous, first.actions[25:], atol=1e-5)
    noise = policy.sample_noise()  # the same noise for both: only the guidance differs
    unguided = policy.infer(req.observation, noise=noise)
    chunk = policy.infer(req.observation, noise=noise, guidance=g)
    assert chunk.actions.shape == (50, 14) and chunk.timestamp == req.observation.timestamp
    # Guidance pulls the first d rows toward the plan (no closer: they are not used before takeover).
    err_guided = np.abs(chunk.actions[: g.delay] - g.previous[: g.delay]).mean()
    err_free = np.abs(unguided.actions[: g.delay] - g.previous[: g.delay]).mean()
    assert err_guided < 0.5 * err_free
    assert ctl.on_chunk(chunk, t + 0.1, req)
    assert ctl.boundary_jumps()["count"] == 1


# ------------------------------------------------------------- the node ---


class GuidedNodeDouble:
    """For the node test: 14 joints inside the +-0.5 limits, chunks alternating +-0.1, guided as above."""

    def __init__(self):
        self.guided = 0
        self.calls = 0

    def infer(self, obs, noise=None, tokens=None, guidance=None):
        base = np.full((50, obs.state.shape[0]), 0.1 if self.calls % 2 == 0 else -0.1, np.float32)
        self.calls += 1
        self.guided += guidance is not None
        return ActionChunk(guided(base, guidance), obs.timestamp, {"total": 0.001})


def test_the_node_runs_rtc_and_reports_it_in_diagnostics():
    pytest.importorskip("rclpy")
    import threading

    from rclpy.lifecycle import TransitionCallbackReturn
    from test_node_harness import Harness
    from test_node_inprocess import as_parameters, CAMERAS, flat_parameters, PREFIX
    from vla_ros.ros.node import make_executor, VlaPolicyNode

    prefix, name = "/vla_rtc", "vla_rtc_policy"  # apart from the other node tests' topics
    cameras = {key: (topic.replace(PREFIX, prefix), kind) for key, (topic, kind) in CAMERAS.items()}
    harness = Harness(prefix, cameras, node_name=name)
    flat = flat_parameters(**{"aggregation.mode": "rtc", "inference.execute_threshold": 0.2,
                              "diagnostics.rate": 5.0})
    flat.update({k: v.replace(PREFIX, prefix) for k, v in flat.items() if isinstance(v, str)})
    policy = GuidedNodeDouble()
    node = VlaPolicyNode(
        name, context=harness.context, parameter_overrides=as_parameters(flat), policy_factory=lambda: policy
    )
    executor = make_executor(1, context=harness.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.guided == 1 and policy.calls >= 2  # the warm-up runs the guided loop once, last
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        values = harness.wait_for_diagnostics(
            lambda v: v.get("state") == "EXECUTING" and int(v.get("chunks.boundary_jumps", "0")) >= 2,
            timeout=10.0,
        )
        assert values is not None, harness.latest_diagnostics()
        assert policy.guided >= 2
        assert int(values["rtc.delay"]) >= 1 and int(values["rtc.guided_rows"]) >= 1
        assert (values["rtc.schedule"], values["rtc.mode"]) == ("linear", "guided")
        assert float(values["rtc.max_guidance_weight"]) == 10.0
        # Chunks disagree by 0.2 (the jump "latest" would show); guided, the plan jumps less.
        assert 0.0 <= float(values["chunks.boundary_jump_max"]) < 0.15
    finally:
        node.release()
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        node.destroy_node()
        harness.close()


def test_the_latency_percentile_matches_numpys():
    from vla_ros.controller import _percentile

    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 100):
        values = list(rng.random(n))
        for q in (0.5, 50.0, 95.0, 99.9, 100.0):
            assert _percentile(values, q) == pytest.approx(np.percentile(values, q), abs=1e-15)
