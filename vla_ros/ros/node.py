"""The ``vla_policy`` lifecycle node: cameras, joint states and a prompt in; trajectories out.

    ros2 run vla_ros vla_policy_node --ros-args --params-file config/aloha.yaml \
        -p checkpoint:=/path/to/models/<name> -p auto_activate:=true

Lifecycle (managed node, as in ros2/demos lifecycle_py):
  configure   read and validate the parameters, load the policy (in a worker
              thread's runner or a separate process), warm it up, create the
              subscriptions, publishers, timers and services
  activate    start inference and publishing (from a clean slate)
  deactivate  publish one hold at the last command, stop inference and publishing
  cleanup     free everything configure created
``auto_activate: true`` runs configure and activate at start-up.

Threads: subscriptions share a reentrant callback group; the control timer
has a mutually exclusive group of its own; diagnostics and the ~/pause,
~/resume services a third. Inference runs in InferenceWorker's thread (not an
executor callback) and hands chunks straight to the controller. All the
logic lives in vla_ros.controller.PolicyController; this module only wires
topics to it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    SingleThreadedExecutor,
)
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    qos_profile_sensor_data,
    qos_profile_system_default,
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_ros.config import DEFAULT_NODE_NAME, NodeConfig
from vla_ros.controller import PeriodRecorder, PolicyController
from vla_ros.errors import ConfigError
from vla_ros.ros.conversions import (
    compressed_to_rgb,
    diagnostic_status,
    float64_array_msg,
    image_to_rgb,
    stamp_to_seconds,
    trajectory_msg,
)
from vla_ros.ros.inference_worker import InferenceWorker, make_runner, warmup_observation
from vla_ros.ros.joint_state_merge import joint_state_reader
from vla_ros.ros.params import declare_parameters, read_parameters

RELIABLE_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)
QOS = {
    "sensor_data": qos_profile_sensor_data,
    "reliable": RELIABLE_QOS,
    "system_default": qos_profile_system_default,
}
WARNING_PERIOD = 5.0  # seconds between repeated warnings about one input


class DedicatedTimer:
    """A timer with a thread of its own: a hidden helper node spun by a SingleThreadedExecutor.

    rclpy executors run their scheduling loop in Python under the GIL; with
    cameras and joint states arriving at a few hundred messages per second
    the node's own executor can delay a timer by tens of milliseconds (see
    vla_ros.ros.timer_jitter). This executor waits on one timer only, so the
    callback runs as soon as the timer is due and the GIL is free. The helper
    node follows the parent's use_sim_time and has no parameter services.
    """

    def __init__(self, parent: Node, period: float, callback: Callable[[], None]):
        use_sim_time = parent.get_parameter("use_sim_time").value
        self.node = Node(
            f"_{parent.get_name()}_control",
            namespace=parent.get_namespace(),
            context=parent.context,
            start_parameter_services=False,
            enable_rosout=False,
            parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)],
        )
        self.executor = SingleThreadedExecutor(context=parent.context)
        self.executor.add_node(self.node)
        self.timer = self.node.create_timer(period, callback)
        self.thread = threading.Thread(target=self._spin, name="vla_ros-control", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, ShutdownException):
            pass  # Ctrl-C / rclpy.shutdown: main() cleans up

    def destroy(self) -> None:
        # Order matters at Ctrl-C: destroying a node whose executor thread still waits
        # on its handles crashes rcl (seen as SIGSEGV). Stop the timer, stop the
        # executor, and destroy only once the thread has really finished.
        self.timer.cancel()
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        if self.thread.is_alive():
            self.node.get_logger().warning("control thread did not stop; leaving its node to process exit")
            return
        self.node.destroy_timer(self.timer)
        self.node.destroy_node()


class VlaPolicyNode(LifecycleNode):
    """Runs a pi0 / pi0.5 policy on live sensor data and publishes joint trajectories.

    policy_factory: zero-argument callable returning an object with the
        Policy.infer interface, used instead of loading ``checkpoint`` (tests,
        benchmarks). It must be picklable for inference.mode 'process'.
    """

    def __init__(
        self,
        node_name: str = DEFAULT_NODE_NAME,
        *,
        policy_factory: Callable[[], Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(node_name, **kwargs)
        self._policy_factory = policy_factory
        declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.config: NodeConfig | None = None
        self.controller: PolicyController | None = None
        self.worker: InferenceWorker | None = None
        self.runner: Any = None
        self.period_recorder: PeriodRecorder | None = None
        self._active = False
        self._output_lock = threading.Lock()
        self._warned: dict[str, float] = {}
        self._input_subscriptions: list[Any] = []
        self._owned_timers: list[Any] = []
        self._owned_services: list[Any] = []
        self._traj_pub = None
        self._pos_pub = None
        self._diag_pub = None
        self._last_level = ""
        self._control_timer: DedicatedTimer | None = None
        self._sim_time = False

    # ----------------------------------------------------------- helpers ---

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn_throttled(self, key: str, text: str) -> None:
        t = time.monotonic()
        if t - self._warned.get(key, -1e9) >= WARNING_PERIOD:
            self._warned[key] = t
            self.get_logger().warning(text)

    @property
    def active(self) -> bool:
        return self._active

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Parameters take effect at configure: refuse changes while the node is configured."""
        if self.config is None or all(p.name == "use_sim_time" for p in parameters):
            return SetParametersResult(successful=True)
        return SetParametersResult(
            successful=False,
            reason="vla_policy reads its parameters at configure: deactivate and clean up the node, "
            "set them, then configure again",
        )

    # --------------------------------------------------------- lifecycle ---

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            config = NodeConfig.from_flat(read_parameters(self))
            if not config.checkpoint and self._policy_factory is None:
                raise ConfigError("checkpoint", "required: a checkpoint or exported artifact directory")
        except ConfigError as exc:
            log.error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        try:
            runner = make_runner(
                config.inference.mode,
                config.checkpoint,
                config.policy.to_policy_options(),
                timeout=config.inference.timeout,
                policy_factory=self._policy_factory,
            )
        except Exception as exc:  # a missing file, a bad engine: stay unconfigured, say why
            log.error(
                f"configure failed: cannot load the policy from '{config.checkpoint}': "
                f"{type(exc).__name__}: {exc}"
            )
            return TransitionCallbackReturn.FAILURE
        try:
            self._warm_up(config, runner)
        except Exception as exc:
            runner.close()
            log.error(f"configure failed: warm-up inference failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE

        if config.gil_switch_interval > 0.0:
            sys.setswitchinterval(config.gil_switch_interval)
        self.config = config
        self.runner = runner
        self.controller = PolicyController(config)
        self.period_recorder = PeriodRecorder(config.control_period)
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self._create_entities(config)
        self.worker = InferenceWorker(
            self.controller,
            runner,
            self._now,
            on_error=lambda m: self._warn_throttled("inference", f"inference failed: {m}"),
        )
        self.worker.start()
        log.info(
            f"configured: {config.num_joints} joints, cameras {list(config.cameras.keys)}, "
            f"control {config.control_rate:g} Hz, inference in a {runner.mode}"
            f"{', dry run' if config.dry_run else ''}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _warm_up(self, config: NodeConfig, runner: Any) -> None:
        sizes = {s.key: s.expected_size or (224, 224) for s in config.cameras.streams}
        obs = warmup_observation(sizes, config.num_joints, config.prompt.default or "warm up")
        for i in range(config.policy.warmup_runs):
            start = time.perf_counter()
            chunk = runner.infer(obs)
            actions = chunk.actions
            if actions.ndim != 2 or actions.shape[1] != config.num_joints:
                raise ConfigError(
                    "joint_names",
                    f"the policy returns actions of shape {tuple(actions.shape)}, "
                    f"but {config.num_joints} joints are configured",
                )
            latency = time.perf_counter() - start
            runs = config.policy.warmup_runs
            self.get_logger().info(f"warm-up inference {i + 1}/{runs}: {latency * 1e3:.1f} ms")
            if i + 1 == config.policy.warmup_runs:
                # The next chunk must arrive before the current one runs out.
                duration = actions.shape[0] * config.policy.action_period
                budget = duration * (1.0 - config.inference.execute_threshold)
                if config.inference.trigger == "threshold" and latency > budget:
                    self.get_logger().warning(
                        f"an inference takes {latency * 1e3:.0f} ms but only {budget * 1e3:.0f} ms of a "
                        f"{duration:.2f} s chunk remain after inference.execute_threshold "
                        f"{config.inference.execute_threshold:g}: the robot will hold between chunks; lower "
                        "the threshold or use a faster engine"
                    )

    def _create_entities(self, config: NodeConfig) -> None:
        # With a MultiThreadedExecutor (executor_threads > 1): one mutually
        # exclusive group per camera and one for joint states and the prompt,
        # so a camera never decodes two frames at once; the control timer
        # ('shared') has a group of its own, diagnostics and services a third.
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._state_group = MutuallyExclusiveCallbackGroup()
        self._misc_group = MutuallyExclusiveCallbackGroup()
        out = config.output
        traj_topic = out.debug_trajectory_topic if config.dry_run else out.trajectory_topic
        pos_topic = (
            (out.debug_position_topic if config.dry_run else out.position_topic) if out.position_topic else ""
        )
        if out.trajectory_topic:
            self._traj_pub = self.create_lifecycle_publisher(JointTrajectory, traj_topic, RELIABLE_QOS)
        if pos_topic:
            self._pos_pub = self.create_lifecycle_publisher(Float64MultiArray, pos_topic, RELIABLE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        read_joint_state = joint_state_reader(
            config.joint_names, config.joint_states.merge_partial, config.joint_states.max_staleness
        )
        subs = self._input_subscriptions
        for stream in config.cameras.streams:
            compressed = stream.transport == "compressed"
            subs.append(
                self.create_subscription(
                    CompressedImage if compressed else Image,
                    stream.topic,
                    self._image_callback(stream.key, compressed),
                    QOS[config.cameras.qos_of(stream.key)],
                    callback_group=MutuallyExclusiveCallbackGroup(),
                )
            )
        subs.append(
            self.create_subscription(
                JointState,
                config.joint_states.topic,
                self._joint_state_callback(read_joint_state),
                QOS[config.joint_states.qos],
                callback_group=self._state_group,
            )
        )
        subs.append(
            self.create_subscription(
                String, config.prompt.topic, self._on_prompt, RELIABLE_QOS, callback_group=self._state_group
            )
        )

        if config.control_timer == "dedicated":
            self._control_timer = DedicatedTimer(self, config.control_period, self._on_control_timer)
        else:
            self._owned_timers.append(
                self.create_timer(
                    config.control_period, self._on_control_timer, callback_group=self._control_group
                )
            )
        self._owned_timers.append(
            self.create_timer(
                1.0 / config.diagnostics.rate, self._on_diagnostics_timer, callback_group=self._misc_group
            )
        )
        self._owned_services.append(
            self.create_service(Trigger, "~/pause", self._on_pause, callback_group=self._misc_group)
        )
        self._owned_services.append(
            self.create_service(Trigger, "~/resume", self._on_resume, callback_group=self._misc_group)
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.controller.activate(self._now())
        self.period_recorder.reset()
        self.worker.resume()
        self._active = True
        self.get_logger().info("activated: running the policy")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._output_lock:
            self._active = False
            plan = self.controller.hold_plan("node deactivated")
            if plan is not None:
                self._publish(plan)
        self.worker.suspend()
        self.get_logger().info("deactivated: holding at the last command")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Stop inference and destroy what configure created (idempotent)."""
        self._active = False
        if self._control_timer is not None:
            self._control_timer.destroy()
            self._control_timer = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        for timer in self._owned_timers:
            self.destroy_timer(timer)
        for sub in self._input_subscriptions:
            self.destroy_subscription(sub)
        for service in self._owned_services:
            self.destroy_service(service)
        self._owned_timers, self._input_subscriptions, self._owned_services = [], [], []
        with self._output_lock:  # no publish in flight while the publishers go
            for name in ("_traj_pub", "_pos_pub"):
                pub = getattr(self, name)
                if pub is not None:
                    self.destroy_lifecycle_publisher(pub)
                    setattr(self, name, None)
            if self._diag_pub is not None:
                self.destroy_publisher(self._diag_pub)
                self._diag_pub = None
        self.controller = None
        self.config = None

    def autostart(self) -> bool:
        """Configure and activate (auto_activate); False, with the reason logged, if either fails."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("auto_activate: configure failed; fix the parameters and configure again")
            return False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("auto_activate: activate failed")
            return False
        return True

    def release(self) -> None:
        """Stop the worker and the policy process (at exit, whatever the lifecycle state)."""
        self._release()

    # ------------------------------------------------------------ inputs ---

    def _image_callback(self, key: str, compressed: bool) -> Callable[[Any], None]:
        convert = compressed_to_rgb if compressed else image_to_rgb

        def callback(msg: Any) -> None:
            controller = self.controller
            if controller is None:
                return
            receipt = self._now()
            try:
                rgb = convert(msg)
            except Exception as exc:  # ImageConversionError, or anything a broken message causes
                detail = f"camera {key}: {exc}"
                controller.on_input_error(key, detail, receipt, reason="invalid_image")
                self._warn_throttled(f"image:{key}:{str(exc)[:24]}", f"rejected {detail}")
                return
            stamp = stamp_to_seconds(msg.header.stamp)
            if not controller.on_image(key, rgb, stamp, receipt):
                self._warn_throttled(
                    f"image:{key}", f"rejected a frame of camera {key}: " f"{_last_detail(controller, key)}"
                )
            elif stamp <= 0.0:
                self._warn_throttled(
                    f"stamp:{key}", f"camera {key}: header stamp is zero; using the receipt time"
                )

        return callback

    def _joint_state_callback(
        self, read: Callable[[JointState, float], tuple[Any, float]]
    ) -> Callable[[JointState], None]:
        def callback(msg: JointState) -> None:
            controller = self.controller
            if controller is None:
                return
            receipt = self._now()
            try:
                positions, stamp = read(msg, receipt)
            except Exception as exc:
                controller.on_input_error(
                    "joint_state", f"joint state: {exc}", receipt, reason="invalid_state"
                )
                self._warn_throttled(f"joint_state:{str(exc)[:24]}", f"rejected joint state: {exc}")
                return
            if not controller.on_joint_state(positions, stamp, receipt):
                self._warn_throttled(
                    "joint_state", "rejected joint state: " f"{_last_detail(controller, 'joint_state')}"
                )
            elif stamp <= 0.0:
                self._warn_throttled(
                    "stamp:joint_state", "joint state: header stamp is zero; using the receipt time"
                )

        return callback

    def _on_prompt(self, msg: String) -> None:
        controller = self.controller
        if controller is None:
            return
        if controller.on_prompt(msg.data, self._now()):
            self.get_logger().info(f"instruction: '{msg.data.strip()}'")
        else:
            self._warn_throttled("prompt", "rejected an empty instruction; keeping the previous prompt")

    # ------------------------------------------------------------ output ---

    def _on_control_timer(self) -> None:
        self.period_recorder.record(time.monotonic(), self._now() if self._sim_time else None)
        if not self._active:
            return
        with self._output_lock:
            if not self._active:
                return
            plan = self.controller.tick(self._now())
            if plan is None:
                return
            try:
                self._publish(plan)
            except Exception:
                if self.context.ok():
                    raise
                # Shutting down (Ctrl-C): the publishers' context is already gone.

    def _publish(self, plan: Any) -> None:
        if self._traj_pub is not None:
            velocities = plan.velocities if self.config.output.velocities else None
            self._traj_pub.publish(
                trajectory_msg(self.config.joint_names, plan.times_from_start, plan.positions, velocities)
            )
        if self._pos_pub is not None:
            self._pos_pub.publish(float64_array_msg(plan.positions[0]))

    def _on_pause(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        changed = self.controller.pause()
        response.success = True
        response.message = "paused: holding at the last command" if changed else "already paused"
        if changed:
            self.get_logger().info("paused by ~/pause")
        return response

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        changed = self.controller.resume(self._now())
        response.success = True
        response.message = "resumed: executing fresh action chunks" if changed else "not paused"
        if changed:
            self.get_logger().info("resumed by ~/resume")
        return response

    def _on_diagnostics_timer(self) -> None:
        controller = self.controller
        if controller is None or self._diag_pub is None:
            return
        now = self._now()
        status = controller.status(now)
        level, message = status.level, status.message
        if not self._active:
            level, message = "WARN", "node inactive (activate it to run the policy)"
        values = {"lifecycle": "active" if self._active else "inactive"}
        values.update(status.values)
        jitter = self.period_recorder.stats()
        values["timer.period_jitter_p50_ms"] = jitter["p50_ms"]
        values["timer.period_jitter_p99_ms"] = jitter["p99_ms"]
        values["timer.period_jitter_max_ms"] = jitter["max_ms"]
        values["inference.mode"] = self.runner.mode if self.runner is not None else ""
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [
            diagnostic_status(
                f"{self.get_name()}: policy", level, message, values, self.config.diagnostics.hardware_id
            )
        ]
        self._diag_pub.publish(array)
        if level != self._last_level and self._active:
            log = self.get_logger()
            (log.info if level == "OK" else log.warning)(f"status {level}: {message}")
        self._last_level = level


def _last_detail(controller: PolicyController, source: str) -> str:
    events = controller.events()
    matching = [detail for key, (_, detail) in events.items() if key.endswith(":" + source)]
    return matching[-1] if matching else "rejected"


def make_executor(threads: int, context: Any = None) -> Any:
    """Return a SingleThreadedExecutor for threads <= 1, else a MultiThreadedExecutor(threads)."""
    if threads <= 1:
        return SingleThreadedExecutor(context=context)
    return MultiThreadedExecutor(num_threads=threads, context=context)


class _StopRequest:
    """What SIGINT / SIGTERM do to `main`.

    Before the spin loop (a slow model load) a signal raises KeyboardInterrupt,
    so Ctrl-C aborts at once. While spinning it only sets a flag the loop polls
    every 0.1 s: no exception lands inside the executor or rclpy, which left
    them half-updated at shutdown. A second signal always interrupts, so a
    stuck cleanup can still be aborted.
    """

    def __init__(self):
        self.spinning = False
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.spinning and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt


def main(args: list[str] | None = None) -> None:
    """Entry point of ``vla_policy_node``."""
    # rclpy's own SIGINT handler shuts the context down while the control-timer and
    # executor threads still wait on it, which intermittently crashed rcl at Ctrl-C
    # (SIGSEGV, or errors from take_message). Here the node stops its threads and
    # destroys its entities first, while the context is still valid.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = _StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    executor = None
    try:
        node = VlaPolicyNode()
        executor = make_executor(node.get_parameter("executor_threads").value)
        executor.add_node(node)
        if node.get_parameter("auto_activate").value:
            node.autostart()
        stop.spinning = True
        while rclpy.ok() and not stop.requested:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.spinning = False  # from here on a signal interrupts the cleanup
        if node is not None:
            node.release()
            node.destroy_node()
        if executor is not None:
            executor.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
