"""`vla-ros serve`: the policy behind openpi's websocket protocol (docs/remote.md).

Any openpi client (openpi_client.websocket_client_policy.WebsocketClientPolicy) talks to it:
metadata first on connect, then one msgpack observation in, one {"actions", "server_timing",
"policy_timing"} out; a bad request gets a text error frame and the connection stays open.

Security: the server binds 127.0.0.1 unless --host says otherwise (any other address prints a
warning); --api-key-env NAME requires the header `Authorization: Api-Key <key>` with the key
read from the environment variable NAME (never from the command line, where `ps` shows it);
requests are msgpack with numpy arrays only, never pickle.

`--ray` deploys the same server as a Ray Serve application (vla_ros/remote/fleet.py): `--replicas`
copies of the policy, one per GPU or CPU slot, placed by Ray on the cluster of `--ray-address`
(default: a new one on this machine, on loopback); robots see the same protocol.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys

from vla_ros.errors import ConfigError

# --robot-transform auto: the transform openpi's policies of each format apply to their inputs.
AUTO_TRANSFORMS = {"aloha": "aloha"}
DEFAULT_MAX_MESSAGE_MB = 64.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vla_ros.remote.obs_formats import FORMAT_NAMES, FORMATS
    from vla_ros.remote.server import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_REQUEST_TIMEOUT_S
    from vla_ros.tools.infer import add_convention_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "observation formats (--obs-format):\n" + "\n".join(
        f"  {name:<7} {fmt.description}" for name, fmt in FORMATS.items()
    ) + "\nsee docs/remote.md for the keys of each"
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="checkpoint directory")
    source.add_argument("--artifacts", type=Path, help="`vla-ros export` artifact directory")
    parser.add_argument(
        "--host", default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 opens the port "
        "to the network: use it with --api-key-env and a firewall)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument(
        "--obs-format", default="slots", choices=FORMAT_NAMES,
        help="request convention: openpi's aloha, droid or libero, or vla_ros's slots (default)",
    )
    parser.add_argument(
        "--api-key-env", metavar="NAME",
        help="require the header 'Authorization: Api-Key <key>', the key read from environment variable NAME",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, metavar="S",
        help=f"seconds from a request's arrival to its answer, else an error frame (default "
        f"{DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_MB, metavar="MB",
        help="larger requests get an error frame (default 64, at most 8 with --ray; twice that closes the "
        "connection)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1,
        help="copies of the policy: in this process, each with its own inference thread; with --ray, Ray "
        "Serve replicas, one per GPU (else per CPU slot) (default 1)",
    )
    parser.add_argument(
        "--ray", action="store_true",
        help="serve from a Ray Serve application (optional extra: pip install 'vla_ros[fleet]')",
    )
    parser.add_argument(
        "--ray-address", metavar="ADDRESS",
        help="--ray: the cluster to join ('auto': the one `ray start` built on this machine, or "
        "HOST:PORT of its head); default: a new single-machine cluster with every port on loopback",
    )
    parser.add_argument("--default-prompt", help="prompt of requests that carry none (default: required)")
    parser.add_argument(
        "--robot-transform", default="auto",
        help="robot conventions: identity, aloha, or auto (default: aloha for --obs-format aloha, as "
        "openpi's ALOHA policies adapt the state, else identity)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument(
        "--engine", default="auto", help="prefix engine: auto, pytorch, onnx, tensorrt or reference")
    parser.add_argument("--suffix", default="auto", help="suffix engine: auto, eager, compiled or cuda_graph")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the checkpoint's)")
    parser.add_argument(
        "--action-dims", type=int, default=None, help="action dims to return (default: one per state entry)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the server's noise (default 0)")
    add_convention_arguments(parser)


def api_key_from_env(name: str | None) -> str | None:
    """The key in environment variable `name` (None: no key); ConfigError if it is unset or empty."""
    if name is None:
        return None
    value = os.environ.get(name, "")
    if not value.strip():
        raise ConfigError(
            "--api-key-env", f"environment variable {name} is unset or empty; export the key in it")
    return value.strip()


def server_settings(args: argparse.Namespace, log=print) -> dict:
    """What a server needs from the arguments, checked against the checkpoint without loading it.

    Keys: fmt, api_key, options (PolicyOptions), directory, spec, load (Policy.from_checkpoint or
    Policy.from_artifacts), max_message_bytes. ConfigError for bad flags.
    """
    from vla_ros.policy import check_fits, Policy, read_spec
    from vla_ros.remote.obs_formats import get_format, PolicyShape
    from vla_ros.remote.server import is_loopback
    from vla_ros.tools.infer import policy_options

    fmt = get_format(args.obs_format)
    api_key = api_key_from_env(args.api_key_env)
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"expected 0..65535, got {args.port}")
    if args.replicas < 1:
        raise ConfigError("--replicas", f"expected at least 1, got {args.replicas}")
    if not (args.request_timeout > 0 and args.request_timeout < float("inf")):
        raise ConfigError("--request-timeout", f"expected seconds > 0, got {args.request_timeout}")
    if not args.max_message_mb > 0:
        raise ConfigError("--max-message-mb", f"expected a size > 0, got {args.max_message_mb}")
    if args.steps is not None and args.steps < 1:
        raise ConfigError("--steps", f"expected at least 1 Euler step, got {args.steps}")
    transform = args.robot_transform
    if transform == "auto":
        transform = AUTO_TRANSFORMS.get(fmt.name, "identity")
    options = policy_options(args, action_dims=args.action_dims, robot_transform=transform, seed=args.seed)
    directory = args.artifacts or args.checkpoint
    # Before the (slow) load: the format's requests must fit the checkpoint.
    spec = read_spec(directory, options)
    shape = PolicyShape.from_spec(spec, args.default_prompt)
    fmt.check_policy(shape)
    flag = "--checkpoint" if args.checkpoint else "--artifacts"
    for warning in check_fits(
        spec, fmt.state_dim or spec.state_dim, options.action_dims, joints_from="--obs-format",
        joints_label=f"{fmt.name} requests carry {fmt.state_dim or spec.state_dim} state entries",
        action_dims_from="--action-dims", checkpoint_from=flag, asset_id_from=None,
    ):
        log(f"warning: {warning}", file=sys.stderr)
    if not is_loopback(args.host):
        log(
            f"warning: --host {args.host!r} listens beyond this machine: anyone who can reach it can run the "
            f"policy{'' if api_key else ' (no --api-key-env given)'}; keep it behind a firewall or VPN",
            file=sys.stderr,
        )
    load = Policy.from_artifacts if args.artifacts else Policy.from_checkpoint
    return dict(fmt=fmt, api_key=api_key, options=options, directory=directory, spec=spec, load=load,
                max_message_bytes=int(args.max_message_mb * 2**20))


def build_server(args: argparse.Namespace, log=print):
    """The PolicyServer the arguments describe, policies loaded (ConfigError: bad flags, before the load)."""
    from vla_ros.remote.server import PolicyServer

    s = server_settings(args, log)
    policies = [s["load"](s["directory"], s["options"]) for _ in range(args.replicas)]
    return PolicyServer(
        policies, s["fmt"], spec=policies[0].spec, host=args.host, port=args.port, api_key=s["api_key"],
        request_timeout=args.request_timeout, max_message_bytes=s["max_message_bytes"],
        default_prompt=args.default_prompt,
    )


def run_fleet(args: argparse.Namespace, log=print) -> int:
    """`--ray`: deploy the server on Ray Serve and keep it up until Ctrl-C."""
    import functools
    import time

    from vla_ros.remote import fleet

    fleet.require_ray()
    if args.replicas < 1:
        raise ConfigError("--replicas", f"expected at least 1, got {args.replicas}")
    if not 0 < args.port <= 65535:
        raise ConfigError("--port", f"--ray needs a fixed port, 1..65535; got {args.port}")
    s = server_settings(args, log)
    max_bytes = s["max_message_bytes"]
    if max_bytes > fleet.MAX_MESSAGE_BYTES:
        if args.max_message_mb != DEFAULT_MAX_MESSAGE_MB:
            log(f"note: --ray caps --max-message-mb at {fleet.MAX_MESSAGE_BYTES / 2**20:g} (Ray's proxy "
                f"closes connections on messages over {fleet.PROXY_MAX_MESSAGE_BYTES / 2**20:g} MiB)",
                file=sys.stderr)
        max_bytes = fleet.MAX_MESSAGE_BYTES
    if args.ray_address:
        fleet.connect_cluster(args.ray_address)
    else:
        fleet.start_local_cluster()
    try:
        gpus = fleet.cluster_gpus() if args.device in ("auto", "cuda") else 0
        have, unit = (gpus, "GPU") if gpus else (fleet.cluster_cpus(), "CPU slot")
        if args.replicas > have:
            problem = (f"{args.replicas} replicas take one {unit} each; the cluster has {have}"
                       + ("" if args.ray_address else " (pass --ray-address of a larger cluster)"))
            if not args.ray_address:
                raise ConfigError("--replicas", problem)
            log(f"warning: {problem}: Ray starts the others when nodes join", file=sys.stderr)
        config = fleet.ReplicaConfig(
            functools.partial(s["load"], s["directory"], s["options"]), s["fmt"].name, api_key=s["api_key"],
            request_timeout=args.request_timeout, max_message_bytes=max_bytes,
            default_prompt=args.default_prompt,
        )
        fleet.start_proxy(args.host, args.port)
        log(f"deploying {args.replicas} replica(s) on Ray Serve (one {unit} each)", flush=True)
        fleet.deploy(fleet.build_app(config, args.replicas, fleet.actor_options(gpus > 0)))
        spec = s["spec"]
        key = " (API key required)" if s["api_key"] else ""
        host = f"[{args.host}]" if ":" in args.host else args.host
        log(
            f"serving {spec.checkpoint} ({spec.config_name}, horizon {spec.action_horizon}) from "
            f"{args.replicas} Ray Serve replica(s) on ws://{host}:{args.port}{key}; obs format "
            f"{s['fmt'].name}; health: http://{host}:{args.port}/healthz",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        fleet.shutdown()


def run(args: argparse.Namespace) -> int:
    import logging

    # Connections opening and closing, refused keys, policy errors: vla_ros.remote logs them at INFO.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vla_ros.remote").setLevel(logging.INFO)
    if args.ray:
        return run_fleet(args)
    if args.ray_address:
        raise ConfigError("--ray-address", "needs --ray")
    server = build_server(args)
    spec = server.spec

    def ready(server) -> None:
        key = " (API key required)" if server.metadata.get("api_key_required") else ""
        print(
            f"serving {spec.checkpoint} ({spec.config_name}, horizon {spec.action_horizon}, "
            f"{server.metadata['action_dim']} action dims) on {server.address}{key}; obs format "
            f"{server.format.name}; health: http://{args.host}:{server.port}/healthz",
            flush=True,
        )

    server.serve_forever(ready)
    return 0
