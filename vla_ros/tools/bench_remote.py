"""`vla-ros bench --remote URI|local|ray`: the cost of running the policy behind `vla-ros serve`.

Two figures, both as ratios measured in one run:

1. Round trip against in-process inference: one client, the same policy in this process, the same
   observation (three 224 px cameras, what the node sends after preprocessing locally) and the same
   noise (the `noise` extension key), interleaved run by run. Reported: the medians, the time added
   per request (round trip minus in-process), the transport share (round trip minus the server's own
   `infer_ms`), their ratio, and whether the actions agree. Target: at most 5 ms added.
2. Requests per second for `--clients` concurrent clients (default 4), each with its own connection
   sending back to back, against each target in turn, interleaved over four rounds.

Targets (`--remote`):
- `ws://host:port[,ws://host2:port2...]`: running servers of the same checkpoint as `--checkpoint`
  (the in-process side; default: a tiny pi0 made here, seed 0, which a server can load too); the
  API key, if the server wants one, from environment variable VLA_ROS_API_KEY.
- `local`: `vla-ros serve` started here on loopback twice, with `--replicas 1` and `--replicas 2`.
  One torch thread per replica (OMP_NUM_THREADS=1) and in-process, as one CPU slot per Ray replica.
- `ray`: `vla-ros serve --ray` on a new local Ray cluster (loopback), 1 and 2 replicas of one CPU slot
  (or GPU) each, deployed side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

ADDED_TARGET_MS = 5.0
API_KEY_ENV = "VLA_ROS_API_KEY"
DEFAULT_CLIENTS = 4


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--remote", metavar="URI",
        help="measure a policy server instead: ws://host:port (comma-separated for several), 'local' "
        "(start `vla-ros serve` with 1 and 2 replicas here) or 'ray' (the same on a local Ray Serve "
        "cluster): round trip vs in-process inference, and requests/s for --clients concurrent clients",
    )
    parser.add_argument(
        "--clients", type=int, default=DEFAULT_CLIENTS,
        help=f"--remote: concurrent clients of the throughput measurement (default {DEFAULT_CLIENTS})",
    )


class Client:
    """A minimal openpi protocol client (websockets + vla_ros's codec): metadata, then request / reply."""

    def __init__(self, uri: str, api_key: str | None = None, timeout: float = 120.0):
        from websockets.sync.client import connect

        from vla_ros.remote import codec

        self._codec = codec
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        # Entered by hand and closed by close(): a connection that outlives one block, without
        # websockets >= 17.1's warning about connect() outside a `with`.
        self._ws = connect(uri, additional_headers=headers, max_size=None, compression=None,
                           open_timeout=timeout).__enter__()
        self.timeout = timeout
        self.metadata = codec.decode(self._ws.recv(timeout))

    def infer(self, request: bytes) -> dict:
        self._ws.send(request)
        reply = self._ws.recv(self.timeout)
        if isinstance(reply, str):
            raise RuntimeError(f"the server answered with an error frame: {reply}")
        return self._codec.decode(reply)

    def close(self) -> None:
        self._ws.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was up")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")


def observation(dims: int, seed: int = 0):
    """Three 224 px cameras (what the node sends after resizing locally), a state and a prompt."""
    from vla_ros.types import CAMERA_KEYS, RawObservation

    rng = np.random.default_rng(seed)
    images = {key: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for key in CAMERA_KEYS}
    return RawObservation(images, rng.normal(size=dims).astype(np.float32), "pick up the red block")


def measure_round_trip(policy, uri: str, obs, runs: int, warmup: int, api_key: str | None) -> dict:
    """One client against in-process `policy.infer`, interleaved, with the same noise."""
    from vla_ros.remote import codec
    from vla_ros.remote.obs_formats import to_request

    spec = policy.spec
    noise = np.random.default_rng(1).standard_normal((spec.action_horizon, spec.model_dim)).astype(np.float32)
    client = Client(uri, api_key)
    try:
        fmt = client.metadata.get("obs_format", "slots")
        request = codec.encode(to_request(obs, fmt, noise))
        local_s, round_s, infer_ms, diffs = [], [], [], []
        for i in range(warmup + runs):
            start = time.perf_counter()
            chunk = policy.infer(obs, noise=noise)
            local = time.perf_counter() - start
            start = time.perf_counter()
            reply = client.infer(request)
            rt = time.perf_counter() - start
            if i < warmup:
                continue
            local_s.append(local)
            round_s.append(rt)
            infer_ms.append(float(reply["server_timing"]["infer_ms"]))
            diffs.append(float(np.abs(np.asarray(reply["actions"]) - chunk.actions).max()))
    finally:
        client.close()
    local_ms, rt_ms = np.asarray(local_s) * 1e3, np.asarray(round_s) * 1e3
    transport = rt_ms - np.asarray(infer_ms)
    return {
        "uri": uri,
        "request_bytes": len(request),
        "runs": runs,
        "in_process_ms": {"p50": float(np.median(local_ms)), "p90": float(np.percentile(local_ms, 90))},
        "round_trip_ms": {"p50": float(np.median(rt_ms)), "p90": float(np.percentile(rt_ms, 90))},
        "server_infer_ms_p50": float(np.median(infer_ms)),
        "added_ms": float(np.median(rt_ms) - np.median(local_ms)),
        "transport_ms": {"p50": float(np.median(transport)), "p90": float(np.percentile(transport, 90))},
        "ratio": float(np.median(rt_ms) / np.median(local_ms)),
        "max_abs_diff": float(max(diffs)),
        "obs_format": fmt,
        "replicas": client.metadata.get("replicas"),
        "server": client.metadata.get("fleet", client.metadata.get("server")),
    }


def requests_per_second(uri: str, request: bytes, clients: int, seconds: float, api_key: str | None) -> dict:
    """`clients` connections sending back to back for `seconds`; completed replies per second."""
    conns = [Client(uri, api_key) for _ in range(clients)]
    for conn in conns:
        conn.infer(request)  # warm: the replica is loaded and this connection's path is open
    counts = [0] * clients
    replicas: set = set()
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    stop = [0.0]

    def work(i: int) -> None:
        try:
            barrier.wait()
            while time.perf_counter() < stop[0]:
                conns[i].infer(request)
                counts[i] += 1
            replicas.add(conns[i].metadata.get("ray_replica"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop[0] = time.perf_counter() + seconds
    start = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}") from errors[0]
    return {"requests": sum(counts), "seconds": elapsed, "per_client": counts,
            "ray_replicas_seen": len(replicas - {None})}


def measure_throughput(targets: dict[str, str], request: bytes, clients: int, seconds: float,
                       api_key: str | None, rounds: int = 4) -> dict:
    """Requests/s per target, the targets taking turns over `rounds` (drift hits each alike)."""
    totals = {name: {"requests": 0, "seconds": 0.0, "per_client": [0] * clients, "ray_replicas_seen": 0}
              for name in targets}
    for _ in range(rounds):
        for name, uri in targets.items():
            got = requests_per_second(uri, request, clients, seconds / rounds, api_key)
            total = totals[name]
            total["requests"] += got["requests"]
            total["seconds"] += got["seconds"]
            total["per_client"] = [a + b for a, b in zip(total["per_client"], got["per_client"])]
            total["ray_replicas_seen"] = max(total["ray_replicas_seen"], got["ray_replicas_seen"])
    for total in totals.values():
        total["requests_per_s"] = total["requests"] / total["seconds"]
    return totals


@contextlib.contextmanager
def local_servers(checkpoint: Path, args: argparse.Namespace):
    """`vla-ros serve` with 1 and 2 replicas on loopback (subprocesses); yields {name: uri}."""
    processes, targets = [], {}
    # The servers log every connection: to a file, never to a pipe nobody reads (a full pipe stalls them).
    logs = tempfile.TemporaryFile()
    try:
        for replicas in (1, 2):
            port = _free_port()
            command = [sys.executable, "-m", "vla_ros", "serve", "--checkpoint", str(checkpoint), "--port",
                       str(port), "--replicas", str(replicas), "--device", args.device, "--precision",
                       args.precision]
            if args.steps:
                command += ["--steps", str(args.steps)]
            # One torch thread per replica, as in-process and as the Ray replicas (one CPU slot each).
            env = dict(os.environ, OMP_NUM_THREADS="1")
            processes.append(subprocess.Popen(command, stdout=logs, stderr=logs, env=env))
            try:
                _wait_healthy(f"http://127.0.0.1:{port}/healthz", processes[-1], 300)
            except RuntimeError as exc:
                logs.seek(0)
                tail = logs.read().decode("utf-8", "replace").strip().splitlines()[-5:]
                raise RuntimeError(
                    f"`vla-ros serve --replicas {replicas}`: {exc}: " + " | ".join(tail)) from None
            targets[f"{replicas} replica{'s' * (replicas > 1)}"] = f"ws://127.0.0.1:{port}"
        yield targets
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()


@contextlib.contextmanager
def ray_servers(checkpoint: Path, args: argparse.Namespace):
    """Ray Serve apps of 1 and 2 replicas side by side on a new loopback cluster; yields {name: uri}."""
    from vla_ros.policy import Policy, PolicyOptions
    from vla_ros.remote import fleet

    fleet.require_ray()
    fleet.start_local_cluster(num_cpus=3)
    try:
        gpus = fleet.cluster_gpus() >= 3 and args.device in ("auto", "cuda")
        port = _free_port()
        fleet.start_proxy("127.0.0.1", port)
        options = PolicyOptions(device=args.device, precision=args.precision, num_steps=args.steps,
                                num_threads=None if gpus else 1)
        config = fleet.ReplicaConfig(functools.partial(Policy.from_checkpoint, checkpoint, options), "slots")
        apps = [(fleet.build_app(config, replicas, fleet.actor_options(gpus)), name, f"/{name}")
                for replicas, name in ((1, "one"), (2, "two"))]
        fleet.deploy_many(apps)
        # A route prefix is matched with a slash after it.
        base = f"ws://127.0.0.1:{port}"
        yield {"1 Ray replica": f"{base}/one/", "2 Ray replicas": f"{base}/two/"}
    finally:
        fleet.shutdown()


def _policy(checkpoint: Path, args: argparse.Namespace, threads: int | None = None):
    from vla_ros.policy import Policy, PolicyOptions

    return Policy.from_checkpoint(checkpoint, PolicyOptions(
        device=args.device, precision=args.precision, num_steps=args.steps, num_threads=threads, seed=0))


def run_remote(args: argparse.Namespace) -> int:
    from vla_ros.errors import ConfigError
    from vla_ros.remote import codec
    from vla_ros.remote.obs_formats import to_request
    from vla_ros.tools.make_tiny import make_tiny_checkpoint

    if args.clients < 1:
        raise ConfigError("--clients", f"expected at least 1, got {args.clients}")
    if args.runs < 1:
        raise ConfigError("--runs", f"expected at least 1, got {args.runs}")
    api_key = os.environ.get(API_KEY_ENV) or None
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or make_tiny_checkpoint(
            Path(tmp) / "ckpt", args.config or "pi0-tiny", seed=0, dims=args.dims)
        if args.remote in ("local", "ray"):
            servers = (local_servers if args.remote == "local" else ray_servers)(Path(checkpoint), args)
        else:
            uris = [uri.strip() for uri in args.remote.split(",") if uri.strip()]
            if not uris or not all(uri.startswith(("ws://", "wss://")) for uri in uris):
                raise ConfigError(
                    "--remote", f"expected ws://host:port[,...], 'local' or 'ray'; got {args.remote!r}")
            servers = contextlib.nullcontext({uri: uri for uri in uris})
        with servers as targets:
            # The servers started here run one torch thread per replica (one CPU slot); so does this side.
            policy = _policy(Path(checkpoint), args, 1 if args.remote in ("local", "ray") else None)
            obs = observation(policy.spec.state_dim or args.dims)
            print(f"round trip: {args.warmup} warm-up + {args.runs} requests interleaved with in-process "
                  f"inference", file=sys.stderr, flush=True)
            first = next(iter(targets.values()))
            round_trip = measure_round_trip(policy, first, obs, args.runs, args.warmup, api_key)
            fmt = round_trip.get("obs_format", "slots")
            request = codec.encode(to_request(obs, fmt))
            seconds = args.seconds
            print(f"throughput: {args.clients} clients, {seconds:g} s per target", file=sys.stderr,
                  flush=True)
            throughput = measure_throughput(targets, request, args.clients, seconds, api_key)
    print_remote_report(round_trip, throughput, args.clients)
    if args.json:
        Path(args.json).write_text(json.dumps({"round_trip": round_trip, "throughput": throughput}, indent=2))
    return 0


def print_remote_report(rt: dict, throughput: dict, clients: int) -> None:
    verdict = "PASS" if rt["added_ms"] <= ADDED_TARGET_MS else "FAIL"
    print(f"round trip to {rt['uri']} ({rt['server']}, {rt['replicas']} replica(s)), request "
          f"{rt['request_bytes'] / 1e3:.0f} kB (three 224 px cameras), {rt['runs']} runs, medians:")
    local, trip = rt["in_process_ms"], rt["round_trip_ms"]
    print(f"  in-process inference   {local['p50']:8.2f} ms (p90 {local['p90']:.2f})")
    print(f"  round trip             {trip['p50']:8.2f} ms (p90 {trip['p90']:.2f}) = {rt['ratio']:.3f}x "
          "in-process")
    print(f"  added per request      {rt['added_ms']:8.2f} ms  [{verdict}: target <= {ADDED_TARGET_MS:g} ms]")
    print(f"  transport (rt - server infer_ms) {rt['transport_ms']['p50']:.2f} ms "
          f"(p90 {rt['transport_ms']['p90']:.2f}); server infer {rt['server_infer_ms_p50']:.2f} ms")
    print(f"  actions vs in-process, same noise: max |diff| {rt['max_abs_diff']:.2e}")
    print(f"requests/s, {clients} concurrent clients:")
    base = None
    for name, got in throughput.items():
        rate = got["requests_per_s"]
        base = base or rate
        print(f"  {name:<24} {rate:8.2f} req/s ({got['requests']} in {got['seconds']:.1f} s; per client "
              f"{got['per_client']}) = {rate / base:.2f}x the first")
