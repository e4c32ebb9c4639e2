"""The inference worker and its runners (no DDS): thread vs separate process, failures, camera names."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from vla_ros.controller import InferenceRequest, PolicyController
from vla_ros.errors import EngineError
from vla_ros.ros.inference_worker import (
    InferenceWorker,
    load_policy,
    ProcessRunner,
    ThreadRunner,
    warmup_observation,
)
from vla_ros.types import ActionChunk, RawObservation


def _observation(timestamp=5.0):
    rng = np.random.default_rng(3)
    images = {
        "base_0_rgb": rng.integers(0, 255, (120, 160, 3), dtype=np.uint8),
        "left_wrist_0_rgb": rng.integers(0, 255, (96, 128, 3), dtype=np.uint8),
    }
    return RawObservation(
        images=images,
        state=np.linspace(-0.5, 0.5, 14).astype(np.float32),
        prompt="pick up the cube",
        timestamp=timestamp,
    )


class BrokenPolicy:
    """Fails every inference (picklable by reference, for the process runner)."""

    def infer(self, obs):
        raise ValueError(f"broken on purpose at {obs.timestamp}")


class EchoPolicy:

    def __init__(self):
        self.seen = []

    def infer(self, obs):
        self.seen.append(obs)
        return ActionChunk(
            actions=np.zeros((50, 14), np.float32), timestamp=obs.timestamp, timings={"total": 0.0}
        )


def test_process_runner_matches_the_thread_runner(tiny_checkpoint):
    from vla_ros.policy import PolicyOptions

    options = PolicyOptions(device="cpu", seed=0, num_threads=1)
    obs = _observation()
    expected = ThreadRunner(load_policy(tiny_checkpoint, options)).infer(obs)
    runner = ProcessRunner(tiny_checkpoint, options, timeout=60.0)
    try:
        assert runner.pid != os.getpid()
        chunk = runner.infer(obs)
        assert chunk.timestamp == obs.timestamp
        assert chunk.actions.shape == expected.actions.shape == (50, 14)
        np.testing.assert_array_equal(chunk.actions, expected.actions)
        assert chunk.timings["total"] > 0
        # Bigger frames re-create the shared memory blocks.
        big = RawObservation(
            images={"base_0_rgb": np.zeros((480, 640, 3), np.uint8)},
            state=obs.state,
            prompt=obs.prompt,
            timestamp=6.0,
        )
        assert runner.infer(big).timestamp == 6.0
    finally:
        runner.close()
    assert runner._process.poll() is not None


def test_process_runner_reports_failures_and_a_dead_child():
    runner = ProcessRunner(None, factory=BrokenPolicy, timeout=10.0)
    try:
        with pytest.raises(EngineError, match="broken on purpose at 5.0"):
            runner.infer(_observation())
        runner._process.kill()
        runner._process.wait(timeout=5)
        with pytest.raises(EngineError, match="not running"):
            runner.infer(_observation())
    finally:
        runner.close()


def test_process_runner_reports_a_policy_that_cannot_load(tmp_path):
    with pytest.raises(EngineError, match="could not load"):
        ProcessRunner(tmp_path / "missing", None, start_timeout=60.0)


def test_aloha_checkpoint_runs_on_model_camera_keys(tiny_checkpoint):
    from vla_ros.policy import PolicyOptions

    runner = ThreadRunner(
        load_policy(tiny_checkpoint, PolicyOptions(device="cpu", robot_transform="aloha", seed=0))
    )
    obs = warmup_observation({"base_0_rgb": (48, 64), "right_wrist_0_rgb": (48, 64)}, 14)
    assert runner.infer(obs).actions.shape == (50, 14)


def test_artifact_directories_go_through_from_artifacts(tmp_path, monkeypatch):
    from vla_ros.policy import Policy

    (tmp_path / "manifest.json").write_text("{}")
    calls = []
    monkeypatch.setattr(
        Policy, "from_artifacts", classmethod(lambda cls, d, o: calls.append((d, o)) or "P"), raising=False
    )
    assert load_policy(tmp_path, "options") == "P"
    assert calls == [(tmp_path, "options")]


class _FakeController:
    """Hands out the given observations as requests, records what comes back."""

    def __init__(self, requests):
        self.requests = list(requests)
        self.chunks, self.failures = [], []

    def next_request(self, now):
        if not self.requests:
            return None
        return InferenceRequest(self.requests.pop(0), generation=0, requested_at=now)

    def on_chunk(self, chunk, now, request):
        assert request.observation.timestamp == chunk.timestamp
        self.chunks.append(chunk)

    def on_inference_failed(self, reason, now, request):
        self.failures.append(reason)


def test_worker_feeds_chunks_and_failures_back():
    obs = _observation()
    controller = _FakeController([obs, obs])
    policy = EchoPolicy()
    worker = InferenceWorker(controller, ThreadRunner(policy), clock=time.monotonic)
    worker.start()
    try:
        time.sleep(0.1)
        assert not policy.seen, "a started worker stays suspended until resume()"
        worker.resume()
        deadline = time.monotonic() + 5
        while len(controller.chunks) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(controller.chunks) == 2 and worker.inferences == 2
        worker.runner = ThreadRunner(BrokenPolicy())
        errors = []
        worker._on_error = errors.append
        controller.requests.append(obs)
        deadline = time.monotonic() + 5
        while not controller.failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert controller.failures and "broken on purpose" in controller.failures[0] and errors
    finally:
        worker.stop()
    assert not worker.running


class SlowPolicy:
    """Blocks like a real engine for ``latency`` seconds, then returns a 3 s chunk of the state."""

    def __init__(self, latency):
        self.latency = latency

    def infer(self, obs):
        time.sleep(self.latency)
        actions = np.tile(np.asarray(obs.state, np.float32), (150, 1))
        return ActionChunk(actions=actions, timestamp=obs.timestamp, timings={"total": self.latency})


def test_real_worker_slow_inference_with_fresh_sensors_never_holds():
    """Issue 9, bug 1, with the real InferenceWorker on the real clock.

    Inference takes 1.5 x watchdog.obs_timeout (1.2 s); chunks of 3 s (50 Hz)
    cover the present (inference runs back to back, so each chunk must outlast
    two latencies). The sensors stay fresh, so the control ticks must never
    hold once the first chunk is in. Margins for a loaded 2-core
    machine: staleness limits of 0.8 s against sensors every 10 ms.
    """
    import threading

    from vla_ros.config import NodeConfig

    joints = ["j0", "j1", "j2", "j3"]
    config = NodeConfig.from_dict(
        {
            "joint_names": joints,
            "control_rate": 50.0,
            "policy": {"action_rate": 50.0},
            "prompt": {"default": "hold still"},
            "joint_states": {"max_staleness": 0.8},
            "cameras": {"keys": ["base_0_rgb"], "base_0_rgb": {"max_staleness": 0.8}},
            "aggregation": {"mode": "latest"},
            "inference": {"execute_threshold": 0.2},
            "limits": {"lower": [-1.0] * 4, "upper": [1.0] * 4, "max_velocity": [10.0]},
            "watchdog": {"obs_timeout": 0.8, "inference_timeout": 5.0},
        }
    )
    controller = PolicyController(config)
    frame = np.zeros((6, 8, 3), np.uint8)
    state = np.array([0.1, 0.2, 0.3, 0.4])
    stop = threading.Event()

    def sensors():
        while not stop.is_set():
            t = time.monotonic()
            controller.on_joint_state(state, t, t)
            controller.on_image("base_0_rgb", frame, t, t)
            time.sleep(0.01)

    feeder = threading.Thread(target=sensors, daemon=True)
    controller.activate(time.monotonic())
    feeder.start()
    worker = InferenceWorker(controller, ThreadRunner(SlowPolicy(1.2)), clock=time.monotonic)
    worker.start()
    worker.resume()
    plans = []
    try:
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            now = time.monotonic()
            plans.append((now, controller.tick(now)))
            time.sleep(0.02)
    finally:
        worker.stop()
        stop.set()
        feeder.join(2.0)
    executing = [i for i, (_, plan) in enumerate(plans) if plan is not None and not plan.is_hold]
    assert executing, "the first chunk never arrived"
    after_first = plans[executing[0]:]
    holds = [plan.reason for _, plan in after_first if plan.is_hold]
    assert holds == [], f"{len(holds)} holds with fresh sensors: {holds[:3]}"
    assert worker.inferences >= 3
