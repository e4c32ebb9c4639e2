"""`vla-ros serve` (vla_ros/remote): openpi's websocket policy protocol, against the real openpi-client.

The server runs in-process on 127.0.0.1 with a free port, in a background thread; clients are
openpi-client's WebsocketClientPolicy (the real package) or a plain websockets client where a test
needs to send what openpi-client would not (garbage, text, oversized frames).
"""

from __future__ import annotations

import argparse
import os
import queue
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from vla_ros.errors import ConfigError
from vla_ros.policy import Policy, PolicyOptions
from vla_ros.remote import codec
from vla_ros.remote.obs_formats import FORMATS, PolicyShape, RequestError, to_request
from vla_ros.remote.server import is_loopback, PolicyServer
from vla_ros.types import ActionChunk, CAMERA_KEYS, ChunkGuidance, RawObservation, RTCSettings
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

# openpi-client 0.1.2 connects without a context manager, which websockets >= 14 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALOHA_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
MAX_MESSAGE = 2**20  # the test server's limit: three 224 px frames (0.45 MB) fit


def _openpi_client():
    return pytest.importorskip(
        "openpi_client.websocket_client_policy",
        reason="openpi-client is a test-only dependency: pip install --no-deps openpi-client==0.1.2 "
        "(requirements.txt)",
    )


def _images(rng, chw=False):
    shape = (3, 224, 224) if chw else (224, 224, 3)
    return {slot: rng.integers(0, 256, shape, dtype=np.uint8) for slot in CAMERA_KEYS}


def _aloha_request(images, state, noise=None, prompt="fold the towel"):
    request = {"images": dict(zip(ALOHA_CAMERAS, images.values())), "state": state, "prompt": prompt}
    if noise is not None:
        request["noise"] = noise
    return request


def _hwc(image):
    return image if image.shape[-1] == 3 else np.ascontiguousarray(image.transpose(1, 2, 0))


@pytest.fixture(scope="module")
def tiny_policy(tiny_checkpoint):
    return Policy.from_checkpoint(tiny_checkpoint, PolicyOptions(device="cpu", precision="fp32"))


@pytest.fixture(scope="module")
def aloha_server(tiny_policy):
    server = PolicyServer(tiny_policy, "aloha", port=0, max_message_bytes=MAX_MESSAGE, request_timeout=120)
    with server:
        yield server


class DoublePolicy:
    """A Policy test double: infer blocks until `release` is set, as a real one blocks while inferring."""

    spec = None

    def __init__(self, blocked=False):
        self.started, self.release = threading.Event(), threading.Event()
        if not blocked:
            self.release.set()
        self.calls = 0

    def infer(self, obs, noise=None, guidance=None):
        self.calls += 1
        self.started.set()
        assert self.release.wait(30), "the test never released the double"
        actions = np.tile(np.asarray(obs.state, np.float32), (4, 1)) + np.arange(4, dtype=np.float32)[:, None]
        return ActionChunk(actions, obs.timestamp, {"total": 0.001})


def _slots_request(state=(1.0, 2.0), prompt="go"):
    return {"images": {"base_0_rgb": np.zeros((8, 8, 3), np.uint8)}, "state": np.asarray(state, np.float32),
            "prompt": prompt}


# --- codec ---------------------------------------------------------------------


def test_codec_is_openpis_wire_format_byte_for_byte():
    msgpack_numpy = pytest.importorskip("openpi_client.msgpack_numpy", reason="openpi-client (test-only)")
    rng = np.random.default_rng(0)
    obj = {
        "image": rng.integers(0, 256, (4, 5, 3), dtype=np.uint8),
        "chw_view": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8).transpose(2, 0, 1),  # not contiguous
        "state": rng.normal(size=7).astype(np.float64),
        "nested": {"b": np.array([True, False]), "i": np.arange(6, dtype=">i4").reshape(2, 3)},
        "scalar": np.float32(1.5),
        "count": np.int64(7),
        "prompt": "stack the cups",
        "list": [1, 2.5, "x"],
    }
    wire = codec.encode(obj)
    assert wire == msgpack_numpy.packb(obj)
    for decoded in (codec.decode(msgpack_numpy.packb(obj)), msgpack_numpy.unpackb(wire)):
        for key in ("image", "chw_view", "state"):
            np.testing.assert_array_equal(decoded[key], obj[key])
            assert decoded[key].dtype == obj[key].dtype and decoded[key].shape == obj[key].shape
        np.testing.assert_array_equal(decoded["nested"]["i"], obj["nested"]["i"])
        assert decoded["scalar"] == np.float32(1.5) and decoded["scalar"].dtype == np.float32
        assert decoded["prompt"] == "stack the cups" and decoded["list"] == [1, 2.5, "x"]


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"\xc1\x00garbage", "not a msgpack message"),
        (msgpack.packb(1) + b"\x01", "extra bytes"),
        (msgpack.packb(msgpack.ExtType(7, b"x")), "ext type 7"),
        (msgpack.packb({"a": {"__ndarray__": True, "data": b"\x00" * 8, "dtype": "|O", "shape": [1]}}),
         "object and void"),
        (msgpack.packb({"a": {"__ndarray__": True, "data": b"\x00" * 8, "dtype": "|V8", "shape": [1]}}),
         "object and void"),
        (msgpack.packb({"a": {"__ndarray__": True, "data": b"\x00" * 8, "dtype": "O,i4", "shape": [1]}}),
         "refused"),
        (msgpack.packb({"a": {"__ndarray__": True, "data": b"\x00" * 7, "dtype": "<f4", "shape": [2]}}),
         "needs 8 bytes"),
        (msgpack.packb({"a": {"__ndarray__": True, "data": b"", "dtype": "nope", "shape": [0]}}),
         "not a numpy dtype"),
        (msgpack.packb({"a": {"__ndarray__": True, "data": b"", "dtype": "<f4", "shape": [-1]}}),
         "sizes >= 0"),
    ],
    ids=["garbage", "two-values", "ext", "object", "void", "record-with-object", "short-data", "bad-dtype",
         "negative-shape"],
)
def test_codec_refuses_in_one_line(data, problem):
    with pytest.raises(codec.CodecError, match=problem) as info:
        codec.decode(data)
    assert "\n" not in str(info.value)


def test_codec_never_sends_objects():
    for bad in (np.array([object()]), np.zeros(2, dtype=[("x", "f4")])):
        with pytest.raises(codec.CodecError, match="refused"):
            codec.encode({"a": bad})


# --- observation formats ---------------------------------------------------------


def test_formats_map_openpi_conventions_onto_slots():
    rng = np.random.default_rng(1)
    images = _images(rng)
    base, left = images["base_0_rgb"], images["left_wrist_0_rgb"]
    joints, gripper = rng.normal(size=7).astype(np.float32), np.float32([0.5])
    droid = FORMATS["droid"].parse({
        "observation/exterior_image_1_left": base, "observation/wrist_image_left": left,
        "observation/joint_position": joints, "observation/gripper_position": gripper, "prompt": "wipe",
    })
    assert list(droid.obs.images) == ["base_0_rgb", "left_wrist_0_rgb"]
    assert droid.obs.images["base_0_rgb"] is base
    np.testing.assert_array_equal(droid.obs.state, np.concatenate([joints, gripper]))
    assert droid.obs.prompt == "wipe" and droid.noise is None and not droid.stamped

    state8 = rng.normal(size=8).astype(np.float32)
    libero = FORMATS["libero"].parse({
        "observation/image": base.transpose(2, 0, 1), "observation/wrist_image": left,  # CHW and HWC
        "observation/state": state8, "prompt": "open", "timestamp": 12.5,
    })
    np.testing.assert_array_equal(libero.obs.images["base_0_rgb"], base)
    np.testing.assert_array_equal(libero.obs.images["left_wrist_0_rgb"], left)
    assert libero.obs.timestamp == 12.5 and libero.stamped

    aloha = FORMATS["aloha"].parse({**_aloha_request({k: v.transpose(2, 0, 1) for k, v in images.items()},
                                                     rng.normal(size=14)),
                                    "images": {"cam_high": base, "cam_low": base}})
    assert list(aloha.obs.images) == ["base_0_rgb"]  # cam_low accepted and dropped; wrists optional

    # to_request is parse's inverse, for every format.
    obs = RawObservation(images, rng.normal(size=14).astype(np.float32), "p", timestamp=3.0)
    for name in ("aloha", "slots"):
        back = FORMATS[name].parse(to_request(obs, name)).obs
        assert back.prompt == "p" and back.timestamp == 3.0
        np.testing.assert_array_equal(back.state, obs.state)
        assert all(back.images[k] is obs.images[k] for k in CAMERA_KEYS)


@pytest.mark.parametrize(
    "change, key, problem",
    [
        (lambda r: r.pop("prompt"), "prompt", "missing"),
        (lambda r: r.update(actions=1), "", "unknown key(s) ['actions']"),
        (lambda r: r["images"].update(cam_top=r["images"]["cam_high"]), "images",
         "unknown camera(s) ['cam_top']"),
        (lambda r: r["images"].pop("cam_high"), "images.cam_high", "missing"),
        (lambda r: r["images"].update(cam_high=np.zeros((224, 224, 4), np.uint8)), "images.cam_high",
         "(224, 224, 4)"),
        (lambda r: r["images"].update(cam_high=np.zeros((224, 224), np.uint8)), "images.cam_high", "shape"),
        (lambda r: r["images"].update(cam_high=np.zeros((8, 8, 3), np.float32)), "images.cam_high",
         "float image"),
        (lambda r: r["state"].__setitem__(3, np.nan), "state", "NaN"),
        (lambda r: r.update(state=np.zeros(7, np.float32)), "state", "7 entries; expected 14"),
        (lambda r: r.update(noise=np.zeros((50, 14), np.float32)), "noise", "expected (50, 32)"),
        (lambda r: r.update(timestamp="now"), "timestamp", "finite seconds"),
        (lambda r: r.update(rtc={"previous": np.zeros((5, 14), np.float32)}), "rtc.delay", "missing"),
        (lambda r: r.update(rtc={"previous": np.zeros((5, 14)), "delay": 1, "schedule": "x"}),
         "rtc.schedule", "unknown value"),
    ],
)
def test_format_errors_name_the_key(change, key, problem):
    request = _aloha_request(_images(np.random.default_rng(2)), np.zeros(14, np.float32))
    change(request)
    shape = PolicyShape(state_dim=14, noise_shape=(50, 32), camera_slots=CAMERA_KEYS)
    with pytest.raises(RequestError) as info:
        FORMATS["aloha"].parse(request, shape)
    assert info.value.key == key and problem in str(info.value)
    if key:
        assert str(info.value).startswith(f"'{key}':")


def test_format_must_fit_the_checkpoint():
    with pytest.raises(ConfigError, match="droid requests carry 8 state dims.*norm stats have 14"):
        FORMATS["droid"].check_policy(PolicyShape(state_dim=14))
    with pytest.raises(ConfigError, match="slots the checkpoint lacks"):
        FORMATS["libero"].check_policy(PolicyShape(state_dim=8, camera_slots=("base_0_rgb",)))


# --- the server against openpi-client ---------------------------------------------


def test_openpi_client_gets_metadata_and_in_process_actions(aloha_server, tiny_policy):
    client_module = _openpi_client()
    client = client_module.WebsocketClientPolicy("127.0.0.1", aloha_server.port)
    meta = client.get_server_metadata()
    spec = tiny_policy.spec
    assert meta["family"] == "pi0" and meta["obs_format"] == "aloha"
    assert meta["action_horizon"] == spec.action_horizon == 50 and meta["action_dim"] == 14
    assert meta["noise_shape"] == [50, 32] and meta["max_message_bytes"] == MAX_MESSAGE
    assert meta["camera_slots"] == dict(zip(ALOHA_CAMERAS, CAMERA_KEYS))

    rng = np.random.default_rng(3)
    images = _images(rng, chw=True)  # openpi's ALOHA examples send CHW
    state = rng.normal(size=14).astype(np.float32)
    noise = rng.standard_normal((50, 32)).astype(np.float32)
    reply = client.infer({**_aloha_request(images, state, noise), "timestamp": 42.25})
    expected = tiny_policy.infer(
        RawObservation({k: _hwc(v) for k, v in images.items()}, state, "fold the towel"), noise=noise
    ).actions
    assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (50, 14)
    np.testing.assert_allclose(reply["actions"], expected, atol=1e-6)
    assert reply["timestamp"] == 42.25
    assert {"infer_ms", "queue_ms", "decode_ms", "total_ms"} <= set(reply["server_timing"])
    assert {"prefix_ms", "suffix_ms", "total_ms", "infer_ms"} <= set(reply["policy_timing"])
    # Other noise, other actions: the server really used the request's noise.
    other = client.infer(_aloha_request(images, state, noise[::-1].copy()))
    assert np.abs(other["actions"] - expected).max() > 1e-4
    assert "timestamp" not in other and "prev_total_ms" in other["server_timing"]
    # The rtc extension reaches Policy.infer(guidance=...) as in-process.
    rtc = {"previous": expected[:8] + 0.5, "delay": 2, "max_guidance_weight": 5.0}
    guided = client.infer({**_aloha_request(images, state, noise), "rtc": rtc})
    settings = RTCSettings(max_guidance_weight=5.0)
    in_process = tiny_policy.infer(
        RawObservation({k: _hwc(v) for k, v in images.items()}, state, "fold the towel"), noise=noise,
        guidance=ChunkGuidance(expected[:8] + 0.5, 2, settings),
    ).actions
    np.testing.assert_allclose(guided["actions"], in_process, atol=1e-6)
    assert np.abs(in_process - expected).max() > 1e-4


def test_malformed_requests_get_one_error_frame_and_the_connection_stays(aloha_server):
    rng = np.random.default_rng(4)
    images, state = _images(rng), rng.normal(size=14).astype(np.float32)
    good = codec.encode(_aloha_request(images, state))
    nan_state = state.copy()
    nan_state[2] = np.nan
    big = codec.encode({**_aloha_request(images, state), "pad": b"\x00" * MAX_MESSAGE})
    cases = [
        (b"\x93\xc1 not msgpack at all", "not a msgpack message"),
        ("a text frame", "text frame"),
        (codec.encode({"image": images["base_0_rgb"], "state": state, "prompt": "x"}),
         "unknown key(s) ['image']"),
        (codec.encode(_aloha_request({**images, "base_0_rgb": images["base_0_rgb"][:, :, :2]}, state)),
         "'images.cam_high': shape (224, 224, 2)"),
        (codec.encode(_aloha_request(images, nan_state)),
         "'state': state has NaN/inf in 1 of 14 entries: [2]=nan"),
        (big, f"message too large: {len(big)} bytes, the limit is {MAX_MESSAGE}"),
    ]
    with connect(f"ws://127.0.0.1:{aloha_server.port}", compression=None, max_size=None) as bad, \
            connect(f"ws://127.0.0.1:{aloha_server.port}", compression=None, max_size=None) as other:
        assert codec.decode(bad.recv(timeout=10))["obs_format"] == "aloha"
        codec.decode(other.recv(timeout=10))
        for i, (message, problem) in enumerate(cases):
            bad.send(message)
            answer = bad.recv(timeout=30)
            assert isinstance(answer, str), f"case {i}: expected an error frame"
            assert answer.startswith("bad request: ") and problem in answer, answer
            assert "\n" not in answer and "Traceback" not in answer
            if i == 2:  # another client is served meanwhile
                other.send(good)
                assert codec.decode(other.recv(timeout=60))["actions"].shape == (50, 14)
        bad.send(good)  # the same connection still serves
        assert codec.decode(bad.recv(timeout=60))["actions"].shape == (50, 14)
        # Over twice the limit the websocket layer refuses the frame unread: close 1009, as documented.
        bad.send(b"\x00" * (2 * MAX_MESSAGE + 1))
        with pytest.raises(ConnectionClosed) as info:
            bad.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        # ... and only that connection: the other one still works.
        other.send(good)
        assert isinstance(other.recv(timeout=60), bytes)


def test_healthz_answers_200(aloha_server):
    with urllib.request.urlopen(f"http://127.0.0.1:{aloha_server.port}/healthz", timeout=10) as response:
        assert response.status == 200 and response.read() == b"OK\n"


# --- API key, concurrency, timeouts (test doubles) ----------------------------------


def test_api_key_wrong_or_missing_is_refused(monkeypatch):
    client_module = _openpi_client()
    with PolicyServer(DoublePolicy(), "slots", port=0, api_key="s3cret") as server:
        for key in (None, "wrong", "s3cret "[:-2]):
            with pytest.raises(InvalidStatus) as info:
                client_module.WebsocketClientPolicy("127.0.0.1", server.port, api_key=key)
            assert info.value.response.status_code == 401
            assert b"Api-Key" in info.value.response.body
        client = client_module.WebsocketClientPolicy("127.0.0.1", server.port, api_key="s3cret")
        assert client.get_server_metadata()["api_key_required"] is True
        np.testing.assert_array_equal(client.infer(_slots_request())["actions"][:, 0], [1, 2, 3, 4])
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
            assert response.status == 200  # liveness needs no key


def test_network_io_does_not_wait_for_inference_and_timeouts_answer():
    policy = DoublePolicy(blocked=True)
    with PolicyServer(policy, "slots", port=0, request_timeout=1.0) as server:
        uri = f"ws://127.0.0.1:{server.port}"
        with connect(uri, compression=None) as first:
            codec.decode(first.recv(timeout=10))
            first.send(codec.encode(_slots_request()))
            assert policy.started.wait(10)  # the first client's inference is running (blocked)
            # Meanwhile: another client's handshake and metadata, and /healthz, answer at once.
            t0 = time.perf_counter()
            with connect(uri, compression=None, open_timeout=5) as second:
                assert codec.decode(second.recv(timeout=5))["server"] == "vla_ros"
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
                    assert response.status == 200
                assert not policy.release.is_set()  # all of it while the inference was still blocked
                assert time.perf_counter() - t0 < 5
                # The first request passes its deadline: an error frame, and the connection stays.
                answer = first.recv(timeout=10)
                assert isinstance(answer, str) and answer.startswith("timeout: no actions within 1 s"), answer
                second.send(codec.encode(_slots_request((5.0,))))
                policy.release.set()
                reply = codec.decode(second.recv(timeout=10))
                np.testing.assert_array_equal(reply["actions"][:, 0], [5, 6, 7, 8])
            first.send(codec.encode(_slots_request((7.0,))))
            reply = codec.decode(first.recv(timeout=10))
            np.testing.assert_array_equal(reply["actions"][:, 0], [7, 8, 9, 10])


class SlowPolicy:
    """A Policy test double that waits for `gate`, then takes `seconds`; counts its calls."""

    spec = None

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, 0
        self.started, self.gate = threading.Event(), threading.Event()

    def infer(self, obs, noise=None, guidance=None):
        self.calls += 1
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        time.sleep(self.seconds)
        return ActionChunk(np.zeros((4, len(obs.state)), np.float32), obs.timestamp, {"total": self.seconds})


def _wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_requests_of_clients_that_have_gone_are_dropped():
    policy = SlowPolicy(0.2)
    request = codec.encode(_slots_request())
    with PolicyServer(policy, "slots", port=0, request_timeout=60) as server:
        uri = f"ws://127.0.0.1:{server.port}"
        with connect(uri, compression=None) as ws:  # its request runs (held at the gate), then it goes
            ws.recv(timeout=10)
            ws.send(request)
            assert policy.started.wait(10)
        for _ in range(20):  # 20 clients leave a request each and go
            ws = connect(uri, compression=None)
            ws.recv(timeout=10)
            ws.send(request)
            ws.close()
        _wait_until(lambda: server.connections == 0, 5.0)
        policy.gate.set()
        with connect(uri, compression=None) as ws:
            ws.recv(timeout=10)
            t0 = time.perf_counter()
            ws.send(request)
            reply = ws.recv(timeout=60)
            latency = time.perf_counter() - t0
        assert not isinstance(reply, str), reply
        # The request already running finished (and was discarded); the 20 queued ones never ran.
        assert policy.calls == 2, f"{policy.calls - 2} abandoned request(s) ran"
        assert latency < 1.5, f"{latency:.2f} s behind abandoned requests (one inference is 0.2 s)"
        assert _wait_until(lambda: server.connections == 0, 5.0), server.connections


def test_healthz_stays_fast_while_clients_send_messages_costly_to_decode():
    count = 2**20 - 16
    # 1 MiB of msgpack: an array of a million empty maps, about 0.4 s to decode.
    bomb = b"\xdd" + struct.pack(">I", count) + b"\x80" * count
    with PolicyServer(DoublePolicy(), "slots", port=0) as server:
        uri = f"ws://127.0.0.1:{server.port}"
        stop, answers = threading.Event(), []

        def flood():
            with connect(uri, compression=None) as ws:
                ws.recv(timeout=10)
                while not stop.is_set():
                    ws.send(bomb)
                    answers.append(ws.recv(timeout=60))

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            assert _wait_until(lambda: len(answers) >= 4, 30.0)
            latencies = []
            for _ in range(10):
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=30) as reply:
                    assert reply.status == 200
                latencies.append(time.perf_counter() - t0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert max(latencies) < 0.5, [f"{t:.3f}" for t in latencies]
        assert all(isinstance(a, str) and a.startswith("bad request: ") for a in answers), answers[0]


# --- binding: loopback unless told -------------------------------------------------


def test_default_bind_address_is_loopback(tiny_checkpoint, capsys):
    from vla_ros.tools import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert parser.parse_args(["--checkpoint", "x"]).host == "127.0.0.1"
    with PolicyServer(DoublePolicy(), port=0) as server:
        assert server.host == "127.0.0.1"
        assert [address[0] for address in server.bound] == ["127.0.0.1"]
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("::")

    args = parser.parse_args(["--checkpoint", str(tiny_checkpoint), "--port", "0", "--device", "cpu"])
    assert "warning" not in capsys.readouterr().err
    server = serve.build_server(args)
    assert server.host == "127.0.0.1" and "beyond this machine" not in capsys.readouterr().err
    serve.build_server(parser.parse_args(["--checkpoint", str(tiny_checkpoint), "--host", "0.0.0.0"]))
    assert "--host '0.0.0.0' listens beyond this machine" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="VLA_ROS_TEST_NO_SUCH_KEY is unset"):
        serve.build_server(
            parser.parse_args(["--checkpoint", "x", "--api-key-env", "VLA_ROS_TEST_NO_SUCH_KEY"]))
    with pytest.raises(ConfigError, match="droid requests carry 8 state dims"):
        serve.build_server(parser.parse_args(["--checkpoint", str(tiny_checkpoint), "--obs-format", "droid"]))


def test_vla_ros_serve_command(tiny_checkpoint, tmp_path):
    """The real entry point: binds 127.0.0.1, prints where, answers openpi-client."""
    client_module = _openpi_client()
    env = {**os.environ, "VLA_ROS_TEST_KEY": "k-123"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla_ros", "serve", "--checkpoint", str(tiny_checkpoint), "--port", "0",
         "--device", "cpu", "--obs-format", "aloha", "--api-key-env", "VLA_ROS_TEST_KEY"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=(tmp_path / "stderr").open("w"), text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            pytest.fail("vla-ros serve printed nothing in 120 s")
        assert " on ws://127.0.0.1:" in line and "(API key required)" in line, (
            line, proc.poll(), (tmp_path / "stderr").read_text())
        port = int(line.split(" on ws://127.0.0.1:")[1].split()[0])
        client = client_module.WebsocketClientPolicy("127.0.0.1", port, api_key="k-123")
        assert client.get_server_metadata()["obs_format"] == "aloha"
        rng = np.random.default_rng(5)
        reply = client.infer(_aloha_request(_images(rng), rng.uniform(0.1, 0.5, 14).astype(np.float32)))
        assert reply["actions"].shape == (50, 14) and np.isfinite(reply["actions"]).all()
        with pytest.raises(RuntimeError, match="bad request: 'state': 3 entries; expected 14"):
            client.infer(_aloha_request(_images(rng), np.zeros(3, np.float32)))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert info.value.code == 401  # no key, no websocket
    finally:
        proc.terminate()
        proc.wait(30)
