"""inference.mode remote (vla_ros/remote/client.py): the node as a client of an openpi-protocol server.

RemoteRunner against `vla-ros serve`'s PolicyServer (in-process, 127.0.0.1, a free port) with the tiny
pi0 checkpoint, and against the real openpi-server package's WebsocketPolicyServer hosting a small
policy object; timeouts, reconnection with backoff, the API key, the remote.* parameters; and the
rclpy node in remote mode over real DDS while its openpi server is killed and restarted.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from lifecycle_msgs.msg import State
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from test_node_harness import Harness, is_hold, JOINT_NAMES
from vla_ros.config import NodeConfig
from vla_ros.config.policy import RemoteSection
from vla_ros.errors import ConfigError, EngineError
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.remote import codec
from vla_ros.remote.client import read_api_key, RemoteRunner
from vla_ros.remote.server import PolicyServer
from vla_ros.ros.node import make_executor, VlaPolicyNode
from vla_ros.types import ActionChunk, CAMERA_KEYS, ChunkGuidance, RawObservation, RTCSettings
from websockets.asyncio.server import serve as ws_serve
from websockets.protocol import State as WsState

# openpi-client 0.1.2's server module connects the way websockets >= 14 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

N = len(JOINT_NAMES)


def _openpi_server():
    return pytest.importorskip(
        "openpi_server",
        reason="openpi-server is a test-only dependency: pip install --no-deps openpi-client==0.1.2 "
        "openpi-server==0.1.0 (requirements.txt)",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def frames(rng, size=(240, 320), keys=CAMERA_KEYS) -> dict:
    return {key: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for key in keys}


def observation(rng, timestamp=12.5, keys=CAMERA_KEYS) -> RawObservation:
    state = rng.uniform(-0.3, 0.3, N).astype(np.float32)
    return RawObservation(frames(rng, keys=keys), state, "fold the towel", timestamp=timestamp)


def node_config(**overrides) -> NodeConfig:
    flat = {
        "joint_names": JOINT_NAMES,
        "cameras.keys": list(CAMERA_KEYS),
        "limits.lower": [-1.0] * N,
        "limits.upper": [1.0] * N,
        "limits.max_velocity": [1.0],
        "inference.mode": "remote",
    }
    flat.update(overrides)
    return NodeConfig.from_flat(flat)


class Spy:
    """A vla_ros Policy behind the server, recording what reached it."""

    def __init__(self, policy):
        self.policy, self.spec, self.seen = policy, policy.spec, []

    def infer(self, obs, noise=None, guidance=None):
        self.seen.append(obs)
        return self.policy.infer(obs, noise=noise, guidance=guidance)


class Double:
    """A Policy test double: 4 actions from the state; blocks while `release` is clear."""

    spec = None

    def __init__(self, blocked=False):
        self.release = threading.Event()
        if not blocked:
            self.release.set()

    def infer(self, obs, noise=None, guidance=None):
        assert self.release.wait(30), "the test never released the double"
        actions = np.tile(np.asarray(obs.state, np.float32), (4, 1)) + np.arange(4, dtype=np.float32)[:, None]
        return ActionChunk(actions, obs.timestamp, {"total": 0.001})


class OpenpiPolicy:
    """openpi's BasePolicy interface (what openpi's serve_policy.py hosts): infer(obs dict) -> {"actions"}."""

    def __init__(self, horizon=10):
        self.horizon, self.seen, self.fail = horizon, [], False

    def infer(self, obs: dict) -> dict:
        self.seen.append(obs)
        if self.fail:
            raise ValueError("the policy exploded")
        state = np.asarray(obs["state"], np.float32)
        return {"actions": state[None] + 0.01 * np.arange(self.horizon, dtype=np.float32)[:, None]}


class OpenpiServer:
    """openpi-server's WebsocketPolicyServer (the real package) served from a thread, stoppable."""

    def __init__(self, policy, port, metadata=None):
        self.server = _openpi_server().WebsocketPolicyServer(policy, host="127.0.0.1", port=port,
                                                             metadata=metadata)
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.task = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.server.run())
        try:
            self.loop.run_until_complete(self.task)
        except BaseException:  # cancelled by stop()
            pass

    def __enter__(self):
        self.thread.start()
        _wait_listening(self.port)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


def _wait_listening(port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


class ScriptedServer:
    """A plain websockets server in a thread that misbehaves on purpose, one behaviour per connection.

    `plan`: what the next connections do with their first request (then they answer as `answer`):
    "close" (close without a reply), "fragment" (send the first fragment of a reply, then fail),
    "stale" (a reply stamped with another observation time); once the plan is used up, connections
    answer every request. `metadata_delay`: seconds before the metadata. Records the requests it
    received (`requests`: their states) and the connections that ended (`ended`).
    """

    def __init__(self, plan=(), metadata_delay=0.0, metadata=None):
        self.plan, self.metadata_delay = list(plan), metadata_delay
        self.metadata = metadata or {"obs_format": "slots", "action_dim": N}
        self.requests, self.ended = [], 0
        self.loop = asyncio.new_event_loop()
        self.port = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def uri(self):
        return f"ws://127.0.0.1:{self.port}"

    async def _handler(self, ws):
        behaviour = self.plan.pop(0) if self.plan else "answer"
        try:
            await asyncio.sleep(self.metadata_delay)
            await ws.send(codec.encode(self.metadata))
            async for message in ws:
                request = codec.decode(message)
                self.requests.append(np.asarray(request["state"]))
                if behaviour == "close":
                    await ws.close()
                    return
                if behaviour == "fragment":
                    async def fragments():
                        yield b"\x81\xa7actions"  # the start of a reply, then the server fails
                        raise RuntimeError("the server died mid-reply")

                    try:
                        await ws.send(fragments())
                    except RuntimeError:
                        pass
                    return
                stamp = float(request.get("timestamp", 0.0)) - (1.0 if behaviour == "stale" else 0.0)
                behaviour = "answer"
                actions = np.tile(np.asarray(request["state"], np.float32), (4, 1))
                await ws.send(codec.encode({"actions": actions, "timestamp": stamp}))
        finally:
            self.ended += 1

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.stop = asyncio.Event()

        async def main():
            async with ws_serve(self._handler, "127.0.0.1", 0, compression=None) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                self.ready.set()
                await self.stop.wait()

        self.loop.run_until_complete(main())

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def _wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


@pytest.fixture(scope="module")
def tiny_policy(tiny_checkpoint):
    return Policy.from_checkpoint(tiny_checkpoint, PolicyOptions(device="cpu", precision="fp32"))


# --- against vla-ros serve's PolicyServer ----------------------------------------------


def test_remote_actions_equal_in_process_inference(tiny_policy):
    spy = Spy(tiny_policy)
    rng = np.random.default_rng(0)
    obs = observation(rng)
    noise = rng.standard_normal((50, 32)).astype(np.float32)
    with PolicyServer(spy, "slots", port=0, request_timeout=120) as server:
        runner = RemoteRunner(f"ws://127.0.0.1:{server.port}", "slots", request_timeout=60)
        try:
            notes = runner.check_config(node_config(**{"aggregation.mode": "rtc"}))  # vla-ros serve takes rtc
            untrained = f"the policy server at {runner.uri} runs an UNTRAINED checkpoint (random weights)"
            assert notes == ([untrained] if runner.metadata["untrained"] else [])
            size = tiny_policy.spec.image_size
            assert runner.image_size == size and runner.action_horizon == 50 and runner.action_dim == N
            chunk = runner.infer(obs, noise=noise)
            expected = tiny_policy.infer(obs, noise=noise)
            np.testing.assert_allclose(chunk.actions, expected.actions, atol=1e-6)
            assert chunk.timestamp == 12.5 and chunk.actions.dtype == np.float32
            assert chunk.actions.flags.writeable
            assert {"preprocess", "round_trip", "server", "network", "total", "server_prefix"} <= set(
                chunk.timings)
            # Preprocessed here: the server got model-size images and the observation time, not camera frames.
            sent = spy.seen[-1]
            assert sent.timestamp == 12.5 and sent.prompt == obs.prompt
            assert all(im.shape == (size, size, 3) and im.dtype == np.uint8 for im in sent.images.values())
            request = codec.encode(runner.request(obs))
            assert len(request) < 3 * size * size * 3 + 4096 < sum(f.nbytes for f in obs.images.values())
            # Real-Time Chunking guidance reaches Policy.infer(guidance=...) as in-process.
            guidance = ChunkGuidance(expected.actions[5:20] + 0.3, 3, RTCSettings(max_guidance_weight=5.0))
            guided = runner.infer(obs, guidance=guidance, noise=noise)
            in_process = tiny_policy.infer(obs, noise=noise, guidance=guidance)
            np.testing.assert_allclose(guided.actions, in_process.actions, atol=1e-6)
            assert np.abs(in_process.actions - expected.actions).max() > 1e-4
            status = runner.status()
            assert status["remote.connected"] is True and status["remote.reconnects"] == 0
            assert status["remote.last_error"] == "" and status["remote.round_trip_ms"] > 0
            # The metadata is checked against the node's parameters, one line naming the parameter.
            with pytest.raises(ConfigError, match=r"'remote.obs_format': is 'aloha', but the server"):
                RemoteRunner(runner.uri, "aloha").check_config(node_config())
            with pytest.raises(ConfigError, match=r"'joint_names': 7 joints .* a state of 14 dims"):
                runner.check_config(node_config(**{
                    "joint_names": JOINT_NAMES[:7], "limits.lower": [-1.0] * 7, "limits.upper": [1.0] * 7}))
        finally:
            runner.close()


class Failing(Double):
    """Double that raises while `fail` is set."""

    fail = False

    def infer(self, obs, noise=None, guidance=None):
        if self.fail:
            raise ValueError("boom")
        return super().infer(obs, noise, guidance)


def test_a_vla_ros_server_connection_stays_open_after_an_error_frame():
    double = Failing()
    obs = observation(np.random.default_rng(5), keys=("base_0_rgb",))
    with PolicyServer(double, "slots", port=0) as server:
        runner = RemoteRunner(f"ws://127.0.0.1:{server.port}", "slots")
        try:
            assert "error_frames" in runner.metadata  # how vla-ros serve says that it keeps the connection
            ws = runner._ws
            double.fail = True
            with pytest.raises(EngineError, match="with an error: internal error: ValueError: boom$"):
                runner.infer(obs)
            assert runner.connected and runner._ws is ws
            double.fail = False
            assert runner.infer(obs).actions.shape == (4, N)
            assert runner._ws is ws and runner.reconnects == 0
        finally:
            runner.close()


def test_a_server_back_with_another_checkpoint_is_refused_until_reconfigured():
    obs = observation(np.random.default_rng(6), keys=("base_0_rgb",))
    identity = {"checkpoint": "/ckpt/a", "config_name": "pi0_a", "noise_shape": [4, N]}
    server = PolicyServer(Double(), "slots", port=0, metadata=identity).start()
    port = server.port
    runner = RemoteRunner(f"ws://127.0.0.1:{port}", "slots", reconnect_backoff_max=0.1)
    try:
        assert runner.infer(obs).actions.shape == (4, N)
        for key, value in [("checkpoint", "/ckpt/b"), ("config_name", "pi0_b"), ("noise_shape", [4, 32])]:
            server.stop()
            server = PolicyServer(Double(), "slots", port=port, metadata={**identity, key: value}).start()
            for _ in range(2):  # refused at every attempt, not only the first
                time.sleep(0.15)  # the backoff
                changed = f"now serves another policy: {key} {value!r} (was {identity[key]!r})"
                with pytest.raises(EngineError, match=re.escape(changed)):
                    runner.infer(obs)
        server.stop()
        server = PolicyServer(Double(), "slots", port=port, metadata=identity).start()  # the same again
        time.sleep(0.15)
        assert runner.infer(obs).actions.shape == (4, N)
    finally:
        runner.close()
        server.stop()


def test_a_reply_stamped_with_another_observation_time_is_refused():
    obs = observation(np.random.default_rng(7), timestamp=12.5, keys=("base_0_rgb",))
    with ScriptedServer(["stale"]) as server:
        runner = RemoteRunner(server.uri, "slots")
        try:
            stale = r"reply stamped 11.5, not the request's observation time 12.5"
            with pytest.raises(EngineError, match=stale):
                runner.infer(obs)
            assert not runner.connected  # out of step: the next request starts on a new connection
            chunk = runner.infer(obs)
            assert chunk.timestamp == 12.5 and runner.reconnects == 1
            np.testing.assert_allclose(chunk.actions[0], obs.state)
        finally:
            runner.close()


def test_a_request_lost_with_its_connection_before_any_reply_is_sent_once_more():
    obs = observation(np.random.default_rng(8), keys=("base_0_rgb",))
    # The server closes the connection after reading the request: sent again on a new connection.
    with ScriptedServer(["close"]) as server:
        runner = RemoteRunner(server.uri, "slots")
        try:
            chunk = runner.infer(obs)
            np.testing.assert_allclose(chunk.actions[0], obs.state)
            assert len(server.requests) == 2 and runner.reconnects == 1
            assert runner.status()["remote.last_error"] == ""
        finally:
            runner.close()
    # Once only: a second loss fails the request.
    with ScriptedServer(["close", "close"]) as server:
        runner = RemoteRunner(server.uri, "slots")
        try:
            with pytest.raises(EngineError, match="lost the connection to the policy server"):
                runner.infer(obs)
            assert len(server.requests) == 2
            assert runner.infer(obs).actions.shape == (4, N)  # and the next request reconnects
        finally:
            runner.close()
    # Part of a reply came: the server may have answered, so the request is not sent again.
    with ScriptedServer(["fragment"]) as server:
        runner = RemoteRunner(server.uri, "slots")
        try:
            with pytest.raises(EngineError, match="lost the connection to the policy server"):
                runner.infer(obs)
            assert len(server.requests) == 1
        finally:
            runner.close()


def test_close_while_connecting_leaves_no_connection_open_and_sends_nothing():
    obs = observation(np.random.default_rng(9), keys=("base_0_rgb",))
    with ScriptedServer(metadata_delay=1.0) as server:  # a busy server: the metadata comes late
        runner = RemoteRunner(server.uri, "slots", connect=False)
        result = []

        def work():
            try:
                result.append(runner.infer(obs))
            except Exception as exc:  # checked below
                result.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        time.sleep(0.3)  # infer is inside the connection attempt
        runner.close()
        thread.join(10)
        assert isinstance(result[0], EngineError) and "closed" in str(result[0]), result
        assert server.requests == [], "a request went out after close()"
        assert runner._ws is None and not runner.connected
        assert _wait_until(lambda: server.ended == 1, 5.0), "the connection opened during close() stays open"


def test_api_key_comes_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("VLA_ROS_TEST_REMOTE_KEY", "s3cret")
    with PolicyServer(Double(), "slots", port=0, api_key="s3cret") as server:
        uri = f"ws://127.0.0.1:{server.port}"
        runner = RemoteRunner.from_config(RemoteSection(uri=uri, api_key_env="VLA_ROS_TEST_REMOTE_KEY"))
        assert runner.metadata["api_key_required"] is True
        runner.close()
        monkeypatch.setenv("VLA_ROS_TEST_REMOTE_KEY", "wrong")
        with pytest.raises(EngineError, match="HTTP 401.*wrong API key \\(remote.api_key_env\\)"):
            RemoteRunner.from_config(RemoteSection(uri=uri, api_key_env="VLA_ROS_TEST_REMOTE_KEY"))
        with pytest.raises(EngineError, match="HTTP 401"):
            RemoteRunner(uri)
    monkeypatch.delenv("VLA_ROS_TEST_REMOTE_KEY")
    with pytest.raises(ConfigError, match="'remote.api_key_env': environment variable VLA_ROS_TEST_REMOTE_"
                       "KEY is unset"):
        read_api_key("VLA_ROS_TEST_REMOTE_KEY")
    assert read_api_key("") is None


def test_remote_parameters():
    config = node_config(**{"remote.uri": "ws://gpu-box:9000", "remote.obs_format": "aloha"})
    assert config.inference.mode == "remote" and config.remote.uri == "ws://gpu-box:9000"
    assert config.remote.api_key_env == "" and NodeConfig.from_flat(config.to_flat()) == config
    # There is no parameter for the key itself ...
    with pytest.raises(ConfigError, match="'remote.api_key': unknown parameter; did you mean 'remote.api_"):
        node_config(**{"remote.api_key": "sk-live-123"})
    # ... and a key pasted into api_key_env is refused without being echoed.
    with pytest.raises(ConfigError, match="'remote.api_key_env': is not an environment variable") as info:
        node_config(**{"remote.api_key_env": "sk-live-0123456789abcdef"})
    assert "0123456789abcdef" not in str(info.value)
    for name, value, problem in [
        ("remote.uri", "http://host:8000", "expected ws://host:port"),
        ("remote.uri", "ws://user:pw@host:8000", "credentials in the URI are refused"),
        ("remote.obs_format", "alloha", "did you mean 'aloha'"),
        ("remote.request_timeout", 0.0, "number > 0"),
        ("inference.mode", "remot", "did you mean 'remote'"),
    ]:
        with pytest.raises(ConfigError, match=f"'{name}'") as info:
            node_config(**{name: value})
        assert problem in str(info.value) and "\n" not in str(info.value)


# --- against the real openpi-server ----------------------------------------------------


def test_after_an_openpi_error_frame_the_next_request_reconnects_cleanly():
    # openpi's server sends its error frame, then closes (1011): the runner drops that connection at
    # once, so the next request opens a new one instead of meeting the closing one.
    policy = OpenpiPolicy(horizon=10)
    obs = observation(np.random.default_rng(4), timestamp=3.5)
    with OpenpiServer(policy, free_port(), metadata={"action_dim": N}) as server:
        runner = RemoteRunner(f"ws://127.0.0.1:{server.port}", "aloha")
        try:
            for i in range(8):
                policy.fail = True
                with pytest.raises(EngineError, match=r"with an error: ValueError: the policy exploded$"):
                    runner.infer(obs)
                assert not runner.connected
                policy.fail = False
                chunk = runner.infer(obs)
                assert chunk.actions.shape == (10, N) and runner.last_error == ""
                assert runner.reconnects == i + 1
        finally:
            runner.close()


def test_remote_runner_against_openpis_websocket_policy_server():
    policy = OpenpiPolicy(horizon=10)
    rng = np.random.default_rng(1)
    obs = observation(rng, timestamp=7.25)
    with OpenpiServer(policy, free_port(), metadata={"action_horizon": 10, "action_dim": N}) as server:
        runner = RemoteRunner(f"ws://127.0.0.1:{server.port}", "aloha")
        try:
            assert runner.check_config(node_config()) == []
            chunk = runner.infer(obs)
            sent = policy.seen[-1]
            # openpi's ALOHA convention: images map, CHW uint8 (resized with pad to 224 here), state, prompt.
            assert sorted(sent["images"]) == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
            assert all(v.shape == (3, 224, 224) and v.dtype == np.uint8 for v in sent["images"].values())
            np.testing.assert_array_equal(sent["state"], obs.state)
            assert sent["prompt"] == "fold the towel" and sent["timestamp"] == 7.25
            assert chunk.timestamp == 7.25 and chunk.actions.shape == (10, N)
            np.testing.assert_allclose(chunk.actions[3], obs.state + 0.03, atol=1e-6)
            # openpi answers a failure with a traceback and closes: one failed inference, then a reconnect.
            policy.fail = True
            with pytest.raises(EngineError, match=r"with an error: ValueError: the policy exploded$"):
                runner.infer(obs)
            policy.fail = False
            assert runner.infer(obs).actions.shape == (10, N)
            assert runner.reconnects == 1
            with pytest.raises(ConfigError, match="aggregation.mode.*no 'rtc' request key"):
                runner.check_config(node_config(**{"aggregation.mode": "rtc"}))
        finally:
            runner.close()
    with OpenpiServer(OpenpiPolicy(), free_port(), metadata={"action_dim": 7}) as server:
        runner = RemoteRunner(f"ws://127.0.0.1:{server.port}", "aloha")
        with pytest.raises(ConfigError, match=r"^parameter 'joint_names': 14 joints .* 7 action dims"):
            runner.check_config(node_config())
        runner.close()
    with pytest.raises(ConfigError, match="'remote.obs_format': 'droid' requests carry 8 state dims"):
        RemoteRunner("ws://127.0.0.1:1", "droid", connect=False).check_config(node_config())


# --- timeouts and reconnection -----------------------------------------------------------


def test_a_server_that_never_answers_fails_within_the_timeouts():
    double = Double(blocked=True)
    rng = np.random.default_rng(2)
    obs = observation(rng, keys=("base_0_rgb",))
    later = observation(rng, timestamp=13.0, keys=("base_0_rgb",))  # another state: a late reply shows
    assert not np.allclose(later.state, obs.state)
    with PolicyServer(double, "slots", port=0, request_timeout=60) as server:
        runner = RemoteRunner(f"ws://127.0.0.1:{server.port}", "slots", request_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="no actions within remote.request_timeout 0.5 s"):
            runner.infer(obs)
        elapsed = time.monotonic() - t0
        assert 0.5 <= elapsed < 0.5 + 1.0, elapsed
        assert not runner.connected and "request_timeout" in runner.status()["remote.last_error"]
        double.release.set()
        # The timed-out request's late reply must not answer this one.
        chunk = runner.infer(later)
        np.testing.assert_allclose(chunk.actions, later.state[None] + np.arange(4, dtype=np.float32)[:, None])
        assert chunk.timestamp == 13.0 and runner.reconnects == 1
        runner.close()
    # A port that accepts TCP connections and never answers the websocket handshake.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="cannot connect to the policy server .*TimeoutError"):
            RemoteRunner(f"ws://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=0.5)
        assert time.monotonic() - t0 < 0.5 + 1.0


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_reconnects_with_capped_exponential_backoff_when_the_server_returns():
    clock = FakeClock()
    rng = np.random.default_rng(3)
    obs = observation(rng, keys=("base_0_rgb",))
    server = PolicyServer(Double(), "slots", port=0).start()
    port = server.port
    runner = RemoteRunner(f"ws://127.0.0.1:{port}", "slots", reconnect_backoff_max=0.4, clock=clock)
    try:
        assert runner.infer(obs).actions.shape == (4, N)
        server.stop()
        deadline = time.monotonic() + 10
        while runner._ws.state is not WsState.CLOSED and time.monotonic() < deadline:  # not merely CLOSING
            time.sleep(0.01)
        assert runner._ws.state is WsState.CLOSED
        assert not runner.connected and runner.status()["remote.connected"] is False
        waits = []
        for _ in range(5):  # each attempt refused; the wait doubles from 0.1 s up to the cap
            with pytest.raises(EngineError, match="cannot connect.*next attempt in") as info:
                runner.infer(obs)
            waits.append(float(str(info.value).rsplit("next attempt in ", 1)[1].split()[0]))
            with pytest.raises(EngineError, match="^not connected .*next attempt in"):  # no attempt meanwhile
                runner.infer(obs)
            clock.t += waits[-1]
        assert waits == [0.1, 0.2, 0.4, 0.4, 0.4]
        assert runner.failed_attempts == 5 and "cannot connect" in runner.status()["remote.last_error"]
        server = PolicyServer(Double(), "slots", port=port).start()  # back, on the same port
        chunk = runner.infer(obs)
        assert chunk.actions.shape == (4, N) and chunk.timestamp == obs.timestamp
        assert runner.reconnects == 1 and runner.failed_attempts == 0
        assert runner.status() | {"remote.round_trip_ms": 0} == {
            "remote.uri": runner.uri, "remote.connected": True, "remote.reconnects": 1,
            "remote.last_error": "", "remote.round_trip_ms": 0}
        # A server that comes back with another policy (here: another request format) is refused.
        server.stop()
        server = PolicyServer(Double(), "aloha", port=port).start()
        for _ in range(3):  # the first request may still find the old connection closing
            clock.t += 1.0
            with pytest.raises(EngineError) as info:
                runner.infer(obs)
            if "another policy" in str(info.value):
                break
        assert "now serves another policy: obs_format 'aloha' (was 'slots')" in str(info.value)
    finally:
        runner.close()
        server.stop()


# --- the node over DDS, its openpi server killed mid-run -----------------------------------

PREFIX = "/vla_remote"
CAMERAS = {"base_0_rgb": (f"{PREFIX}/cam_high", "rgb8"), "left_wrist_0_rgb": (f"{PREFIX}/cam_left", "rgb8")}
INFERENCE_TIMEOUT = 1.0  # watchdog.inference_timeout: the hold must come within this of the kill

# A small policy object in openpi's interface, served by openpi-server's WebsocketPolicyServer in a
# process of its own (so that it can be killed): a ramp from the measured state (never a hold), after
# checking that the node sent openpi's ALOHA convention with 224 px CHW images.
SERVER_SCRIPT = """
import sys
import numpy as np
from openpi_server import WebsocketPolicyServer

class Policy:
    def infer(self, obs):
        for image in obs["images"].values():
            assert image.shape == (3, 224, 224) and image.dtype == np.uint8, (image.shape, image.dtype)
        state = np.asarray(obs["state"], np.float32)
        assert state.shape == (14,) and obs["prompt"] == "stack the blocks"
        return {"actions": state[None] + 0.002 * np.arange(50, dtype=np.float32)[:, None]}

WebsocketPolicyServer(Policy(), host="127.0.0.1", port=int(sys.argv[1]),
                      metadata={"action_horizon": 50, "action_dim": 14}).serve_forever()
"""


def _start_openpi_process(port, log):
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port)], stdout=log, stderr=log)
    try:
        _wait_listening(port)
    except AssertionError:
        proc.kill()
        raise
    return proc


def test_node_in_remote_mode_holds_when_the_server_dies_and_resumes_when_it_returns(tmp_path):
    _openpi_server()
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = _start_openpi_process(port, log)
    harness = Harness(PREFIX, CAMERAS)
    flat = {
        "control_rate": 50.0,
        "joint_names": JOINT_NAMES,
        "policy.warmup_runs": 1,
        "prompt.topic": f"{PREFIX}/instruction",
        "prompt.default": "stack the blocks",
        "joint_states.topic": f"{PREFIX}/joint_states",
        "cameras.keys": list(CAMERAS),
        "cameras.base_0_rgb.topic": CAMERAS["base_0_rgb"][0],
        "cameras.left_wrist_0_rgb.topic": CAMERAS["left_wrist_0_rgb"][0],
        "output.trajectory_topic": f"{PREFIX}/joint_trajectory",
        "output.position_topic": f"{PREFIX}/commands",
        "limits.lower": [-1.0] * N,
        "limits.upper": [1.0] * N,
        "limits.max_velocity": [1.0],
        "limits.max_distance_from_measured": [10.0],
        "inference.mode": "remote",
        "inference.retry_delay": 0.2,
        "remote.uri": f"ws://127.0.0.1:{port}",
        "remote.obs_format": "aloha",
        "remote.request_timeout": 2.0,
        "remote.reconnect_backoff_max": 0.5,
        "watchdog.inference_timeout": INFERENCE_TIMEOUT,
        "diagnostics.rate": 10.0,
    }
    node = VlaPolicyNode(context=harness.context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in flat.items()])
    executor = make_executor(1, context=harness.context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()

    def moving_since(t0):
        return any(not is_hold(msg) for msg in harness.since(harness.trajectories, t0))

    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE
        t0 = time.monotonic()
        assert harness.wait_for(lambda: moving_since(t0), timeout=10.0), "no trajectories from the server"
        values = harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=5.0)
        assert values["inference.mode"] == "remote" and values["remote.connected"] == "true"
        assert values["remote.reconnects"] == "0"

        server.send_signal(signal.SIGKILL)  # killed mid-run
        server.wait(10)
        killed = time.monotonic()

        def first_hold():
            with harness.lock:
                return next((t for t, msg in harness.trajectories if t >= killed and is_hold(msg)), None)

        assert harness.wait_for(lambda: first_hold() is not None, timeout=5.0), "no hold after the kill"
        hold_after = first_hold() - killed
        assert hold_after < INFERENCE_TIMEOUT, f"first hold {hold_after:.3f} s after the kill"
        values = harness.wait_for_diagnostics(
            lambda v: v["state"] == "HOLDING" and v["remote.connected"] == "false", timeout=5.0)
        assert values is not None, harness.latest_diagnostics()
        assert values["_level"] == 2 and "policy server" in values["hold_reason"], values
        assert values["remote.last_error"], values
        time.sleep(0.5)  # the node keeps holding while the server is down
        down = time.monotonic()
        assert harness.wait_for(lambda: len(harness.since(harness.trajectories, down)) > 5, timeout=2.0)
        assert not moving_since(down), "trajectories moved while the server was down"

        server = _start_openpi_process(port, log)  # back on the same port
        back = time.monotonic()
        assert harness.wait_for(lambda: moving_since(back), timeout=10.0), harness.latest_diagnostics()
        resumed = time.monotonic() - back
        values = harness.wait_for_diagnostics(lambda v: v["state"] == "EXECUTING", timeout=5.0)
        assert values["remote.connected"] == "true" and int(values["remote.reconnects"]) >= 1, values
        print(f"first hold {hold_after * 1e3:.0f} ms after the kill; moving again {resumed:.2f} s after the "
              f"server was back")
        # Without a server, configure fails in one line that names remote.uri.
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        dead = f"ws://127.0.0.1:{free_port()}"
        assert node.set_parameters([Parameter("remote.uri", value=dead)])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.configure_error.startswith(
            f"remote.uri: EngineError: cannot connect to the policy server at {dead}: ConnectionRefusedError"
        ), node.configure_error
        assert "next attempt" not in node.configure_error and "\n" not in node.configure_error
    finally:
        node.release()
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        harness.close()
        server.kill()
        server.wait(10)
        log.close()
