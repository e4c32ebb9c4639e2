"""Control-timer jitter of the policy node, idle and under inference load, in one run.

    python -m vla_ros.ros.timer_jitter --config config/aloha.yaml --checkpoint models/<name> \
        --seconds 10 [--mode thread|process]

(`vla-ros bench --node` runs the same measurement on a tiny checkpoint.)

``measure_timer_jitter`` starts the real VlaPolicyNode (dry run) in this
process and a feeder in a child process that plays the robot: every configured
camera at 30 Hz and joint states at 100 Hz. It then measures the control
timer's period deviation |t_k - t_(k-1) - period| twice: with the inference
worker suspended (idle) and with it running (load). Everything runs on a
private ROS domain, localhost only, under a private topic namespace, so a
robot on the same machine or network never sees the fake sensor data.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import threading
import time
from typing import Any

CAMERA_RATE = 30.0
JOINT_RATE = 100.0
DEFAULT_SIZE = (480, 640)


def _bench_config(
    config: Any,
    checkpoint: str | Path,
    mode: str | None,
    namespace: str,
    switch_interval: float | None,
    overrides: dict | None = None,
):
    from vla_ros.config import NodeConfig

    if not isinstance(config, NodeConfig):
        config = NodeConfig.from_yaml(config)
    flat = config.to_flat()
    flat.update(
        {
            "checkpoint": str(checkpoint),
            "auto_activate": False,
            "dry_run": True,
            "joint_states.topic": f"{namespace}/joint_states",
            "prompt.topic": f"{namespace}/instruction",
            "output.trajectory_topic": f"{namespace}/joint_trajectory",
            "output.position_topic": f"{namespace}/commands" if config.output.position_topic else "",
            "output.debug_trajectory_topic": f"{namespace}/debug/joint_trajectory",
            "output.debug_position_topic": f"{namespace}/debug/commands",
            "policy.warmup_runs": max(1, config.policy.warmup_runs),
        }
    )
    if not config.prompt.default:
        flat["prompt.default"] = "pick up the cube"
    for stream in config.cameras.streams:
        flat[f"cameras.{stream.key}.topic"] = f"{namespace}/{stream.key}/{stream.transport}"
    if mode is not None:
        flat["inference.mode"] = mode
    if switch_interval is not None:
        flat["gil_switch_interval"] = float(switch_interval)
    flat.update(overrides or {})
    return NodeConfig.from_flat(flat)


def _parameters(config) -> list:
    from rclpy.parameter import Parameter

    return [Parameter(name, value=value) for name, value in config.to_flat().items() if value != []]


def _feeder_spec(config) -> dict:
    """Describe what the feeder process publishes, as JSON-able data."""
    lower = [lo if abs(lo) < 1e6 else -1.0 for lo in config.limits.lower]
    upper = [hi if abs(hi) < 1e6 else 1.0 for hi in config.limits.upper]
    return {
        "cameras": [
            {"topic": s.topic, "transport": s.transport, "size": list(s.expected_size or DEFAULT_SIZE)}
            for s in config.cameras.streams
        ],
        "joint_topic": config.joint_states.topic,
        "joint_names": list(config.joint_names),
        "positions": [(lo + hi) / 2.0 for lo, hi in zip(lower, upper)],
        "prompt_topic": config.prompt.topic,
    }


def _run_feeder(spec: dict, seconds: float) -> None:
    """Publish synthetic cameras and joint states for ``seconds`` (the child process)."""
    import numpy as np
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState

    from vla_ros.ros.builtin_time import seconds_to_stamp
    from vla_ros.ros.image_msgs import rgb_to_compressed_msg, rgb_to_image_msg

    rclpy.init()
    node = rclpy.create_node(f"vla_ros_bench_feeder_{os.getpid()}")
    rng = np.random.default_rng(0)

    def now() -> float:
        return node.get_clock().now().nanoseconds * 1e-9

    def camera(entry: dict) -> None:
        h, w = entry["size"]
        rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if entry["transport"] == "compressed":
            msg, msg_type = rgb_to_compressed_msg(rgb, "jpeg"), CompressedImage
        else:
            msg, msg_type = rgb_to_image_msg(rgb, "bgr8"), Image
        pub = node.create_publisher(msg_type, entry["topic"], qos_profile_sensor_data)

        def publish() -> None:
            msg.header.stamp = seconds_to_stamp(now())
            pub.publish(msg)

        node.create_timer(1.0 / CAMERA_RATE, publish)

    for entry in spec["cameras"]:
        camera(entry)
    joint_pub = node.create_publisher(JointState, spec["joint_topic"], qos_profile_sensor_data)
    joints = JointState(name=spec["joint_names"], position=[float(p) for p in spec["positions"]])

    def publish_joints() -> None:
        joints.header.stamp = seconds_to_stamp(now())
        joint_pub.publish(joints)

    node.create_timer(1.0 / JOINT_RATE, publish_joints)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # the benchmark stops the feeder with SIGTERM, which rclpy turns into a shutdown
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _phase(node, seconds: float) -> dict:
    node.period_recorder.reset()
    status0 = node.controller.status(node._now()).values
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    stats = node.period_recorder.stats()
    status = node.controller.status(node._now()).values
    stats["rate_hz"] = (stats["periods"] + 1) / elapsed if stats["periods"] else 0.0
    stats["inferences"] = int(status["inference.requests"]) - int(status0["inference.requests"])
    return stats


def measure_timer_jitter(
    config: Any,
    checkpoint: str | Path,
    seconds: float = 10.0,
    *,
    mode: str | None = None,
    switch_interval: float | None = None,
    settle: float = 1.5,
    overrides: dict | None = None,
) -> dict:
    """Timer period deviation p50 / p99 / max (ms), idle vs under inference load, in one run.

    config: a NodeConfig or the path of a parameter YAML (node 'vla_policy').
    checkpoint: checkpoint or artifact directory.
    seconds: length of each phase. mode: override inference.mode ('thread' / 'process').
    switch_interval: override gil_switch_interval (0 = Python's default).
    overrides: further parameters to set, {name: value} (e.g. {'executor_threads': 6}).
    Returns {'mode', 'control_rate', 'seconds', 'gil_switch_interval', 'idle': {...}, 'load': {...},
    'inference': {...}} with phase dicts {'p50_ms', 'p99_ms', 'max_ms', 'periods', 'rate_hz', 'inferences'}.
    """
    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    # A private domain, on localhost: the fake sensor data never reaches a robot.
    os.environ["ROS_DOMAIN_ID"] = os.environ.get("VLA_ROS_BENCH_DOMAIN_ID", str(os.getpid() % 100 + 1))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    namespace = f"/vla_ros_bench_{os.getpid()}"
    cfg = _bench_config(config, checkpoint, mode, namespace, switch_interval, overrides)
    previous_interval = sys.getswitchinterval()

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import ExternalShutdownException, ShutdownException
    from rclpy.lifecycle import TransitionCallbackReturn

    from vla_ros.ros.node import make_executor, VlaPolicyNode

    context = Context()
    rclpy.init(context=context)
    feeder = None
    node = None
    executor = make_executor(cfg.executor_threads, context=context)

    def spin_until_shutdown() -> None:
        try:
            executor.spin()
        except (ExternalShutdownException, ShutdownException):
            pass  # the context is shut down when the measurement ends

    spin = threading.Thread(target=spin_until_shutdown, daemon=True)
    try:
        node = VlaPolicyNode(context=context, parameter_overrides=_parameters(cfg))
        executor.add_node(node)
        spin.start()
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError("the node did not configure; see its log above")
        node.worker.suspend()
        feeder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vla_ros.ros.timer_jitter",
                "--feed",
                json.dumps(_feeder_spec(cfg)),
                "--seconds",
                str(2 * seconds + 4 * settle + 10),
            ],
            env=dict(os.environ),
        )
        node.trigger_activate()
        node.worker.suspend()  # activate resumes it: the idle phase runs without inference
        time.sleep(settle * 2)  # discovery and the first frames
        idle = _phase(node, seconds)
        node.worker.resume()
        time.sleep(settle)
        load = _phase(node, seconds)
        status = node.controller.status(node._now()).values
        inference = {
            k.split(".", 1)[1]: status[k]
            for k in (
                "inference.latency_p50_ms",
                "inference.latency_p99_ms",
                "inference.compute_p50_ms",
                "inference.compute_p99_ms",
                "inference.requests",
                "inference.failures",
            )
        }
        return {
            "mode": cfg.inference.mode,
            "executor_threads": cfg.executor_threads,
            "control_timer": cfg.control_timer,
            "control_rate": cfg.control_rate,
            "seconds": seconds,
            "gil_switch_interval": sys.getswitchinterval(),
            "idle": idle,
            "load": load,
            "inference": inference,
        }
    finally:
        if feeder is not None:
            feeder.terminate()
            try:
                feeder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                feeder.kill()
        if node is not None:
            node.release()
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        sys.setswitchinterval(previous_interval)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def format_report(result: dict) -> str:
    lines = [
        f"control timer {result['control_rate']:g} Hz ({result['control_timer']}), inference in a "
        f"{result['mode']}, executor threads {result['executor_threads']}, GIL switch interval "
        f"{result['gil_switch_interval'] * 1e3:g} ms, {result['seconds']:g} s per phase"
    ]
    for phase in ("idle", "load"):
        r = result[phase]
        lines.append(
            f"  {phase:5s} period deviation p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
            f"max {r['max_ms']:7.2f} ms  rate {r['rate_hz']:5.1f} Hz  inferences {r['inferences']}"
        )
    inf = result["inference"]
    lines.append(
        f"  inference latency p50 {inf['latency_p50_ms']:.1f} ms p99 {inf['latency_p99_ms']:.1f} ms "
        f"(compute p50 {inf['compute_p50_ms']:.1f} ms), {inf['requests']} requests, "
        f"{inf['failures']} failures"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="node parameter YAML (default: the package's config/aloha.yaml)"
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint or artifact directory")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (idle, load)")
    parser.add_argument("--mode", choices=("thread", "process"), help="override inference.mode")
    parser.add_argument(
        "--switch-interval", type=float, help="override gil_switch_interval (s; 0 = Python's)"
    )
    parser.add_argument(
        "--continuous",
        action="store_true",
        help="run inferences back to back (inference.trigger 'rate' at 1000 Hz): the worst case",
    )
    parser.add_argument("--executor-threads", type=int, help="override executor_threads")
    parser.add_argument("--control-timer", choices=("dedicated", "shared"), help="override control_timer")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--feed", help=argparse.SUPPRESS)  # internal: run as the feeder process


def run(args: argparse.Namespace) -> int:
    if args.feed:
        _run_feeder(json.loads(args.feed), args.seconds)
        return 0
    if args.checkpoint is None:
        from vla_ros.errors import ConfigError

        raise ConfigError("--checkpoint", "required: a checkpoint or artifact directory")
    config = args.config or Path(__file__).resolve().parents[2] / "config" / "aloha.yaml"
    overrides: dict = {}
    if args.continuous:
        overrides.update({"inference.trigger": "rate", "inference.rate": 1000.0})
    if args.executor_threads is not None:
        overrides["executor_threads"] = args.executor_threads
    if args.control_timer is not None:
        overrides["control_timer"] = args.control_timer
    result = measure_timer_jitter(
        config,
        args.checkpoint,
        args.seconds,
        mode=args.mode,
        switch_interval=args.switch_interval,
        overrides=overrides,
    )
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vla_ros.ros.timer_jitter", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
