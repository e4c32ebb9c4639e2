"""PolicyServer: openpi's websocket policy protocol over any object with vla_ros's `Policy.infer`.

The protocol (openpi_server / openpi_client, docs/remote.md):

1. the client connects (optionally with the header `Authorization: Api-Key <key>`);
2. the server sends its metadata, one msgpack map;
3. per request the client sends one msgpack map (an observation in the server's format,
   obs_formats) and the server answers one msgpack map
   {"actions": float32 (H, D), "server_timing": {...}, "policy_timing": {...}}
   or, when the request cannot be served, one *text* frame saying why (openpi-client raises
   RuntimeError with that text);
4. `GET /healthz` answers 200 "OK" (no API key needed: it says only that the server is up).

Where vla_ros differs from openpi's WebsocketPolicyServer:

- A bad request (not msgpack, unknown or missing keys, a wrong image shape, NaN state, an
  oversized message, a timeout, a failed inference) gets its error frame and the connection STAYS
  OPEN, ready for the next request; openpi sends a traceback and closes. A robot that retries
  should not pay a reconnect (and a new handshake) for it, and one bad frame from one robot must
  not drop a fleet client that multiplexes several. The error text is one line, never a traceback.
- Network I/O never waits for inference: the event loop only receives and replies; requests are
  decoded and validated in a small thread pool (DECODE_THREADS), inference runs in one worker
  thread per replica, fed by one queue. A slow inference (or a message slow to decode) delays the
  requests queued behind it, never another client's handshake, /healthz or pings.
- A connection that closes while its request waits takes the request with it: still queued, it
  is dropped; already running, it finishes and its result is discarded.
- Each request has a deadline (`request_timeout`, from its arrival): when it passes, the client
  gets an error frame; a request still queued is dropped, one already running finishes and its
  result is discarded (a running inference cannot be interrupted).
- Message size: a request over `max_message_bytes` gets an error frame and the connection stays
  open; the websocket layer itself refuses (closes with 1009, "message too big") only messages over
  twice that, before reading them, so that a runaway client cannot make the server buffer
  unbounded data. openpi sets no limit at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
import concurrent.futures
import dataclasses
import hmac
import http
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from vla_ros.errors import ConfigError, ObservationError, VlaRosError
from vla_ros.remote import codec
from vla_ros.remote.obs_formats import get_format, ObsFormat, PolicyRequest, PolicyShape

log = logging.getLogger(__name__)

PROTOCOL = "openpi-websocket-msgpack-numpy"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# Three 1080p RGB frames are 18.7 MB; three 224 px frames 0.45 MB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
# Requests are decoded and validated in this many threads, never on the event loop: a message of 1 MiB
# can hold a million msgpack maps, 0.4 s of decoding, and the loop must keep answering /healthz,
# handshakes and pings meanwhile. Each connection has one request in flight, so this also bounds the
# CPU that clients sending such messages can take from inference.
DECODE_THREADS = 2
# Messages a connection may have received and not yet answered: the one being answered and one more.
# Reading pauses beyond that (TCP pushes back on a client that pipelines), so a connection cannot
# make the server buffer many requests, and a closed connection is noticed while its request waits.
MAX_QUEUED_MESSAGES = 2
HEALTH_PATH = "/healthz"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vla_ros")
    except PackageNotFoundError:
        return "unknown"


def error_text(kind: str, problem: str) -> str:
    """The text of an error frame: "<kind>: <problem>" on one line."""
    return f"{kind}: {' '.join(str(problem).split())}"


@dataclasses.dataclass
class _Served:
    chunk: Any
    queue_s: float
    infer_s: float
    replica: int


class InferenceQueue:
    """One queue of requests and one worker thread per replica that takes them in turn.

    `replicas`: objects with `infer(obs, noise=None, guidance=None) -> ActionChunk`; each is used
    by its own thread only, so a replica need not be thread-safe.
    """

    def __init__(self, replicas: Sequence[Any], name: str = "vla-ros-infer"):
        if not replicas:
            raise ConfigError("replicas", "at least one policy replica is needed")
        self._jobs: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, args=(i, policy), name=f"{name}-{i}", daemon=True)
            for i, policy in enumerate(replicas)
        ]
        self.replicas = len(replicas)
        for thread in self._threads:
            thread.start()

    def submit(self, request: PolicyRequest) -> concurrent.futures.Future:
        """A future of _Served; cancelling it before a worker takes it drops the request."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((request, future, time.perf_counter()))
        return future

    def pending(self) -> int:
        return self._jobs.qsize()

    def close(self, timeout: float | None = 1.0) -> None:
        """Stop the workers after the requests already taken (daemon threads: a stuck one is left)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _work(self, index: int, policy: Any) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            request, future, queued = job
            if not future.set_running_or_notify_cancel():
                continue  # timed out while queued
            start = time.perf_counter()
            kwargs = {}
            if request.noise is not None:
                kwargs["noise"] = request.noise
            if request.guidance is not None:
                kwargs["guidance"] = request.guidance
            try:
                chunk = policy.infer(request.obs, **kwargs)
            except BaseException as exc:  # handed to the connection, which answers with an error frame
                future.set_exception(exc)
            else:
                future.set_result(_Served(chunk, start - queued, time.perf_counter() - start, index))


def is_loopback(host: str) -> bool:
    """Whether binding `host` opens no port beyond this machine (every address it resolves to is loopback)."""
    import ipaddress
    import socket

    if not host:
        return False  # "" binds every interface
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def build_metadata(
    spec: Any, fmt: ObsFormat, shape: PolicyShape, extra: Mapping[str, Any] | None = None, **server: Any
) -> dict[str, Any]:
    """What the server sends first on connect: `extra` (openpi's policy metadata), then vla_ros's keys."""
    data: dict[str, Any] = dict(extra or {})
    data.update(server="vla_ros", version=_package_version(), protocol=PROTOCOL)
    if spec is not None:
        data.update(
            family=spec.variant,
            config_name=spec.config_name,
            action_horizon=spec.action_horizon,
            action_dim=spec.action_dims or spec.action_stats_dim,
            model_action_dim=spec.model_dim,
            state_dim=spec.state_dim,
            image_size=spec.image_size,
            noise_shape=[spec.action_horizon, spec.model_dim],
            checkpoint=str(spec.checkpoint),
            untrained=bool(spec.untrained),
        )
    data.update(
        obs_format=fmt.name,
        obs_keys=fmt.keys(shape),
        camera_slots={camera: slot for camera, slot in fmt.cameras.items()
                      if shape.camera_slots is None or slot in shape.camera_slots},
        error_frames="a text frame answers a request that failed; the connection stays open",
    )
    data.update(server)
    return data


class PolicyServer:
    """openpi's websocket policy protocol in front of one or more policy replicas.

    policies: one object with `infer(obs, noise=None, guidance=None) -> ActionChunk` (a vla_ros
        Policy) or a sequence of them (replicas, each with its own worker thread).
    obs_format: "aloha", "droid", "libero", "slots" or an ObsFormat.
    spec: what the policy takes (a PolicySpec); None: the first replica's `spec`, if it has one.
        It fills the metadata and lets requests be checked before they are queued.
    host / port: loopback by default; port 0 picks a free port (see `port` once started).
    api_key: when set, a websocket client must send `Authorization: Api-Key <api_key>`.
    request_timeout: seconds from a request's arrival to its answer; then an error frame.
    max_message_bytes: larger requests get an error frame (over twice this, the websocket closes).
    metadata: extra metadata keys (openpi's policy metadata, e.g. a reset pose).
    default_prompt: the prompt of requests without one (None: `prompt` is required).
    """

    def __init__(
        self,
        policies: Any,
        obs_format: str | ObsFormat = "slots",
        *,
        spec: Any = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        api_key: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metadata: Mapping[str, Any] | None = None,
        default_prompt: str | None = None,
    ):
        replicas = list(policies) if isinstance(policies, (list, tuple)) else [policies]
        if not replicas:
            raise ConfigError("replicas", "at least one policy replica is needed")
        self.format = get_format(obs_format) if isinstance(obs_format, str) else obs_format
        self.spec = spec if spec is not None else getattr(replicas[0], "spec", None)
        self.shape = PolicyShape.from_spec(self.spec, default_prompt)
        self.format.check_policy(self.shape)
        if not (isinstance(request_timeout, (int, float)) and 0 < request_timeout < float("inf")):
            raise ConfigError("--request-timeout", f"expected seconds > 0, got {request_timeout!r}")
        if not (isinstance(max_message_bytes, int) and max_message_bytes > 0):
            raise ConfigError("--max-message-mb", f"expected a size > 0, got {max_message_bytes!r}")
        if api_key is not None and not api_key:
            raise ConfigError("--api-key-env", "the API key is empty")
        self.host, self.port = host, port
        self.request_timeout = float(request_timeout)
        self.max_message_bytes = max_message_bytes
        self._api_key = api_key
        self._replicas = replicas
        self.metadata = build_metadata(
            self.spec, self.format, self.shape, metadata,
            replicas=len(replicas), request_timeout_s=self.request_timeout,
            max_message_bytes=max_message_bytes, api_key_required=api_key is not None,
        )
        self._metadata_bytes = codec.encode(self.metadata)
        self._queue: InferenceQueue | None = None
        self._decoder: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self.connections = 0

    # --- lifecycle -----------------------------------------------------------

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def bound(self) -> list[tuple]:
        """The socket addresses the server listens on, once started ([] before)."""
        return [sock.getsockname() for sock in self._server.sockets] if self._server is not None else []

    async def serve(self, on_ready: Callable[["PolicyServer"], None] | None = None) -> None:
        """Serve until `stop()` (or cancellation); `on_ready` is called once the port is bound."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.start_workers()
        try:
            async with serve(
                self._handle,
                self.host,
                self.port,
                compression=None,
                # The websocket layer refuses larger messages unread (close 1009); _handle answers the
                # ones between max_message_bytes and this with an error frame.
                max_size=2 * self.max_message_bytes,
                max_queue=MAX_QUEUED_MESSAGES,
                process_request=self._process_request,
            ) as server:
                self._server = server
                sockname = next(iter(server.sockets)).getsockname()
                self.port = int(sockname[1])
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
        finally:
            self._queue.close()
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._queue = self._decoder = None

    def start_workers(self) -> None:
        """Start the inference threads alone, for a host with its own websocket layer (remote.fleet).

        Then `reply_frame` answers requests. `serve` starts them itself.
        """
        if self._queue is None:
            self._queue = InferenceQueue(self._replicas)
        if self._decoder is None:
            self._decoder = concurrent.futures.ThreadPoolExecutor(DECODE_THREADS, "vla-ros-decode")

    def serve_forever(self, on_ready: Callable[["PolicyServer"], None] | None = None) -> None:
        """Serve in this thread until interrupted (Ctrl-C raises KeyboardInterrupt out of here)."""
        asyncio.run(self.serve(on_ready))

    def start(self, timeout: float = 30.0) -> "PolicyServer":
        """Serve from a background thread; returns once the port is bound (`port` is then the real one)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self.serve(lambda _: ready.set()))
            except BaseException as exc:  # reported by start() when it happens before ready
                failure.append(exc)
                ready.set()
                if not isinstance(exc, (OSError, VlaRosError)):
                    log.exception("policy server stopped")

        self._thread = threading.Thread(target=main, name="vla-ros-serve", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the policy server did not start within {timeout} s")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (from any thread) and wait for the background thread, if `start` made one."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop closed meanwhile
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- HTTP: /healthz and the API key --------------------------------------

    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._api_key is not None and not self._authorized(request.headers.get("Authorization")):
            log.warning("refused a connection from %s: missing or wrong API key", connection.remote_address)
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n",
            )
        return None

    def accepts_key(self, header: str | None) -> bool:
        """Whether a connection with this `Authorization` header may open (always, without an API key)."""
        return self._api_key is None or self._authorized(header)

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, key = header.strip().partition(" ")
        return scheme.lower() == "api-key" and hmac.compare_digest(
            key.strip().encode("utf-8", "replace"), self._api_key.encode("utf-8")
        )

    # --- one connection ------------------------------------------------------

    async def _handle(self, websocket: Any) -> None:
        """One connection: metadata, then one request at a time, each answered before the next is read.

        A connection that closes while its request waits takes the request with it: a request still
        queued is dropped (its future cancelled), one already running finishes and is discarded.
        """
        from websockets.exceptions import ConnectionClosed

        peer = websocket.remote_address
        self.connections += 1
        log.info("connection from %s opened", peer)
        prev_total_ms = None
        closed = asyncio.ensure_future(websocket.wait_closed())
        try:
            await websocket.send(self._metadata_bytes)
            async for message in websocket:
                if closed.done():  # a message read after the close: nobody to answer
                    break
                start = time.perf_counter()
                answer = asyncio.ensure_future(self.reply_frame(message, prev_total_ms))
                await asyncio.wait((answer, closed), return_when=asyncio.FIRST_COMPLETED)
                if not answer.done():
                    answer.cancel()
                    log.info("connection from %s closed before its reply; request dropped", peer)
                    break
                await websocket.send(answer.result())
                prev_total_ms = (time.perf_counter() - start) * 1e3
        except ConnectionClosed:
            pass
        finally:
            closed.cancel()
            self.connections -= 1
            log.info("connection from %s closed", peer)

    async def reply_frame(self, message: Any, prev_total_ms: float | None = None) -> bytes | str:
        """The frame answering one request message: msgpack bytes, or an error frame's text.

        What `serve` sends per message; vla_ros.remote.fleet's Ray Serve replicas send the same.
        `prev_total_ms`: the connection's previous request, arrival to sent (openpi's key).
        """
        start = time.perf_counter()
        reply = await self._answer(message)
        if isinstance(reply, dict):
            reply["server_timing"]["total_ms"] = (time.perf_counter() - start) * 1e3
            if prev_total_ms is not None:
                reply["server_timing"]["prev_total_ms"] = prev_total_ms
            try:
                reply = codec.encode(reply)
            except codec.CodecError as exc:  # a policy that returned what msgpack cannot carry
                log.error("cannot encode the reply: %s", exc)
                reply = error_text("internal error", f"the reply cannot be encoded: {exc}")
        return reply

    async def _answer(self, message: Any) -> dict | str:
        """The reply to one message: a dict (sent as msgpack) or an error frame's text."""
        arrived = time.perf_counter()
        if isinstance(message, str):
            return error_text("bad request", "a text frame; send the observation as one binary msgpack frame")
        if len(message) > self.max_message_bytes:
            return error_text(
                "bad request", f"message too large: {len(message)} bytes, the limit is "
                f"{self.max_message_bytes} (vla-ros serve --max-message-mb); send smaller images (the model "
                f"takes {getattr(self.spec, 'image_size', 224)} px)"
            )
        try:
            request = await asyncio.wrap_future(self._decoder.submit(self._decode, message))
        except (codec.CodecError, ObservationError, ConfigError) as exc:
            return error_text("bad request", str(exc))
        except Exception as exc:  # a request that found a bug in the checks: logged, one line to the client
            log.error("decoding a request raised", exc_info=exc)
            return error_text("internal error", f"{type(exc).__name__}: {exc}")
        decoded = time.perf_counter()
        future = self._queue.submit(request)
        remaining = self.request_timeout - (decoded - arrived)
        try:
            served = await asyncio.wait_for(asyncio.wrap_future(future), max(remaining, 0.0))
        except asyncio.CancelledError:  # the connection closed: a queued request is dropped
            future.cancel()
            raise
        except asyncio.TimeoutError:
            future.cancel()
            return error_text(
                "timeout", f"no actions within {self.request_timeout:g} s (vla-ros serve --request-timeout; "
                f"{self._queue.pending()} request(s) queued for {self._queue.replicas} replica(s))"
            )
        except (ObservationError, ConfigError) as exc:
            return error_text("bad request", str(exc))
        except VlaRosError as exc:
            return error_text("inference failed", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug in the policy: logged here, one line to the client
            log.error("inference raised", exc_info=exc)
            return error_text("internal error", f"{type(exc).__name__}: {exc}")
        return self._reply(request, served, (decoded - arrived) * 1e3)

    def _decode(self, message: bytes) -> PolicyRequest:
        return self.format.parse(codec.decode(message), self.shape)

    @staticmethod
    def _reply(request: PolicyRequest, served: _Served, decode_ms: float) -> dict:
        chunk = served.chunk
        timings = {f"{stage}_ms": float(seconds) * 1e3 for stage, seconds in dict(chunk.timings).items()}
        if "total_ms" in timings:
            timings["infer_ms"] = timings["total_ms"]  # openpi's policy_timing key
        reply: dict[str, Any] = {
            "actions": np.asarray(chunk.actions, dtype=np.float32),
            "server_timing": {
                "infer_ms": served.infer_s * 1e3,
                "queue_ms": served.queue_s * 1e3,
                "decode_ms": decode_ms,
                "replica": served.replica,
            },
            "policy_timing": timings,
        }
        if request.stamped:
            reply["timestamp"] = float(chunk.timestamp)
        if getattr(chunk, "tokens", None) is not None:
            reply["tokens"] = np.asarray(chunk.tokens, dtype=np.int64)
        return reply
