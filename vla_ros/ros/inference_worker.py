"""Runs the policy outside the executor: in a worker thread, or in a separate process.

The worker loop polls ``PolicyController.next_request(now)`` every few
milliseconds, runs the policy on the observation it gets and hands the chunk
(or the failure) back with ``on_chunk`` / ``on_inference_failed``. It is never
an executor callback, so a slow inference cannot block the control timer's
callback group; it only competes for the GIL and the CPU.

Two runners do the actual inference:

- ``ThreadRunner``: ``Policy.infer`` in the worker thread. Torch and
  onnxruntime release the GIL inside their kernels, but preprocessing,
  tokenization and the engine's Python glue hold it, and a multi-threaded
  BLAS on every core starves the timer thread of CPU; keep
  ``policy.num_threads`` below the core count.
- ``ProcessRunner``: the policy lives in a child process (a fresh
  interpreter, not a fork: the parent runs DDS threads). Camera frames go
  through one shared memory block per camera and the chunk comes back
  through another, so only small metadata crosses the socket. Nothing of the
  policy's Python work runs under the node's GIL.

A third, ``vla_ros.remote.client.RemoteRunner`` (inference.mode remote), asks
a policy server over openpi's websocket protocol (docs/remote.md).

All pass a request's Real-Time Chunking guidance (``ChunkGuidance``,
aggregation.mode rtc) on as ``policy.infer(obs, guidance=...)``; without
guidance the policy is called as ``policy.infer(obs)``, so policies that
do not know the keyword keep working in the other modes.

No rclpy here: the bench and replay tools reuse the runners.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
import dataclasses
import logging
from multiprocessing import shared_memory
import multiprocessing.connection
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Protocol

import numpy as np

from vla_ros.errors import ActionDecodeError, EngineError
from vla_ros.types import ActionChunk, ChunkGuidance, RawObservation, RTCSettings

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def load_policy(checkpoint: str | Path, options: Any):
    """Load a Policy from a checkpoint directory or an exported artifact directory (manifest.json)."""
    from vla_ros.policy import Policy

    directory = Path(checkpoint)
    if (directory / MANIFEST).is_file():
        from_artifacts = getattr(Policy, "from_artifacts", None)
        if from_artifacts is None:
            raise EngineError(
                f"{directory} is an exported artifact directory ({MANIFEST}), but this vla_ros "
                "cannot load artifacts (Policy.from_artifacts is missing)"
            )
        return from_artifacts(directory, options)
    return Policy.from_checkpoint(directory, options)


def warmup_observation(
    camera_sizes: Mapping[str, tuple[int, int]], num_joints: int, prompt: str = "warm up"
) -> RawObservation:
    """Make a synthetic observation (mid-grey frames, zero state) for warm-up runs."""
    images = {k: np.full((h, w, 3), 128, np.uint8) for k, (h, w) in camera_sizes.items()}
    return RawObservation(images=images, state=np.zeros(num_joints, np.float32), prompt=prompt, timestamp=0.0)


class Runner(Protocol):
    """Runs one inference; what InferenceWorker drives."""

    def infer(self, obs: RawObservation, guidance: ChunkGuidance | None = None) -> ActionChunk: ...

    def close(self) -> None: ...


def describe_policy(policy: Any) -> dict[str, str]:
    """The engine a policy runs on (prefix runtime, provider, precision, suffix...), as strings.

    Empty for objects without an engine (test doubles). For the node's start-up summary.
    """
    describe = getattr(getattr(policy, "engine", None), "describe", None)
    if describe is None:
        return {}
    try:
        return {str(k): str(v) for k, v in describe().items()}
    except Exception:  # a summary must never stop a start
        log.debug("the engine could not describe itself:\n%s", traceback.format_exc())
        return {}


class ThreadRunner:
    """The policy in this process (called from the worker thread).

    ``spec``: the policy's ``PolicySpec`` (for ``vla_ros.policy.check_fits``),
    or None for a policy without one (test doubles). ``description``: its
    engine, see ``describe_policy``.
    """

    mode = "thread"

    def __init__(self, policy: Any):
        from vla_ros.policy import PolicySpec

        self.policy = policy
        spec = getattr(policy, "spec", None)
        self.spec = spec if isinstance(spec, PolicySpec) else None
        self.description = describe_policy(policy)

    def infer(self, obs: RawObservation, guidance: ChunkGuidance | None = None) -> ActionChunk:
        if guidance is None:
            return self.policy.infer(obs)
        return self.policy.infer(obs, guidance=guidance)

    def close(self) -> None:
        self.policy = None


# ------------------------------------------------------- process runner ---


class _SharedArray:
    """A numpy array in a named shared memory block that can grow."""

    def __init__(self) -> None:
        self.shm: shared_memory.SharedMemory | None = None

    def write(self, array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
        array = np.ascontiguousarray(array)
        if self.shm is None or self.shm.size < array.nbytes:
            self.close()
            self.shm = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
        np.ndarray(array.shape, array.dtype, buffer=self.shm.buf)[...] = array
        return self.shm.name, array.shape, array.dtype.str

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
            self.shm = None


def _attach(name: str, cache: dict[str, shared_memory.SharedMemory]) -> shared_memory.SharedMemory:
    """Map a block the other process created, without taking ownership of it."""
    shm = cache.get(name)
    if shm is None:
        if sys.version_info >= (3, 13):
            shm = shared_memory.SharedMemory(name=name, track=False)
        else:
            shm = shared_memory.SharedMemory(name=name)
            # Before 3.13 attaching registers the block with this process's
            # resource tracker, which would unlink it when this process exits;
            # the creating process owns (and unlinks) it.
            from multiprocessing import resource_tracker

            resource_tracker.unregister(shm._name, "shared_memory")
        cache[name] = shm
    return shm


def _token_list(tokens: Any) -> list[int] | None:
    """A chunk's generated token ids as builtins for the socket, None when the policy does not decode."""
    return None if tokens is None else np.asarray(tokens, dtype=np.int64).reshape(-1).tolist()


def _guidance_meta(guidance: ChunkGuidance | None) -> dict[str, Any] | None:
    """ChunkGuidance as builtins for the socket (previous: (K, D) float32 as nested lists, a few KB)."""
    if guidance is None:
        return None
    return {
        "previous": guidance.previous.tolist(),
        "delay": int(guidance.delay),
        "settings": dataclasses.asdict(guidance.settings),
    }


def _guidance_from_meta(meta: Mapping[str, Any] | None) -> ChunkGuidance | None:
    """The inverse of ``_guidance_meta`` (float32 values round-trip exactly through Python floats)."""
    if meta is None:
        return None
    return ChunkGuidance(
        previous=np.asarray(meta["previous"], dtype=np.float32),
        delay=int(meta["delay"]),
        settings=RTCSettings(**meta["settings"]),
    )


def _child_main(conn: multiprocessing.connection.Connection) -> None:
    """Run the policy process: load, then answer ('infer', meta) requests until 'close' or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        checkpoint, options, factory = conn.recv()
        policy = factory() if factory is not None else load_policy(checkpoint, options)
    except BaseException as exc:  # report anything, including import errors
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    spec = None  # the policy's PolicySpec as builtins; None for policies without one (test doubles)
    try:
        from vla_ros.policy import PolicySpec

        found = getattr(policy, "spec", None)
        spec = found.to_dict() if isinstance(found, PolicySpec) else None
    except Exception:
        log.debug("the policy's spec could not be read:\n%s", traceback.format_exc())
    conn.send(("ready", {"spec": spec, "description": describe_policy(policy)}))
    attached: dict[str, shared_memory.SharedMemory] = {}
    out = _SharedArray()
    try:
        while True:
            try:
                kind, meta = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "close":
                break
            try:
                images = {}
                for key, (name, shape, dtype) in meta["images"].items():
                    shm = _attach(name, attached)
                    images[key] = np.ndarray(shape, np.dtype(dtype), buffer=shm.buf)
                obs = RawObservation(
                    images=images,
                    state=np.asarray(meta["state"], np.float32),
                    prompt=meta["prompt"],
                    timestamp=meta["timestamp"],
                )
                guidance = _guidance_from_meta(meta.get("guidance"))
                chunk = policy.infer(obs) if guidance is None else policy.infer(obs, guidance=guidance)
                del images, obs
                name, shape, dtype = out.write(np.asarray(chunk.actions, dtype=np.float32))
                conn.send(
                    (
                        "ok",
                        {
                            "shm": name,
                            "shape": shape,
                            "dtype": dtype,
                            "timestamp": chunk.timestamp,
                            "timings": dict(chunk.timings),
                            # decode models: the generated ids (<= a few hundred), None for the others
                            "tokens": _token_list(getattr(chunk, "tokens", None)),
                            # policy.num_samples > 1: the spread of the samples (the samples stay here)
                            "spread": getattr(chunk, "spread", None),
                        },
                    )
                )
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                log.debug("inference failed in the policy process:\n%s", traceback.format_exc())
    finally:
        for shm in attached.values():
            shm.close()
        out.close()


class ProcessRunner:
    """The policy in a child process; frames and chunks through shared memory.

    The child is a fresh interpreter (``python -m vla_ros.ros.inference_worker``)
    connected through a socket pair: unlike multiprocessing's spawn it never
    re-imports the caller's main module, and unlike fork it inherits no DDS
    threads. ``factory`` (a picklable zero-argument callable returning an
    object with ``infer``) replaces loading ``checkpoint`` (tests use it for
    fake policies); the child gets this process's sys.path to import it.
    ``spec``: the policy's ``PolicySpec``, sent by the child with its "ready"
    message, or None for a policy without one.
    """

    mode = "process"

    def __init__(
        self,
        checkpoint: str | Path | None,
        options: Any = None,
        timeout: float = 30.0,
        start_timeout: float = 300.0,
        factory: Callable[[], Any] | None = None,
    ):
        self.timeout = float(timeout)
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "vla_ros.ros.inference_worker", "--fd", str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            env=env,
            start_new_session=False,
        )
        child_sock.close()
        self._conn = multiprocessing.connection.Connection(parent_sock.detach())
        self._images: dict[str, _SharedArray] = {}
        self._attached: dict[str, shared_memory.SharedMemory] = {}
        self._lock = threading.Lock()
        try:
            self._conn.send((str(checkpoint or ""), options, factory))
            kind, payload = self._receive(start_timeout, "loading the policy")
        except Exception:
            self.close()
            raise
        if kind != "ready":
            self.close()
            raise EngineError(f"the policy process could not load the policy: {payload}")
        from vla_ros.policy import PolicySpec

        self.spec: PolicySpec | None = None
        self.description: dict[str, str] = dict(payload.get("description") or {})
        if isinstance(payload.get("spec"), dict):
            try:
                self.spec = PolicySpec.from_dict(payload["spec"])
            except (TypeError, ValueError) as exc:
                log.debug("the policy process sent an unreadable spec (%s); not checking it", exc)

    @property
    def pid(self) -> int:
        return self._process.pid

    def _receive(self, timeout: float, what: str) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while not self._conn.poll(0.05):
            if self._process.poll() is not None:
                raise EngineError(
                    f"the policy process died while {what} (exit code {self._process.returncode})"
                )
            if time.monotonic() > deadline:
                raise EngineError(f"the policy process did not answer within {timeout:g} s while {what}")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            raise EngineError(f"the policy process closed its connection while {what}: {exc}") from exc

    def infer(self, obs: RawObservation, guidance: ChunkGuidance | None = None) -> ActionChunk:
        with self._lock:
            if self._process.poll() is not None:
                raise EngineError(f"the policy process is not running (exit code {self._process.returncode})")
            images = {}
            for key, frame in obs.images.items():
                buffer = self._images.setdefault(key, _SharedArray())
                images[key] = buffer.write(np.asarray(frame, dtype=np.uint8))
            meta = {
                "images": images,
                "state": np.asarray(obs.state, np.float32).tolist(),
                "prompt": obs.prompt,
                "timestamp": float(obs.timestamp),
                "guidance": _guidance_meta(guidance),
            }
            self._conn.send(("infer", meta))
            try:
                kind, payload = self._receive(self.timeout, "running an inference")
            except EngineError:
                # A hung child would answer this request later and desynchronise
                # the connection: stop it; the runner is unusable from here on.
                self._process.kill()
                raise
            if kind != "ok":
                decode = f"{ActionDecodeError.__name__}: "
                if isinstance(payload, str) and payload.startswith(decode):
                    # A named model-output failure reads the same in both modes (diagnostics, logs).
                    raise ActionDecodeError(payload[len(decode):])
                raise EngineError(f"inference failed in the policy process: {payload}")
            shm = _attach(payload["shm"], self._attached)
            actions = np.array(np.ndarray(payload["shape"], np.dtype(payload["dtype"]), buffer=shm.buf))
            tokens = payload.get("tokens")
            return ActionChunk(
                actions=actions,
                timestamp=payload["timestamp"],
                timings=payload["timings"],
                tokens=None if tokens is None else np.asarray(tokens, dtype=np.int64),
                spread=payload.get("spread"),
            )

    def close(self) -> None:
        try:
            if self._process.poll() is None:
                try:
                    self._conn.send(("close", None))
                except (OSError, ValueError):
                    pass
                try:
                    self._process.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=5.0)
        finally:
            self._conn.close()
            for shm in self._attached.values():
                shm.close()
            self._attached.clear()
            for buffer in self._images.values():
                buffer.close()
            self._images.clear()


def make_runner(
    mode: str,
    checkpoint: str | Path,
    options: Any,
    timeout: float = 30.0,
    policy_factory: Callable[[], Any] | None = None,
    remote: Any = None,
) -> Runner:
    """'thread' -> ThreadRunner, 'process' -> ProcessRunner; ``policy_factory`` replaces loading.

    'remote' -> vla_ros.remote.client.RemoteRunner for ``remote`` (NodeConfig.remote), connected and
    holding the server's metadata; neither ``checkpoint`` nor ``policy_factory`` is used.
    """
    if mode == "remote":
        from vla_ros.remote.client import RemoteRunner

        if remote is None:
            raise ValueError("inference mode 'remote' needs the remote.* section")
        return RemoteRunner.from_config(remote, image_resize=getattr(options, "image_resize", "auto"))
    if mode == "process":
        return ProcessRunner(checkpoint, options, timeout=timeout, factory=policy_factory)
    if mode == "thread":
        policy = policy_factory() if policy_factory is not None else load_policy(checkpoint, options)
        return ThreadRunner(policy)
    raise ValueError(f"unknown inference mode {mode!r}")


# --------------------------------------------------------------- worker ---


class InferenceWorker:
    """A thread that keeps the controller supplied with chunks.

    clock: returns ``now`` on the controller's clock (the node's ROS clock).
    on_error: optional callback(message) for logging failures.
    on_chunk: optional callback(request, chunk) for every chunk the
        controller accepted (the node's debug topics), after it merged it.
    """

    def __init__(
        self,
        controller: Any,
        runner: Runner,
        clock: Callable[[], float],
        poll_period: float = 0.005,
        on_error: Callable[[str], None] | None = None,
        on_chunk: Callable[[Any, ActionChunk], None] | None = None,
    ):
        self.controller = controller
        self.runner = runner
        self._clock = clock
        self._poll = float(poll_period)
        self._on_error = on_error
        self._on_chunk = on_chunk
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared: suspended (no new inferences)
        self._thread: threading.Thread | None = None
        self.inferences = 0

    def start(self) -> None:
        """Start the thread (suspended until ``resume``)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vla_ros-inference", daemon=True)
        self._thread.start()

    def resume(self) -> None:
        self._running.set()

    def suspend(self) -> None:
        """No new inferences after the one in flight (if any)."""
        self._running.clear()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._running.clear()

    @property
    def running(self) -> bool:
        return self._running.is_set() and self._thread is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._running.wait(0.1):
                continue
            if self._stop.is_set():
                break
            request = self.controller.next_request(self._clock())
            if request is None:
                time.sleep(self._poll)
                continue
            try:
                guidance = getattr(request, "guidance", None)
                if guidance is None:
                    chunk = self.runner.infer(request.observation)
                else:
                    chunk = self.runner.infer(request.observation, guidance=guidance)
            except Exception as exc:  # any engine error must reach the watchdog
                message = f"{type(exc).__name__}: {exc}"
                self.controller.on_inference_failed(message, self._clock(), request)
                if self._on_error is not None:
                    self._on_error(message)
                continue
            self.inferences += 1
            try:
                accepted = self.controller.on_chunk(chunk, self._clock(), request)
            except Exception as exc:  # a malformed chunk (e.g. a NaN stamp) must not kill this thread
                message = f"the chunk could not be used: {type(exc).__name__}: {exc}"
                self.controller.on_inference_failed(message, self._clock(), request)
                if self._on_error is not None:
                    self._on_error(message)
                continue
            if accepted and self._on_chunk is not None:
                self._on_chunk(request, chunk)


def _main(argv: list[str] | None = None) -> int:
    """Entry point of the policy process (started by ProcessRunner, not by hand)."""
    parser = argparse.ArgumentParser(description="vla_ros policy process (started by the node)")
    parser.add_argument("--fd", type=int, required=True, help="socket connected to the node")
    args = parser.parse_args(argv)
    _child_main(multiprocessing.connection.Connection(args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
