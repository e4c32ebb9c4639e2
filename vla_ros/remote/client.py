"""RemoteRunner: the node as a client of a policy server speaking openpi's websocket protocol.

`inference.mode: remote` (docs/remote.md, "The node as a client"). The runner has the interface
of the in-process runners (vla_ros/ros/inference_worker.py): `infer(obs, guidance=None) -> ActionChunk`
and `close()`, so the inference worker, the controller's latency compensation and every aggregation
mode work on it exactly as in-process. Per request it

1. preprocesses locally: every camera frame is resized with pad to the model's image size (the
   server's metadata `image_size`, else 224) as uint8, so a request carries three 224 px images
   (0.45 MB), not camera frames (three 1080p frames are 19 MB); the ALOHA format sends them CHW,
   as openpi's ALOHA clients do (openpi's AlohaInputs transposes unconditionally), the others HWC;
2. sends the request in the server's format (obs_formats.to_request) with the observation time as
   `timestamp` and, with aggregation.mode rtc, the guidance as `rtc` (vla_ros's extensions);
3. waits at most `request_timeout` for the reply and returns its actions stamped with the
   observation time, whatever the server echoes.

Failures raise EngineError, which the inference worker reports as a failed inference: the
controller holds, diagnostics say why, and the next request reconnects. A request that timed out
closes the connection (a late reply would otherwise answer the next request), as does a reply that
echoes another `timestamp` than the request's. A connection that closes before any part of a reply
came gets the request once more on a new connection. After an error frame the connection is kept
only where the server's metadata has `error_frames` (vla-ros serve); openpi's server closes it, so
it is dropped at once. A reconnection to a server whose metadata names another policy
(IDENTITY_KEYS: family, checkpoint, config_name, dims, noise shape, ...) is refused. Reconnection waits
0.1 s after the first failed attempt, doubling up to `reconnect_backoff_max`; while it waits,
`infer` fails at once instead of sleeping, so the worker's next try carries a fresh observation.

Security: the API key is read from the environment variable named by remote.api_key_env (never a
parameter) and sent as `Authorization: Api-Key <key>`; no proxy is used (the URI is what the node
connects to); replies are msgpack with numpy arrays (codec.py), never pickle.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
import time
from typing import Any, Callable

import numpy as np

from vla_ros.errors import ActionDecodeError, ConfigError, EngineError
from vla_ros.remote import codec
from vla_ros.remote.obs_formats import get_format, ObsFormat, to_request
from vla_ros.types import ActionChunk, ChunkGuidance, RawObservation

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224
BACKOFF_INITIAL_S = 0.1
# Replies are a chunk (50 x 32 float32 is 6.4 kB) and timings; the metadata a few kB.
MAX_REPLY_BYTES = 16 * 2**20
# Metadata keys that identify the policy: a reconnection to a server whose values differ is refused
# (`vla-ros serve` sends them all; openpi's servers whichever their policy's metadata has). Not
# compared: what may differ between connections to the same policy (version, replicas, ray_replica,
# timeouts, limits).
IDENTITY_KEYS = (
    "family", "config_name", "checkpoint", "untrained", "action_horizon", "action_dim", "model_action_dim",
    "state_dim", "noise_shape", "image_size", "obs_format", "camera_slots",
)
# The metadata key by which a server says that its connections stay open after an error frame
# (`vla-ros serve`'s); openpi's server closes the connection after its error frame.
ERROR_FRAMES_KEY = "error_frames"
# An echoed `timestamp` further than this from the request's observation time answers another request.
TIMESTAMP_TOLERANCE_S = 1e-6
# Formats whose images go out CHW (openpi's ALOHA clients send (3, H, W); AlohaInputs transposes).
CHW_FORMATS = frozenset({"aloha"})


def read_api_key(env_name: str) -> str | None:
    """The API key in environment variable `env_name` ('' : no key); ConfigError naming remote.api_key_env."""
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if key is None:
        raise ConfigError(
            "remote.api_key_env", f"environment variable {env_name} is unset; export the server's API key "
            "in it before starting the node"
        )
    if not key.strip():
        raise ConfigError("remote.api_key_env", f"environment variable {env_name} is empty")
    return key


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_line(text: str) -> str:
    """The line of an error frame that says what failed (openpi sends a traceback: its last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(empty error frame)"


def _as_int(value: Any) -> int | None:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return None


def _reply_began(ws: Any) -> bool:
    """Whether any part of a reply reached a connection that then closed (then a request is not resent).

    A complete message would have been returned by recv(); what may be left is the first fragments of a
    fragmented message (the protocol's current_size) or part of a frame (bytes in its reader). Where
    the connection object does not show these, it answers True (never resend without knowing).
    """
    protocol = getattr(ws, "protocol", None)
    if protocol is None or not hasattr(protocol, "current_size"):
        return True
    if protocol.current_size is not None:
        return True
    return bool(getattr(getattr(protocol, "reader", None), "buffer", b""))


def _connect_kwargs() -> dict[str, Any]:
    """Options of websockets' sync connect() that only newer releases know."""
    from websockets.sync.client import connect

    known = inspect.signature(connect).parameters
    kwargs: dict[str, Any] = {}
    if "legacy" in known:  # >= 17.1 deprecates connect() outside a `with` unless legacy=True says it is meant
        kwargs["legacy"] = True
    if "proxy" in known:  # >= 15 would go through *_proxy environment variables: connect to the URI itself
        kwargs["proxy"] = None
    return kwargs


class RemoteRunner:
    """A policy server behind the runner interface (`infer(obs, guidance=None)`, `close()`).

    uri: ws://host:port (or wss://). obs_format: the server's request convention (obs_formats).
    api_key: sent as `Authorization: Api-Key <key>` (read it with `read_api_key`; None: no header).
    image_resize: resize-with-pad method of the local preprocessing; "auto": the server's metadata
        `image_resize`, else "openpi" (Pillow, openpi's and the server's own).
    clock: monotonic seconds, for the reconnection backoff (tests pass a fake).
    connect: open the connection and read the metadata now (raises EngineError if that fails).

    Thread use: `infer` from one thread at a time (the worker); `status` and `close` from any.
    """

    mode = "remote"

    def __init__(
        self,
        uri: str,
        obs_format: str | ObsFormat = "slots",
        *,
        api_key: str | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        reconnect_backoff_max: float = 5.0,
        image_resize: str = "auto",
        clock: Callable[[], float] = time.monotonic,
        connect: bool = True,
    ):
        try:
            self.format = get_format(obs_format) if isinstance(obs_format, str) else obs_format
        except ConfigError as exc:
            raise ConfigError("remote.obs_format", str(exc).split(": ", 1)[-1]) from None
        self.uri = uri
        self.connect_timeout = float(connect_timeout)
        self.request_timeout = float(request_timeout)
        self.reconnect_backoff_max = float(reconnect_backoff_max)
        self._api_key = api_key
        self._image_resize = image_resize
        self._clock = clock
        self._chw = self.format.name in CHW_FORMATS
        self.spec = None  # no local PolicySpec: check_config checks the server's metadata instead
        self.metadata: dict[str, Any] = {}
        self.image_size = DEFAULT_IMAGE_SIZE
        self.action_horizon: int | None = None
        self.action_dim: int | None = None
        self.description: dict[str, str] = {"uri": uri, "obs_format": self.format.name}
        # status
        self.connects = 0
        self.reconnects = 0
        self.failed_attempts = 0  # consecutive failed connection attempts
        self.last_error = ""
        self.round_trip_s: float | None = None
        self._ws: Any = None
        self._next_attempt = -float("inf")
        self._closed = False
        self._lock = threading.Lock()  # one request (and connection attempt) at a time
        # _ws and _closed together: close() takes only this one, never waiting for a request.
        self._ws_lock = threading.Lock()
        if connect:
            with self._lock:
                try:
                    self._ensure_connected()
                except EngineError:  # at configure: why, without "next attempt in"
                    raise EngineError(self.last_error) from None

    @classmethod
    def from_config(cls, remote: Any, image_resize: str = "auto", connect: bool = True) -> "RemoteRunner":
        """From a RemoteSection (NodeConfig.remote); the API key from its environment variable."""
        return cls(
            remote.uri,
            remote.obs_format,
            api_key=read_api_key(remote.api_key_env),
            connect_timeout=remote.connect_timeout,
            request_timeout=remote.request_timeout,
            reconnect_backoff_max=remote.reconnect_backoff_max,
            image_resize=image_resize,
            connect=connect,
        )

    @property
    def image_resize(self) -> str:
        """The resize-with-pad method of the local preprocessing ("auto" resolved once connected)."""
        return self._image_resize

    # --- connection ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (a server that went away shows at once)."""
        from websockets.protocol import State

        ws = self._ws
        return ws is not None and ws.state is State.OPEN

    def _open(self) -> tuple[Any, dict]:
        """A new connection and the server's metadata (EngineError: why not)."""
        from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self._api_key}"} if self._api_key else None
        try:
            ws = connect(
                self.uri,
                open_timeout=self.connect_timeout,
                additional_headers=headers,
                compression=None,
                max_size=MAX_REPLY_BYTES,
                close_timeout=1.0,
                **_connect_kwargs(),
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise EngineError(
                    f"the policy server at {self.uri} refused the connection (HTTP {status}): missing or "
                    "wrong API key (remote.api_key_env)"
                ) from None
            raise EngineError(
                f"the policy server at {self.uri} refused the connection (HTTP {status})") from None
        except InvalidURI as exc:
            raise ConfigError("remote.uri", str(exc)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise EngineError(f"cannot connect to the policy server at {self.uri}: {_reason(exc)}") from None
        try:
            first = ws.recv(timeout=self.connect_timeout)
            if isinstance(first, str):
                raise EngineError(f"the policy server at {self.uri} sent text instead of its metadata: "
                                  f"{_error_line(first)}")
            metadata = codec.decode(first)
            if not isinstance(metadata, dict):
                raise EngineError(f"the policy server at {self.uri} sent metadata that is not a map "
                                  f"({type(metadata).__name__})")
        except TimeoutError:
            ws.close()
            raise EngineError(
                f"the policy server at {self.uri} sent no metadata within remote.connect_timeout "
                f"{self.connect_timeout:g} s"
            ) from None
        except Exception as exc:
            ws.close()
            if isinstance(exc, EngineError):
                raise
            raise EngineError(
                f"reading the metadata of the policy server at {self.uri}: {_reason(exc)}") from None
        return ws, {str(k): v for k, v in metadata.items()}

    def _adopt(self, metadata: dict) -> None:
        """Take the first connection's metadata; refuse a server that changed policy since."""
        if self.connects == 0:
            self.metadata = metadata
            size = _as_int(metadata.get("image_size"))
            self.image_size = size if size and size > 0 else DEFAULT_IMAGE_SIZE
            self.action_horizon = _as_int(metadata.get("action_horizon"))
            self.action_dim = _as_int(metadata.get("action_dim"))
            method = self._image_resize
            if method == "auto":
                from vla_ros.observation.image import RESIZE_METHODS

                method = metadata.get("image_resize")
                method = method if method in RESIZE_METHODS else "openpi"
            self._image_resize = method
            for key in ("server", "family", "config_name", "action_horizon", "action_dim", "image_size"):
                if key in metadata:
                    self.description[key] = str(metadata[key])
            self.description["image_resize"] = method
            return
        changed = [
            f"{key} {metadata.get(key)!r} (was {self.metadata.get(key)!r})"
            for key in IDENTITY_KEYS
            if metadata.get(key) != self.metadata.get(key)
        ]
        if changed:
            raise EngineError(
                f"the policy server at {self.uri} now serves another policy: {', '.join(changed)}; "
                "reconfigure the node to use it"
            )

    def _ensure_connected(self) -> Any:
        """Under the lock: the open connection, reconnecting when the backoff allows (EngineError)."""
        if self._closed:
            raise EngineError("the remote runner is closed")
        ws, lost = self._ws, ""
        if ws is not None:
            from websockets.protocol import State

            if ws.state is State.OPEN:
                return ws
            closed = None
            if ws.state is State.CLOSED:  # close_exc asserts that (a CLOSING connection has none yet)
                try:
                    closed = ws.close_exc  # ConnectionClosed: the close code and reason, if any
                except (AssertionError, AttributeError):
                    closed = None
            why = _reason(closed) if closed is not None else "closed by the server"
            lost = f"lost the connection ({why}); "
            self._drop(lost[:-2])
        now = self._clock()
        if now < self._next_attempt:
            raise EngineError(
                f"not connected to the policy server at {self.uri} ({self.last_error}); next attempt in "
                f"{self._next_attempt - now:.2f} s"
            )
        try:
            ws, metadata = self._open()
            try:
                self._adopt(metadata)
            except EngineError:
                ws.close()
                raise
        except EngineError as exc:
            self.failed_attempts += 1
            delay = min(self.reconnect_backoff_max, BACKOFF_INITIAL_S * 2.0 ** (self.failed_attempts - 1))
            self._next_attempt = self._clock() + delay
            self.last_error = f"{lost}{exc}"
            raise EngineError(f"{lost}{exc}; next attempt in {delay:.2f} s") from None
        with self._ws_lock:
            closed = self._closed
            if not closed:
                self._ws = ws
        if closed:  # close() came while connecting: nothing may stay open, nothing be sent
            try:
                ws.close()
            except Exception:
                pass
            raise EngineError("the remote runner was closed while connecting")
        if self.connects:
            self.reconnects += 1
            log.info("reconnected to the policy server at %s", self.uri)
        self.connects += 1
        self.failed_attempts = 0
        self._next_attempt = -float("inf")
        return ws

    def _drop(self, reason: str) -> None:
        """Forget the connection (closing it); the next request reconnects at once."""
        with self._ws_lock:
            ws, self._ws = self._ws, None
        self.last_error = reason
        if ws is not None:
            try:
                ws.close()
            except Exception:  # already broken: nothing more to release
                pass

    # --- inference -----------------------------------------------------------

    def request(
        self, obs: RawObservation, guidance: ChunkGuidance | None = None, noise: np.ndarray | None = None
    ) -> dict:
        """The request dict for `obs`: images resized with pad to the model's size, in the server's format."""
        from vla_ros.observation.image import resize_with_pad

        size = self.image_size
        images = {}
        for key, frame in obs.images.items():
            boxed = resize_with_pad(np.asarray(frame), size, size, self._image_resize)
            images[key] = np.ascontiguousarray(boxed.transpose(2, 0, 1)) if self._chw else boxed
        prepared = RawObservation(images=images, state=obs.state, prompt=obs.prompt, timestamp=obs.timestamp)
        request = to_request(prepared, self.format, noise)
        if guidance is not None:
            request["rtc"] = {
                "previous": np.asarray(guidance.previous, dtype=np.float32),
                "delay": int(guidance.delay),
                **dataclasses.asdict(guidance.settings),
            }
        return request

    def infer(
        self, obs: RawObservation, guidance: ChunkGuidance | None = None, noise: np.ndarray | None = None
    ) -> ActionChunk:
        """One chunk from the server, stamped with `obs.timestamp` (EngineError when none came).

        noise: the initial flow-matching noise (action_horizon, model_dim), sent as vla_ros's `noise`
        extension (tests and benchmarks compare with in-process inference).
        """
        with self._lock:
            ws = self._ensure_connected()  # first: the image size is the connected server's
            start = time.perf_counter()
            try:
                message = codec.encode(self.request(obs, guidance, noise))
            except Exception as exc:
                raise EngineError(f"cannot build the request: {_reason(exc)}") from None
            reply, prepared = self._exchange(ws, message)
            received = time.perf_counter()
            self.round_trip_s = received - prepared
            if isinstance(reply, str):
                line = _error_line(reply)
                if ERROR_FRAMES_KEY not in self.metadata:
                    # openpi's server closes the connection after its error frame: drop it now, so that
                    # the next request opens a new one instead of finding this one closing.
                    self._drop(f"server error: {line}")
                self.last_error = f"server error: {line}"
                decode = f"inference failed: {ActionDecodeError.__name__}: "
                if line.startswith(decode):  # the model ran and wrote no action: the same error as in-process
                    raise ActionDecodeError(line[len(decode):])
                raise EngineError(f"the policy server answered with an error: {line}")
            try:
                answer = codec.decode(reply)
            except codec.CodecError as exc:
                self.last_error = f"bad reply: {exc}"
                raise EngineError(f"the policy server's reply cannot be decoded: {exc}") from None
            chunk = self._chunk(answer, obs, start, prepared, received)
            self.last_error = ""
            return chunk

    def _exchange(self, ws: Any, message: bytes) -> tuple[bytes | str, float]:
        """Under the lock: send `message`, return the reply and when it was sent (EngineError: none came).

        A connection that closes before any part of a reply arrived (the server restarted, or closed an
        idle connection) gets the request once more on a new connection: the protocol has one request in
        flight and inference has no side effects, so at worst the server computes it twice.
        """
        from websockets.exceptions import ConnectionClosed

        for attempt in (1, 2):
            if self._closed:  # close() came meanwhile: send nothing
                raise EngineError("the remote runner is closed")
            prepared = time.perf_counter()
            try:
                ws.send(message)
                return ws.recv(timeout=self.request_timeout), prepared
            except TimeoutError:
                # A late reply would answer the next request: start over on a new connection.
                self._drop(f"no reply within remote.request_timeout {self.request_timeout:g} s")
                raise EngineError(
                    f"the policy server at {self.uri} sent no actions within remote.request_timeout "
                    f"{self.request_timeout:g} s; reconnecting"
                ) from None
            except (ConnectionClosed, OSError) as exc:
                lost = f"connection lost ({_reason(exc)})"
                began = _reply_began(ws)
                self._drop(lost)
                if attempt == 2 or began or self._closed:
                    raise EngineError(
                        f"lost the connection to the policy server at {self.uri}: {_reason(exc)}") from None
                log.info("the connection to the policy server at %s closed before a reply (%s); sending the "
                         "request again on a new connection", self.uri, _reason(exc))
            try:
                ws = self._ensure_connected()
            except EngineError as exc:
                self.last_error = f"{lost}; {self.last_error}"
                raise EngineError(f"lost the connection to the policy server at {self.uri} before a reply "
                                  f"({lost}); {exc}") from None
        raise AssertionError("unreachable")

    def _chunk(
        self, answer: Any, obs: RawObservation, start: float, prepared: float, received: float
    ) -> ActionChunk:
        if not isinstance(answer, dict) or "actions" not in answer:
            keys = sorted(map(str, answer)) if isinstance(answer, dict) else type(answer).__name__
            self.last_error = "reply without actions"
            raise EngineError(f"the policy server's reply has no 'actions' (got {keys})")
        actions = answer["actions"]
        if not isinstance(actions, np.ndarray) or actions.ndim != 2 or not (
            np.issubdtype(actions.dtype, np.floating) or np.issubdtype(actions.dtype, np.integer)
        ):
            what = (f"{actions.dtype} {actions.shape}" if isinstance(actions, np.ndarray)
                    else type(actions).__name__)
            self.last_error = "bad actions"
            raise EngineError(f"the policy server's 'actions' must be a 2-D number array, got {what}")
        expected = self.action_dim
        if expected is not None and actions.shape[1] != expected:
            self.last_error = "bad actions"
            raise EngineError(
                f"the policy server returned actions of shape {actions.shape}; its metadata says {expected} "
                "action dims"
            )
        echoed = answer.get("timestamp")
        if obs.timestamp and echoed is not None:  # the request carried the observation time (to_request)
            number = isinstance(echoed, (int, float, np.number)) and not isinstance(echoed, bool)
            if not number or not abs(float(echoed) - float(obs.timestamp)) <= TIMESTAMP_TOLERANCE_S:
                # The reply answers another request: the connection is out of step, start over.
                self._drop(f"reply stamped {echoed!r}, not the request's observation time {obs.timestamp!r}")
                raise EngineError(
                    f"the policy server at {self.uri} answered with a reply stamped {echoed!r}, not the "
                    f"request's observation time {obs.timestamp!r} (a reply to another request); reconnecting"
                )
        timings: dict[str, float] = {}
        server = answer.get("server_timing")
        if isinstance(server, dict):
            server_ms = server.get("total_ms", server.get("infer_ms"))
            if isinstance(server_ms, (int, float)) and not isinstance(server_ms, bool):
                timings["server"] = float(server_ms) * 1e-3
                timings["network"] = max(0.0, (received - prepared) - timings["server"])
        policy = answer.get("policy_timing")
        if isinstance(policy, dict):
            for stage, ms in policy.items():
                if str(stage).endswith("_ms") and isinstance(ms, (int, float)) and not isinstance(ms, bool):
                    timings[f"server_{str(stage)[:-3]}"] = float(ms) * 1e-3
        timings["preprocess"] = prepared - start
        timings["round_trip"] = received - prepared
        timings["total"] = time.perf_counter() - start
        tokens = answer.get("tokens")
        return ActionChunk(
            actions=np.array(actions, dtype=np.float32),  # a writable copy of the message's view
            timestamp=obs.timestamp,
            timings=timings,
            tokens=np.asarray(tokens, dtype=np.int64) if isinstance(tokens, np.ndarray) else None,
        )

    # --- configure-time checks, status, close ---------------------------------

    def check_config(self, config: Any) -> list[str]:
        """The server's metadata against the node's config: ConfigError naming the parameter; notes.

        Checks what the metadata reports (openpi's own servers report only their policy's metadata,
        often nothing): the observation format, state and action dims against joint_names, the
        camera slots against cameras.keys, and whether Real-Time Chunking guidance is taken.
        """
        meta, fmt, n = self.metadata, self.format, config.num_joints
        notes: list[str] = []
        theirs = meta.get("obs_format")
        if isinstance(theirs, str) and theirs != fmt.name:
            raise ConfigError(
                "remote.obs_format",
                f"is '{fmt.name}', but the server at {self.uri} takes '{theirs}' requests",
            )
        if fmt.state_dim is not None and fmt.state_dim != n:
            raise ConfigError(
                "remote.obs_format",
                f"'{fmt.name}' requests carry {fmt.state_dim} state dims, but {n} joints are configured "
                "(joint_names); pick the format of this robot",
            )
        state_dim = _as_int(meta.get("state_dim"))
        if state_dim is not None and state_dim != n:
            raise ConfigError(
                "joint_names", f"{n} joints are configured, but the policy at remote.uri {self.uri} takes a "
                f"state of {state_dim} dims"
            )
        if self.action_dim is not None and self.action_dim != n:
            raise ConfigError(
                "joint_names", f"{n} joints are configured, but the policy at remote.uri {self.uri} returns "
                f"{self.action_dim} action dims"
            )
        by_slot = {slot: camera for camera, slot in fmt.cameras.items()}
        unsent = [key for key in config.cameras.keys if key not in by_slot]
        if unsent:
            raise ConfigError(
                "cameras.keys",
                f"remote.obs_format '{fmt.name}' has no camera for slot(s) {unsent}; it has {list(by_slot)}",
            )
        missing = [f"{fmt.camera_name(c)} (slot {fmt.cameras[c]})" for c in fmt.required
                   if fmt.cameras[c] not in config.cameras.keys]
        if missing:
            raise ConfigError(
                "cameras.keys",
                f"remote.obs_format '{fmt.name}' requires camera(s) {missing}, which cameras.keys lacks",
            )
        served = meta.get("camera_slots")
        if isinstance(served, dict):
            used = set(served.values())
            unused = [key for key in config.cameras.keys if key not in used]
            if unused:
                raise ConfigError(
                    "cameras.keys", f"the policy at remote.uri {self.uri} has no camera slot(s) {unused}; it "
                    f"takes {sorted(used)}"
                )
        if getattr(getattr(config, "aggregation", None), "mode", None) == "rtc":
            if meta.get("family") == "pi0fast":
                raise ConfigError(
                    "aggregation.mode",
                    f"is 'rtc', but the server at {self.uri} runs a pi0-FAST (token decode) policy, which "
                    "Real-Time Chunking cannot guide; choose temporal_ensemble, latest or crossfade",
                )
            keys = meta.get("obs_keys")
            if not (isinstance(keys, dict) and "rtc" in keys):
                raise ConfigError(
                    "aggregation.mode", f"is 'rtc', but the server at {self.uri} does not take Real-Time "
                    "Chunking guidance (its metadata lists no 'rtc' request key; `vla-ros serve` does); "
                    "choose temporal_ensemble, latest or crossfade"
                )
        transform = getattr(getattr(config, "policy", None), "robot_transform", "identity")
        if transform != "identity":
            notes.append(
                f"policy.robot_transform '{transform}' is not applied here in remote mode: the server "
                "applies its own (vla-ros serve --robot-transform; auto follows the format)"
            )
        if meta.get("untrained") is True:
            notes.append(f"the policy server at {self.uri} runs an UNTRAINED checkpoint (random weights)")
        if self.action_dim is None:
            notes.append(
                f"the policy server at {self.uri} reports no action_dim in its metadata: the joints are "
                "checked on the warm-up chunk only"
            )
        return notes

    def summary(self) -> str:
        """One line for the node's start-up summary."""
        meta = self.metadata
        model = meta.get("config_name") or meta.get("family") or "a policy"
        horizon = f", chunks of {self.action_horizon}" if self.action_horizon else ""
        return (
            f"model: {model} on the policy server {self.uri} ({meta.get('server', 'openpi protocol')}, "
            f"format {self.format.name}{horizon}); images resized here to {self.image_size} px "
            f"({self._image_resize}), API key {'sent' if self._api_key else 'none'}"
        )

    def status(self) -> dict[str, Any]:
        """Diagnostics values: remote.connected, remote.reconnects, remote.last_error, ..."""
        values: dict[str, Any] = {
            "remote.uri": self.uri,
            "remote.connected": self.connected,
            "remote.reconnects": self.reconnects,
            "remote.last_error": self.last_error,
        }
        if self.round_trip_s is not None:
            values["remote.round_trip_ms"] = self.round_trip_s * 1e3
        return values

    def close(self) -> None:
        """Close the connection (from any thread; an `infer` waiting on it fails at once, one that is
        connecting closes the new connection and fails without sending)."""
        with self._ws_lock:
            self._closed = True
            ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
