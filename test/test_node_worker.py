"""The inference worker and its runners (no DDS): thread vs separate process, failures, camera names."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

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

    def __init__(self, requests):
        self.requests = list(requests)
        self.chunks, self.failures = [], []

    def next_request(self, now):
        return self.requests.pop(0) if self.requests else None

    def on_chunk(self, chunk, now):
        self.chunks.append(chunk)

    def on_inference_failed(self, reason, now):
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
