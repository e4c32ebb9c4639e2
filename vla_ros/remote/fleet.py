"""`vla-ros serve --ray`: the policy server as a Ray Serve application, one policy per replica.

Robots see the same server as `vla-ros serve` (server.py, docs/remote.md): openpi's websocket protocol,
metadata first, msgpack requests and replies, text error frames with the connection left open,
`GET /healthz`, the `Authorization: Api-Key` header. Each Ray Serve replica is one PolicyServer (its
policy, its inference thread, its request checks and timeouts) behind a FastAPI websocket route
(`@serve.ingress`); Ray's HTTP proxy takes the connections and hands each to a replica for the
connection's lifetime (the protocol has one request in flight per connection, so a robot never
needs two replicas at once), choosing the less busy of two replicas at random, so N robots spread
over the replicas. Replicas take one GPU each where the cluster has GPUs, else one CPU slot each;
Ray places them on whatever nodes `ray start` joined.

Differences from `vla-ros serve` that a client can see: metadata `replicas` is the fleet's size and
`ray_replica` names the replica that holds the connection; messages over 16 MiB (uvicorn's websocket
limit in Ray's proxy) close the connection (1009), so `--max-message-mb` is at most 8 here.

Security: without `--ray-address` the cluster is a new one on this machine, every Ray port bound to
loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray take 127.0.0.1 as the node address); the
proxy binds `--host` (127.0.0.1 by default). Ray itself moves data between its processes with
pickle, so a Ray cluster must only ever be reachable by trusted machines (Ray's token auth is on by
default); robots talk only to the proxy, which speaks msgpack.

Ray is an optional extra (`pip install .[fleet]`, or VLA_ROS_FLEET=1 for scripts/bootstrap.sh);
this module imports it only when called.
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations (WebSocket,
# imported inside build_app) at runtime, and a string annotation it cannot resolve makes the
# websocket a query parameter (every connection refused with 403).
from collections.abc import Callable, Mapping, Sequence
import dataclasses
import logging
import os
import sys
from typing import Any

from vla_ros.errors import ConfigError

log = logging.getLogger(__name__)

APP_NAME = "vla_ros"
# Ray's proxy runs uvicorn with its default websocket limit (16 MiB): a larger message closes the
# connection before a replica sees it, so the limit that answers with an error frame is half of it.
PROXY_MAX_MESSAGE_BYTES = 16 * 2**20
MAX_MESSAGE_BYTES = PROXY_MAX_MESSAGE_BYTES // 2
# Connections one replica holds at most (each is one ongoing request for Ray Serve, for its lifetime).
MAX_CONNECTIONS_PER_REPLICA = 256
# Read by ray_constants at import: 0 makes Ray use 127.0.0.1 as the node address, binding loopback only.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
INSTALL_HINT = "Ray Serve is an optional extra: pip install 'vla_ros[fleet]' (or VLA_ROS_FLEET=1 bash " \
    "scripts/bootstrap.sh), i.e. ray[serve]"


def require_ray() -> None:
    """ConfigError naming the extra when Ray Serve's packages are not installed; imports none of them."""
    import importlib.util

    # Top-level names only: find_spec("ray.serve") would import ray (before start_local_cluster's switch).
    # The ray wheel always holds ray.serve; its [serve] extra brings the web stack.
    missing = [name for name in ("ray", "fastapi", "starlette", "uvicorn")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError("--ray", f"{INSTALL_HINT} (no module {', '.join(missing)})")


@dataclasses.dataclass
class ReplicaConfig:
    """What each replica builds (pickled by Ray to the replicas; the API key travels inside the cluster).

    policy: a no-argument callable returning the policy (e.g. functools.partial(Policy.from_checkpoint,
        directory, options)); called once in each replica. Ray sets OMP_NUM_THREADS to a CPU replica's
        slots; PolicyOptions.num_threads sets torch's threads explicitly.
    The rest are PolicyServer's arguments.
    """

    policy: Callable[[], Any]
    obs_format: str = "slots"
    api_key: str | None = None
    request_timeout: float = 30.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    default_prompt: str | None = None
    metadata: Mapping[str, Any] | None = None


def start_local_cluster(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """A new single-node Ray cluster in this process's session, every port on loopback.

    Ray reads LOOPBACK_ENV when it is imported (here, and in every process it starts); where this
    process imported it earlier, the constant it set is switched too. A node that still is not on
    loopback gets a warning.
    """
    os.environ[LOOPBACK_ENV] = "0"
    import ray

    constants = sys.modules.get("ray._private.ray_constants")
    if getattr(constants, "ENABLE_RAY_CLUSTER", False):  # ray was imported before the switch was set
        constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
        log_to_driver=False, configure_logging=False,
    )
    address = ray.util.get_node_ip_address()
    if address not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "the local Ray cluster uses address %s, not loopback: its ports may be reachable from other "
            "machines", address)


def connect_cluster(address: str) -> None:
    """Join a running cluster (`ray start --head ...`; "auto": the one on this machine)."""
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)


def start_proxy(host: str, port: int) -> None:
    """Ray Serve's HTTP proxy on the head node only, listening on host:port (port 0 is not allowed)."""
    from ray import serve

    if not 0 < port <= 65535:
        raise ConfigError("--port", f"Ray Serve needs a fixed port, 1..65535; got {port}")
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")


def actor_options(gpus: bool, cpus_per_replica: float = 1.0) -> dict[str, Any]:
    """One GPU per replica where the cluster has GPUs, else `cpus_per_replica` CPU slots."""
    return {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": cpus_per_replica}


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


def _bind_replica_grpc_to_node_address() -> None:
    """In a replica, before Ray Serve starts it: its inter-deployment gRPC server on the node address.

    Ray Serve (2.60) binds each replica's gRPC server to "[::]:0", every interface, whatever address
    the cluster uses; this makes it bind the node's address (127.0.0.1 on a local cluster), which is
    the one the proxy and other replicas dial. Nothing changes where Ray's code differs.
    """
    import ray

    try:
        import ray.serve._private.replica as replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_vla_ros_node_address", False):
        return
    host = ray.util.get_node_ip_address()
    host = f"[{host}]" if ":" in host else host

    def add_port(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    add_port._vla_ros_node_address = True
    replica.add_port_to_grpc_server = add_port


def build_app(config: ReplicaConfig, replicas: int, options: Mapping[str, Any] | None = None):
    """The Ray Serve application (a bound deployment) of `replicas` PolicyServer replicas."""
    from fastapi import FastAPI, WebSocket
    from ray import serve
    from starlette.responses import PlainTextResponse
    from starlette.websockets import WebSocketDisconnect

    if replicas < 1:
        raise ConfigError("--replicas", f"expected at least 1, got {replicas}")
    app = FastAPI(title="vla_ros policy server", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.ingress(app)
    class PolicyReplica:
        """One policy and one PolicyServer (its checks, queue and timeouts) per replica."""

        def __init__(self, config: ReplicaConfig, replicas: int):
            from vla_ros.remote import codec
            from vla_ros.remote.server import PolicyServer

            _bind_replica_grpc_to_node_address()
            policy = config.policy()
            self.server = PolicyServer(
                policy, config.obs_format, api_key=config.api_key, request_timeout=config.request_timeout,
                max_message_bytes=config.max_message_bytes, metadata=config.metadata,
                default_prompt=config.default_prompt,
            )
            try:
                replica_id = serve.get_replica_context().replica_id.unique_id
            except Exception:  # outside a replica (never in Ray Serve)
                replica_id = str(os.getpid())
            self.server.metadata.update(replicas=replicas, ray_replica=replica_id, fleet="ray-serve")
            self.metadata = codec.encode(self.server.metadata)
            self.server.start_workers()

        @app.get("/healthz")
        def healthz(self) -> PlainTextResponse:
            return PlainTextResponse("OK\n")

        async def _session(self, websocket: WebSocket) -> None:
            import time

            if not self.server.accepts_key(websocket.headers.get("authorization")):
                log.warning("refused a connection from %s: missing or wrong API key", websocket.client)
                await websocket.send_denial_response(PlainTextResponse(
                    "missing or wrong API key: send the header 'Authorization: Api-Key <key>'\n",
                    status_code=401,
                ))
                return
            await websocket.accept()
            prev_total_ms = None
            try:
                await websocket.send_bytes(self.metadata)
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    start = time.perf_counter()
                    data = message.get("bytes")
                    reply = await self.server.reply_frame(data if data is not None else message.get("text"),
                                                          prev_total_ms)
                    if isinstance(reply, str):
                        await websocket.send_text(reply)
                    else:
                        await websocket.send_bytes(reply)
                    prev_total_ms = (time.perf_counter() - start) * 1e3
            except WebSocketDisconnect:
                return

        # openpi's server answers on any path; so do these two routes.
        @app.websocket("/")
        async def root(self, websocket: WebSocket) -> None:
            await self._session(websocket)

        @app.websocket("/{path:path}")
        async def any_path(self, websocket: WebSocket, path: str) -> None:
            await self._session(websocket)

    deployment = serve.deployment(
        PolicyReplica, name="PolicyReplica", num_replicas=replicas,
        max_ongoing_requests=MAX_CONNECTIONS_PER_REPLICA,
        ray_actor_options=dict(options or actor_options(False)),
    )
    return deployment.bind(config, replicas)


def deploy(app: Any, name: str = APP_NAME, route_prefix: str = "/") -> None:
    """Deploy (or update) an application and wait until its replicas are up."""
    deploy_many([(app, name, route_prefix)])


def deploy_many(apps: Sequence[tuple[Any, str, str]]) -> None:
    """Deploy several (app, name, route_prefix) at once (their replicas start together), and wait for them.

    A client reaches an application under a route prefix other than "/" with a slash after it
    (ws://host:port/one/): the prefix alone matches no route of the app.
    """
    from ray import serve

    serve.run_many([serve.RunTarget(app, name, prefix) for app, name, prefix in apps])


def shutdown() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()
